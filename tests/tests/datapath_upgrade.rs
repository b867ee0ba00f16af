//! Upgrading pins of another eBPF object (an older install) on a real kernel: the new generation
//! is attached alongside the old one, filled, then swapped in; a denied flow stays denied and an
//! allowed one allowed before, during and after, and a crash at any step leaves a state the
//! next start continues from. Needs root and BPF; elsewhere skips (see `common::skip`).

#[allow(
    dead_code,
    reason = "the shared fixture has helpers only other test files use"
)]
#[path = "datapath/common.rs"]
mod common;
#[path = "support/meta.rs"]
mod meta;

use std::{
    fs,
    net::IpAddr,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use bulkhead_tests::{
    agent::{AgentRun, InventoryWorkload, inventory_yaml},
    bpf_query,
    workload::{ProbeResult, Proto, Server},
};
use common::*;
use enforcer::datapath::{self, DesiredMaps, Origin, pins, upgrade};
use enforcer_common::{DIR_EGRESS, HOOK_CONNECT, PROTO_TCP};
use meta::{other_object, read_meta};

/// The client may reach the server's port 80 only.
fn policy(env: &Env) -> DesiredMaps {
    let mut m = env.base(1);
    m.policy.insert(
        key(CLIENT, SERVER, DIR_EGRESS, PROTO_TCP, 80, 16),
        allow(10),
    );
    isolate(&mut m, CLIENT, DIR_EGRESS, 99);
    m
}

/// Port 80 connects and port 81 is refused, whatever generations are attached right now.
fn assert_enforced(env: &Env, when: &str) {
    let server = env.server_v4();
    assert_eq!(
        env.net.probe(&env.client, server, 80, Proto::Tcp),
        ProbeResult::Connected,
        "{when}: allowed flow"
    );
    assert_eq!(
        env.net.probe(&env.client, server, 81, Proto::Tcp),
        ProbeResult::Denied,
        "{when}: denied flow"
    );
}

/// Asserts that `expected` programs are attached to the test's cgroup, all hooks together. The
/// kernel releases an unpinned link from a deferred work item, so a count that differs is
/// queried again until a generous guard expires (a failure guard, not a timing claim).
fn assert_attached(env: &Env, expected: usize, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = bpf_query::attached_count(env.net.cgroup_parent()).expect("BPF_PROG_QUERY");
        if n == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{when}: {n} programs attached, expected {expected}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// An install older than `META`.
fn no_meta(root: &Path) {
    fs::remove_file(pins::map(root, pins::MAP_META)).expect("remove META");
}

/// Installs, applies [`policy`], then makes the pins look like another object's with `tamper`;
/// the server serves ports 80 and 81.
fn older_install(name: &str, tamper: fn(&Path)) -> (Env, Server) {
    let mut env = Env::new(name);
    let server = env.server.serve(&[80, 81], Proto::Tcp).expect("server");
    let m = policy(&env);
    env.dp().apply(&m).expect("apply");
    env.stop();
    tamper(&env.pins.0);
    (env, server)
}

fn upgrade_from(name: &str, tamper: fn(&Path)) {
    let (mut env, _server) = older_install(name, tamper);
    assert_enforced(&env, "before the upgrade");

    let root = env.pins.0.clone();
    let swap = pins::swap(&root);
    let dp = env.adopt();
    assert_eq!(dp.origin(), Origin::Upgrading);
    assert!(dp.upgrade_pending());
    assert_eq!(dp.live_root(), swap);
    assert_eq!(read_meta(&swap), datapath::object_meta());
    // Finishing with the new maps still empty would stop enforcement: refused.
    assert!(dp.finish_upgrade().is_err(), "finish before apply");
    assert_attached(&env, 12, "both generations attached");
    assert_enforced(&env, "new generation attached, empty");

    let m = policy(&env);
    env.dp().apply(&m).expect("apply to the new generation");
    assert_enforced(&env, "new generation filled, old still attached");
    assert_attached(&env, 12, "filled, old still attached");

    let batch = env
        .dp()
        .finish_upgrade()
        .expect("finish")
        .expect("an upgrade was pending");
    // The old ring's last events: the connects of the probes above, never read before.
    for port in [80, 81] {
        assert!(
            batch
                .events
                .iter()
                .any(|e| e.hook == HOOK_CONNECT && e.dst_port == port),
            "old ring drained, connect to {port}: {batch:?}"
        );
    }
    assert!(!env.dp().upgrade_pending());
    assert_eq!(env.dp().live_root(), root);
    assert!(
        env.dp().finish_upgrade().expect("finish again").is_none(),
        "nothing left to finish"
    );
    assert_attached(&env, 6, "finished");
    for attach_type in bpf_query::ALL_ATTACH_TYPES {
        let ids = bpf_query::attached_programs(env.net.cgroup_parent(), attach_type)
            .expect("BPF_PROG_QUERY");
        assert_eq!(ids.len(), 1, "attach type {attach_type}: {ids:?}");
    }
    assert!(!swap.exists(), "old pins left at {}", swap.display());
    assert_eq!(read_meta(&root), datapath::object_meta());
    assert_eq!(env.dp().current().expect("read back"), m);
    assert_enforced(&env, "after the upgrade");

    // The same binary again: a plain adopt.
    env.stop();
    let dp = env.adopt();
    assert_eq!(dp.origin(), Origin::Adopted);
    assert!(!dp.upgrade_pending());
    assert_attached(&env, 6, "adopted after the upgrade");
    assert_enforced(&env, "adopted after the upgrade");
}

#[test]
fn pins_of_another_object_are_upgraded_without_a_gap() {
    if skip() {
        return;
    }
    upgrade_from("upg-other", other_object);
}

#[test]
fn pins_older_than_meta_are_upgraded_without_a_gap() {
    if skip() {
        return;
    }
    upgrade_from("upg-nometa", no_meta);
}

#[test]
fn a_restart_at_any_step_continues_the_upgrade() {
    if skip() {
        return;
    }
    let (mut env, _server) = older_install("upg-crash", other_object);
    let root = env.pins.0.clone();
    let swap = pins::swap(&root);

    // Crash while staging: the swap directory holds part of the new generation.
    assert_eq!(env.adopt().origin(), Origin::Upgrading);
    env.stop();
    fs::remove_file(pins::link(&swap, "ingress")).expect("remove a staged link pin");
    assert_enforced(&env, "staging cut short");
    let dp = env.adopt();
    assert_eq!(dp.origin(), Origin::Upgrading);
    assert_attached(&env, 12, "staged again, the broken stage removed");

    // Crash after staging (and after applying): the staged generation is resumed, not staged
    // a second time.
    let m = policy(&env);
    env.dp().apply(&m).expect("apply");
    env.stop();
    let dp = env.adopt();
    assert_eq!(dp.origin(), Origin::Upgrading);
    assert_eq!(dp.live_root(), swap);
    assert_eq!(dp.current().expect("read back"), m, "resumed with its maps");
    assert_attached(&env, 12, "resumed");
    assert_enforced(&env, "resumed");

    // Crash right after the exchange: the root is this object's, the swap directory holds the
    // old generation, still attached.
    upgrade::exchange(&root).expect("exchange");
    env.stop();
    assert_enforced(&env, "exchanged, old not retired");
    let dp = env.adopt();
    assert_eq!(dp.origin(), Origin::Upgrading);
    assert_eq!(dp.live_root(), root);
    assert_attached(&env, 12, "exchanged, restarted");
    env.dp().apply(&m).expect("apply");
    assert!(env.dp().finish_upgrade().expect("retire").is_some());
    assert_attached(&env, 6, "retired");
    assert!(!swap.exists());
    assert_enforced(&env, "retired after a restart");
}

#[test]
fn uninstall_removes_both_generations() {
    if skip() {
        return;
    }
    let (mut env, _server) = older_install("upg-uninstall", no_meta);
    assert_eq!(env.adopt().origin(), Origin::Upgrading);
    assert_attached(&env, 12, "staged");
    env.stop();
    datapath::uninstall(&env.pins.0).expect("uninstall");
    assert_attached(&env, 0, "uninstalled");
    assert!(!env.pins.0.exists());
    assert!(!pins::swap(&env.pins.0).exists());
}

#[test]
fn only_the_swap_directory_enforcing_is_promoted() {
    if skip() {
        return;
    }
    let (mut env, _server) = older_install("upg-promote", other_object);
    let root = env.pins.0.clone();
    assert_eq!(env.adopt().origin(), Origin::Upgrading);
    let m = policy(&env);
    env.dp().apply(&m).expect("apply");
    env.stop();
    // The old generation's links disappear (an interrupted removal): only the swap directory
    // still enforces.
    for link in fs::read_dir(root.join(pins::LINKS_DIR)).expect("links") {
        fs::remove_file(link.expect("entry").path()).expect("unpin");
    }
    let dp = env.adopt();
    assert_eq!(dp.origin(), Origin::Adopted);
    assert_eq!(dp.live_root(), root);
    assert_eq!(dp.current().expect("read back"), m);
    assert!(!pins::swap(&root).exists());
    assert_eq!(read_meta(&root), datapath::object_meta());
    assert_enforced(&env, "promoted");
}

/// `b` admits TCP port 80 from `a`; `b` is therefore isolated for ingress.
const ALLOW_80: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
metadata: {name: b-ingress, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  \
ingress:\n  - from: [{podSelector: {matchLabels: {pod: a}}}]\n    \
ports: [{protocol: TCP, port: 80}]\n";

#[test]
fn the_real_agent_upgrades_an_older_install_and_logs_its_last_verdicts() {
    if skip() {
        return;
    }
    let env = Env::without_datapath("upg-agent");
    let (net, a, b) = (&env.net, &env.client, &env.server);
    let _server = b.serve(&[80, 81], Proto::Tcp).expect("server");
    let mut agent = AgentRun::new(net).expect("agent files");
    let workloads = [("a", a), ("b", b)].map(|(name, workload)| InventoryWorkload {
        namespace: "x",
        name,
        labels: if name == "a" { "{pod: a}" } else { "{pod: b}" },
        workload,
    });
    agent
        .write_inventory(&inventory_yaml(&[("x", "{}")], &workloads))
        .expect("inventory");
    agent.write_policy("policy.yaml", ALLOW_80).expect("policy");
    let probe = |port| {
        net.probe_with_timeout(
            a,
            IpAddr::V4(b.ipv4),
            port,
            Proto::Tcp,
            Duration::from_millis(300),
        )
    };
    agent.start().expect("start");
    let enforcing = agent.wait_until(Duration::from_secs(20), || {
        probe(81) == ProbeResult::Timeout
    });
    assert!(enforcing, "agent never enforced:\n{}", agent.stderr());
    let programs = bpf_query::attached_count(net.cgroup_parent()).expect("BPF_PROG_QUERY");

    // The old agent dies; its pins now look like another object's. The denial made while no
    // agent runs is only in the old generation's ring buffer.
    agent.kill();
    other_object(agent.bpffs());
    let down_at = jiff::Timestamp::now();
    assert_eq!(probe(81), ProbeResult::Timeout, "old pins keep enforcing");
    let restart_at = jiff::Timestamp::now();

    agent.start().expect("restart");
    let finished = agent.wait_until(Duration::from_secs(20), || {
        agent.stderr().contains("previous generation retired")
    });
    assert!(finished, "upgrade never finished:\n{}", agent.stderr());
    assert!(agent.stderr().contains("Upgrading"), "{}", agent.stderr());
    assert_eq!(
        bpf_query::attached_count(net.cgroup_parent()).expect("BPF_PROG_QUERY"),
        programs,
        "one generation attached after the upgrade"
    );
    assert!(!pins::swap(agent.bpffs()).exists());
    assert_eq!(read_meta(agent.bpffs()), datapath::object_meta());
    assert_eq!(probe(80), ProbeResult::Connected);
    assert_eq!(probe(81), ProbeResult::Timeout);

    // The old ring was drained into the log: the denial made while the agent was down.
    let logged = agent.wait_until(Duration::from_secs(5), || {
        agent.log_records().iter().any(|r| {
            r["direction"] == "ingress"
                && r["protocol"] == "TCP"
                && r["dst"]["port"] == 81
                && r["verdict"] == "deny"
                && r["time"]
                    .as_str()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .is_some_and(|t| t > down_at && t < restart_at)
        })
    });
    assert!(logged, "the old generation's last verdict is in the log");
}
