//! Install, restart (adopt from pins without a second attach), uninstall, and program stats.

use std::{
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use bulkhead_tests::{
    bpf_query,
    signals::SignalStorm,
    workload::{ProbeResult, Proto},
};
use enforcer::datapath::{self, Datapath, DesiredMaps, Origin};
use enforcer_common::{DIR_EGRESS, HOOK_CONNECT, PROTO_TCP, WorkloadValue};

use super::common::*;

#[test]
fn install_attaches_every_program_and_uninstall_detaches() {
    if skip() {
        return;
    }
    let mut env = Env::new("install");
    assert_eq!(env.dp().origin(), Origin::Installed);
    assert_eq!(
        bpf_query::attached_count(env.net.cgroup_parent()).expect("query"),
        6
    );
    for attach_type in bpf_query::ALL_ATTACH_TYPES {
        let ids =
            bpf_query::attached_programs(env.net.cgroup_parent(), attach_type).expect("query");
        assert_eq!(ids.len(), 1, "attach type {attach_type}: {ids:?}");
    }
    // Workloads are children of the attach point: they inherit the programs, not own them.
    assert_eq!(
        bpf_query::attached_count(&env.client.cgroup_path).expect("query"),
        0
    );
    let _server = env.server.serve(&[80], Proto::Tcp).expect("server");
    assert_eq!(
        env.net.probe(&env.client, env.server_v4(), 80, Proto::Tcp),
        ProbeResult::Connected
    );
    env.stop();
    datapath::uninstall(&env.pins.0).expect("uninstall");
    assert_eq!(
        bpf_query::attached_count(env.net.cgroup_parent()).expect("query"),
        0
    );
    assert!(
        !env.pins.0.exists(),
        "pins left behind at {}",
        env.pins.0.display()
    );
}

#[test]
fn restart_adopts_the_pins_without_attaching_twice() {
    if skip() {
        return;
    }
    let mut env = Env::new("restart");
    let _server = env.server.serve(&[80, 81, 82], Proto::Tcp).expect("server");
    let mut m = env.base(5);
    m.policy.insert(
        key(CLIENT, SERVER, DIR_EGRESS, PROTO_TCP, 80, 16),
        allow(10),
    );
    isolate(&mut m, CLIENT, DIR_EGRESS, 99);
    env.dp().apply(&m).expect("apply");

    // No process holds anything now: enforcement and event capture go on from the pins.
    env.stop();
    let target = env.server_v4();
    assert_eq!(
        env.net.probe(&env.client, target, 80, Proto::Tcp),
        ProbeResult::Connected
    );
    assert_eq!(
        env.net.probe(&env.client, target, 81, Proto::Tcp),
        ProbeResult::Denied
    );

    let dp = env.adopt();
    assert_eq!(dp.origin(), Origin::Adopted);
    assert_eq!(
        dp.current().expect("read back"),
        m,
        "adopted maps keep their content"
    );
    assert_eq!(
        bpf_query::attached_count(env.net.cgroup_parent()).expect("query"),
        6
    );
    // A second concurrent handle adopts too.
    let second = Datapath::install_or_adopt(&env.pins.0, env.net.cgroup_parent()).expect("adopt");
    assert_eq!(second.origin(), Origin::Adopted);
    drop(second);
    assert_eq!(
        bpf_query::attached_count(env.net.cgroup_parent()).expect("query"),
        6
    );

    // Events written while no process ran are still in the pinned ring buffer.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _entered = rt.enter();
    let mut reader = env.dp().event_reader().expect("reader");
    let batch = reader.try_next_batch().expect("read");
    let ports: Vec<u16> = batch
        .events
        .iter()
        .filter(|e| e.hook == HOOK_CONNECT)
        .map(|e| e.dst_port)
        .collect();
    assert_eq!(ports, [80, 81], "{batch:#?}");

    // The adopted handle reconciles by diff from the kernel's content.
    let mut next = m.clone();
    next.revision = 6;
    next.policy.insert(
        key(CLIENT, SERVER, DIR_EGRESS, PROTO_TCP, 81, 16),
        allow(11),
    );
    let stats = env.dp().apply(&next).expect("apply");
    assert_eq!(
        (
            stats.previous_revision,
            stats.policy.upserted,
            stats.policy.unchanged
        ),
        (5, 1, 1)
    );
    assert_eq!(
        env.net.probe(&env.client, target, 81, Proto::Tcp),
        ProbeResult::Connected
    );

    // Uninstall: nothing attached, nothing pinned, no enforcement.
    env.stop();
    datapath::uninstall(&env.pins.0).expect("uninstall");
    assert_eq!(
        bpf_query::attached_count(env.net.cgroup_parent()).expect("query"),
        0
    );
    assert!(!env.pins.0.exists());
    assert_eq!(
        env.net.probe(&env.client, target, 82, Proto::Tcp),
        ProbeResult::Connected
    );
}

#[test]
fn partial_installation_is_replaced() {
    if skip() {
        return;
    }
    let mut env = Env::new("partial");
    env.stop();
    std::fs::remove_file(datapath::pins::link(&env.pins.0, "ingress"))
        .expect("remove one link pin");
    let dp = env.adopt();
    assert_eq!(dp.origin(), Origin::Installed);
    assert_eq!(
        bpf_query::attached_count(env.net.cgroup_parent()).expect("query"),
        6
    );
}

/// A signal for the thread in `BPF_PROG_LOAD` makes the verifier give up with EAGAIN (one failed
/// an install in CI). The install keeps its signals blocked while the verifier runs, so a storm
/// of them aimed at the installing thread changes nothing.
#[test]
fn signals_to_the_installing_thread_do_not_interrupt_the_verifier() {
    if skip() {
        return;
    }
    let mut env = Env::without_datapath("signals");
    let storm = SignalStorm::at_this_thread(Duration::from_micros(200)).expect("signal storm");
    let started = Instant::now();
    let origin = env.adopt().origin();
    let elapsed = started.elapsed();
    let report = storm.stop().expect("signal storm");
    eprintln!("install took {elapsed:?} under {report:?}");
    assert_eq!(origin, Origin::Installed);
    // The storm covered the install: signals were sent all along, and those that arrived
    // between loads (signals unblocked) were handled.
    assert!(report.sent >= 20, "{report:?} in {elapsed:?}");
    assert!(report.handled >= 1, "{report:?}");
    assert_eq!(
        bpf_query::attached_count(env.net.cgroup_parent()).expect("query"),
        6
    );
    let _server = env.server.serve(&[80], Proto::Tcp).expect("server");
    assert_eq!(
        env.net.probe(&env.client, env.server_v4(), 80, Proto::Tcp),
        ProbeResult::Connected
    );
}

#[test]
fn program_stats_count_runs() {
    if skip() {
        return;
    }
    let mut env = Env::new("stats");
    let _server = env.server.serve(&[80], Proto::Tcp).expect("server");
    let m = env.base(1);
    env.dp().apply(&m).expect("apply");
    let _stats_on = datapath::enable_program_stats().expect("BPF_ENABLE_STATS");
    assert_eq!(
        env.net.probe_with_timeout(
            &env.client,
            env.server_v4(),
            80,
            Proto::Tcp,
            Duration::from_secs(1)
        ),
        ProbeResult::Connected
    );
    let stats = env.dp().program_stats().expect("stats");
    assert_eq!(stats.len(), 6);
    for name in ["connect4", "egress", "ingress"] {
        let s = stats.iter().find(|s| s.name == name).expect("program");
        assert!(s.run_count > 0, "{name} never ran: {s:?}");
        assert!(s.run_time_ns > 0, "{name} has no run time: {s:?}");
    }
}

const CHILD_ROOT: &str = "BULKHEAD_TEST_CHILD_ROOT";
const CHILD_CGROUP: &str = "BULKHEAD_TEST_CHILD_CGROUP";
const CHILD_CLIENT_ID: &str = "BULKHEAD_TEST_CHILD_CLIENT_ID";
const CHILD_REVISION: u64 = 9;

/// The maps the child installs: the client is isolated for egress except to port 80.
fn child_maps(client_cgroup_id: u64, server: Ipv4Addr) -> DesiredMaps {
    let mut m = DesiredMaps {
        revision: CHILD_REVISION,
        ..DesiredMaps::default()
    };
    m.workloads.insert(
        client_cgroup_id,
        WorkloadValue {
            identity: CLIENT,
            flags: 0,
        },
    );
    m.addresses
        .insert((server.to_ipv6_mapped().octets(), 128), SERVER);
    m.policy.insert(
        key(CLIENT, SERVER, DIR_EGRESS, PROTO_TCP, 80, 16),
        allow(10),
    );
    isolate(&mut m, CLIENT, DIR_EGRESS, 99);
    m
}

/// Not a test of its own: the process that `killed_agent_leaves_enforcement_running` starts
/// and kills. Without its environment variables it does nothing.
#[test]
#[ignore = "child process of killed_agent_leaves_enforcement_running"]
fn child_installs_then_waits_to_be_killed() {
    let (Some(root), Some(cgroup), Some(client)) = (
        std::env::var_os(CHILD_ROOT),
        std::env::var_os(CHILD_CGROUP),
        std::env::var(CHILD_CLIENT_ID).ok(),
    ) else {
        return;
    };
    let client: u64 = client.parse().expect("client cgroup id");
    let mut dp =
        Datapath::install_or_adopt(&PathBuf::from(root), &PathBuf::from(cgroup)).expect("install");
    dp.apply(&child_maps(client, Ipv4Addr::new(10, 200, 0, 2)))
        .expect("apply");
    println!("\nready");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[test]
fn killed_agent_leaves_enforcement_running() {
    if skip() {
        return;
    }
    let mut env = Env::without_datapath("sigkill");
    let _server = env.server.serve(&[80, 81], Proto::Tcp).expect("server");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "lifecycle::child_installs_then_waits_to_be_killed",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ROOT, &env.pins.0)
        .env(CHILD_CGROUP, env.net.cgroup_parent())
        .env(CHILD_CLIENT_ID, env.client.cgroup_id.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("child");
    let stdout = child.stdout.take().expect("stdout");
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.trim() == "ready");
    assert!(ready, "the child never got ready");
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");

    let target = env.server_v4();
    assert_eq!(
        env.net.probe(&env.client, target, 80, Proto::Tcp),
        ProbeResult::Connected
    );
    assert_eq!(
        env.net.probe(&env.client, target, 81, Proto::Tcp),
        ProbeResult::Denied
    );
    assert_eq!(
        bpf_query::attached_count(env.net.cgroup_parent()).expect("query"),
        6
    );
    let dp = env.adopt();
    assert_eq!(dp.origin(), Origin::Adopted);
    assert_eq!(
        dp.current().expect("read back"),
        child_maps(env.client.cgroup_id, env.server.ipv4)
    );
    assert_eq!(
        bpf_query::attached_count(env.net.cgroup_parent()).expect("query"),
        6
    );
}
