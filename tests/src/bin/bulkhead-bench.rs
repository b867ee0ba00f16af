//! `cargo xtask bench`: the policy compiler on a synthetic 10,000-workload cluster and the kernel
//! datapath on veth between workload namespaces, reported as Markdown tables (for the README)
//! and a one-line JSON summary on stdout; progress goes to stderr. See `bulkhead_tests::bench`.
//!
//! Usage: `bulkhead-bench [compile|datapath]` (default: both). The datapath part needs root and
//! BPF. The binary also runs itself as the client and server inside the workloads
//! (`bulkhead-bench worker ...`, see `bench::worker`).

use std::{process::ExitCode, time::Instant};

use anyhow::{Result, bail};
use bulkhead_tests::{
    bench::{
        alloc::CountingAlloc,
        compile, datapath,
        report::{self, Machine},
        worker,
    },
    netns::kernel_tests_possible,
};

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(worker::WORKER_ARG) {
        return match worker::main(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bulkhead-bench worker {args:?}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulkhead-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let (with_compile, with_datapath) = match args {
        [] => (true, true),
        [part] if part == "compile" => (true, false),
        [part] if part == "datapath" => (false, true),
        _ => bail!("usage: bulkhead-bench [compile|datapath]"),
    };
    if with_datapath && let Err(why) = kernel_tests_possible() {
        bail!("the datapath benchmark needs root and BPF: {why}");
    }
    let started = Instant::now();
    let mut progress = |step: &str| eprintln!("[{:6.1} s] {step}", started.elapsed().as_secs_f64());
    let mut machine = Machine::now();
    let compile = with_compile
        .then(|| compile::run(&mut progress))
        .transpose()?;
    let datapath = with_datapath
        .then(|| datapath::run(&mut progress))
        .transpose()?;
    machine.finish();
    print!(
        "{}",
        report::markdown(
            &machine,
            compile.as_ref(),
            datapath.as_ref(),
            started.elapsed()
        )
    );
    println!(
        "{}",
        report::json(&machine, compile.as_ref(), datapath.as_ref())
    );
    Ok(())
}
