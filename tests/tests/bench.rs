//! The benchmark binary is not run by CI (it takes minutes and its numbers need a quiet
//! machine), but its machinery must keep working: `bulkhead-bench profile` builds the same lanes
//! as `bulkhead-bench datapath` (baseline, hook floor, datapath), checks which programs each has
//! on its path, drives real connections, reads and checks every verdict event and reads the
//! programs' statistics. One short run of it here fails when any of that breaks.

use std::process::Command;

#[test]
fn profile_runs_every_lane_and_reads_every_verdict_event() {
    if bulkhead_tests::netns::skip_kernel_tests("benchmark profile") {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead-bench"))
        .args(["profile", "baseline,floor,small", "0"])
        .output()
        .expect("running bulkhead-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bulkhead-bench profile failed:\n{stderr}"
    );
    let summary = |label: &str| {
        stderr
            .lines()
            .find(|l| l.contains(&format!("profile: {label}: 1 runs, median")))
            .unwrap_or_else(|| panic!("no summary for {label} in\n{stderr}"))
            .to_owned()
    };
    assert!(summary("no programs (baseline)").contains("(1.000)"));
    // One run of 2,000 connections after a warm-up of 300, plus the statistics pass: two
    // verdict events (connect, SYN) per connection, none lost.
    assert!(
        summary("pass-only programs (hook floor)").ends_with(", 0 verdict events, 0 lost"),
        "{stderr}"
    );
    assert!(
        summary("enforcer, ~10 entries").ends_with(", 8600 verdict events, 0 lost"),
        "{stderr}"
    );
    assert!(
        stderr.contains("enforcer, ~10 entries: per connection (stats pass): connect4"),
        "{stderr}"
    );
}
