//! `cargo xtask`: set-up, build, demo, test and bench for Bulkhead.
//!
//! Every command installs what it needs (nightly `rust-src`, `bpf-linker`, `cargo-fuzz`) when it
//! is missing, so that the README's two commands work on a fresh machine.

mod setup;

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Bulkhead's build, demo, test and bench tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces the eBPF build needs (idempotent).
    Setup,
    /// Build the enforcer (with its embedded eBPF object) in release mode.
    Build,
    /// Run the demo: workloads in network namespaces, a policy enforced in the kernel, verdicts.
    Demo,
    /// Every check: fmt, clippy -D warnings, unit, kernel, conformance and a bounded fuzz run.
    Test {
        /// Seconds for each fuzz target (0 skips fuzzing).
        #[arg(long, default_value_t = 20)]
        fuzz_seconds: u64,
    },
    /// Benchmarks: policy compiler and datapath (ratios to a baseline of the same run), then the
    /// controller at the scale of 5,000 nodes.
    Bench,
    /// Write the CRD manifests generated from the policy types to charts/bulkhead/crds/.
    Crds,
    /// Regenerate the policy sync API code (`proto/src/gen/`) from `proto/bulkhead/**.proto`.
    Proto,
    /// Run a fuzz target for a while (`cargo xtask fuzz policy_parse_compile --seconds 600`).
    Fuzz {
        #[arg(default_value = "policy_parse_compile")]
        target: String,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Task::Setup => setup::all(),
        Task::Build => {
            setup::ebpf_toolchain()?;
            cargo(&["build", "--release", "-p", "enforcer"])
        }
        Task::Demo => {
            setup::all()?;
            build_release_bins()?;
            run_built("bulkhead-demo")
        }
        Task::Test { fuzz_seconds } => test(fuzz_seconds),
        Task::Bench => {
            setup::all()?;
            build_release_bins()?;
            run_built("bulkhead-bench")?;
            // The controller at cluster scale (issue 4): 5,000 nodes, 50,000 pods, 2,000
            // policies; initial compile and publication, snapshot sizes, change -> deltas.
            cargo(&[
                "test",
                "--release",
                "-p",
                "bulkhead-controller",
                "--lib",
                "--",
                "--ignored",
                "--nocapture",
                "scale",
            ])
        }
        Task::Crds => crds(),
        Task::Proto => proto(),
        Task::Fuzz { target, seconds } => {
            setup::fuzz_toolchain()?;
            fuzz(&target, seconds)
        }
    }
}

fn test(fuzz_seconds: u64) -> Result<()> {
    setup::all()?;
    step("fmt", || cargo(&["fmt", "--all", "--", "--check"]))?;
    step("clippy", || {
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
    })?;
    // Unit, kernel (real programs on this kernel, in test namespaces and cgroups) and
    // conformance tests. Kernel tests need root; CI runs as root.
    // The agent and demo tests run the real binaries: build them first (`cargo test` alone
    // does not build another package's binaries).
    step("build binaries", || {
        cargo(&["build", "-p", "enforcer", "-p", "bulkhead-tests", "--bins"])
    })?;
    let totals = step("tests", || {
        cargo_test(&["test", "--workspace", "--no-fail-fast"])
    })?;
    if fuzz_seconds > 0 {
        setup::fuzz_toolchain()?;
        step("fuzz", || fuzz("policy_parse_compile", fuzz_seconds))?;
    }
    println!("xtask test: every step passed");
    // The closing line a CI reader looks for: the totals of every test binary.
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    Ok(())
}

/// Writes `charts/bulkhead/crds/*.yaml` (tests/tests/chart.rs fails when they are stale).
fn crds() -> Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/bulkhead/crds");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, yaml) in bulkhead_policy::model::crd_yaml().context("generating the CRDs")? {
        let path = dir.join(name);
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        println!("xtask crds: wrote {}", path.display());
    }
    Ok(())
}

fn fuzz(target: &str, seconds: u64) -> Result<()> {
    // New inputs go to fuzz/corpus/<target> (not committed); fuzz/seeds holds committed seeds.
    let corpus = format!("fuzz/corpus/{target}");
    std::fs::create_dir_all(&corpus).context("creating the fuzz corpus directory")?;
    let status = Command::new("cargo")
        .args(["+nightly", "fuzz", "run", "--fuzz-dir", "fuzz", target])
        .args([corpus.as_str(), "fuzz/seeds", "--"])
        .arg(format!("-max_total_time={seconds}"))
        .arg("-rss_limit_mb=4096")
        .status()
        .context("running cargo fuzz")?;
    if !status.success() {
        bail!("fuzz target {target} failed (a crash or panic was found: see fuzz/artifacts/)");
    }
    Ok(())
}

/// The proto crate's freshness test (protox + tonic-prost-build, no protoc) rewrites the
/// committed code when `BULKHEAD_PROTO_UPDATE` is set.
fn proto() -> Result<()> {
    let status = Command::new("cargo")
        .args(["test", "-p", "bulkhead-proto", "--test", "bootstrap"])
        .env("BULKHEAD_PROTO_UPDATE", "1")
        .status()
        .context("running cargo test -p bulkhead-proto")?;
    if !status.success() {
        bail!("regenerating proto/src/gen failed ({status})");
    }
    Ok(())
}

fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    println!("\n==> xtask test: {name}");
    f().with_context(|| format!("step `{name}` failed"))
}

/// The enforcer and the test harness binaries (demo, bench, netns helper), release mode.
fn build_release_bins() -> Result<()> {
    cargo(&[
        "build",
        "--release",
        "-p",
        "enforcer",
        "-p",
        "bulkhead-tests",
        "--bins",
    ])
}

/// Runs a binary of this workspace built in release mode.
fn run_built(name: &str) -> Result<()> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::PathBuf::from("target"),
        std::path::PathBuf::from,
    );
    let path = target.join("release").join(name);
    let status = Command::new(&path)
        .status()
        .with_context(|| format!("running {}", path.display()))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

/// Totals over every `test result:` line of a `cargo test` run.
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// Adds one `test result: ok. 13 passed; 0 failed; 1 ignored; ...` line.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

/// Runs `cargo test`, echoing its output, and sums its results.
fn cargo_test(args: &[&str]) -> Result<Totals> {
    use std::io::{BufRead as _, BufReader};
    let mut child = Command::new("cargo")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    let mut totals = Totals::default();
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        totals.add_line(&line);
    }
    let status = child.wait()?;
    if !status.success() {
        println!(
            "tests: {} passed, {} failed, {} skipped",
            totals.passed, totals.failed, totals.ignored
        );
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    if totals.passed == 0 {
        bail!("cargo test ran no test");
    }
    Ok(totals)
}

/// Runs cargo with the given arguments in the workspace root.
pub(crate) fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new("cargo")
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Totals;

    #[test]
    fn sums_cargo_test_result_lines() {
        let mut totals = Totals::default();
        totals.add_line("test result: ok. 13 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.13s");
        totals.add_line(
            "test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        totals.add_line("running 5 tests");
        assert_eq!(
            totals,
            Totals {
                passed: 15,
                failed: 3,
                ignored: 1
            }
        );
    }
}
