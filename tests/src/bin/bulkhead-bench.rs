//! `cargo xtask bench`: the policy compiler on a synthetic 10,000-workload cluster and the kernel
//! datapath on veth between workload namespaces, reported as Markdown tables (for the README)
//! and a one-line JSON summary on stdout; progress goes to stderr. See `bulkhead_tests::bench`.
//!
//! Usage: `bulkhead-bench [compile|datapath]` (default: both), or `bulkhead-bench profile
//! <baseline|floor|small|large>[,...] <seconds>`: connection-rate runs of those datapath lanes,
//! interleaved, as ratios to the first (a quick A/B measurement and a load for a profiler). The datapath part needs root and
//! BPF. The binary also runs itself as the client and server inside the workloads
//! (`bulkhead-bench worker ...`, see `bench::worker`).

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

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

/// `profile <config>[,<config>...] <seconds>`: connection-rate load on those lanes,
/// interleaved, with their medians as ratios to the first one's.
fn profile(configs: &str, seconds: &str) -> Result<()> {
    let configs = configs
        .split(',')
        .map(|c| match c {
            "baseline" => Ok(datapath::Config::Baseline),
            "floor" => Ok(datapath::Config::Floor),
            "small" => Ok(datapath::Config::Small),
            "large" => Ok(datapath::Config::Large),
            other => {
                bail!("profile: unknown configuration {other:?} (baseline, floor, small, large)")
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let seconds: u64 = seconds
        .parse()
        .map_err(|e| anyhow::anyhow!("profile: seconds {seconds:?}: {e}"))?;
    if let Err(why) = kernel_tests_possible() {
        bail!("profiling the datapath needs root and BPF: {why}");
    }
    let started = Instant::now();
    let mut progress = |step: &str| eprintln!("[{:6.1} s] {step}", started.elapsed().as_secs_f64());
    datapath::profile(&configs, Duration::from_secs(seconds), &mut progress)
}

fn run(args: &[String]) -> Result<()> {
    let (with_compile, with_datapath) = match args {
        [] => (true, true),
        [part] if part == "compile" => (true, false),
        [part] if part == "datapath" => (false, true),
        [part, configs, seconds] if part == "profile" => return profile(configs, seconds),
        _ => bail!(
            "usage: bulkhead-bench [compile|datapath] | profile <baseline|floor|small|large>[,...] \
             <seconds>"
        ),
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
