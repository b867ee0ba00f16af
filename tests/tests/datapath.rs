//! Kernel datapath tests: real programs on a per-test cgroup, real traffic between network
//! namespaces, map contents written directly through `DesiredMaps` (no policy compiler).
//! They need root and BPF; elsewhere they skip with a message (or fail when
//! `BULKHEAD_REQUIRE_KERNEL_TESTS=1`).

#[path = "datapath/common.rs"]
mod common;
#[path = "datapath/events.rs"]
mod events;
#[path = "datapath/lifecycle.rs"]
mod lifecycle;

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use bulkhead_tests::{
    bpf_query::{ALL_ATTACH_TYPES, attached_count, attached_programs},
    cgroup::CgroupDir,
    pass_programs::PassPrograms,
    workload::{ProbeResult, Proto, Workload},
};
use common::*;
use enforcer::datapath::{BootClock, DesiredMaps, find_cgroup2_mount};
use enforcer_common::{
    DIR_EGRESS, DIR_INGRESS, HOOK_SKB_EGRESS, MAX_ANCESTOR_LEVELS, PROTO_OTHER, PROTO_TCP,
    PROTO_UDP, WorkloadValue, identity,
};

const ALL_PROTOS: [Proto; 3] = [Proto::Tcp, Proto::Udp, Proto::UdpConnected];

#[test]
fn egress_deny_fails_connect_with_eperm() {
    if skip() {
        return;
    }
    let mut env = Env::new("egress-deny");
    let _tcp = env.server.serve(&[80, 81], Proto::Tcp).expect("server");
    let _udp = env.server.serve(&[80, 81], Proto::Udp).expect("server");
    let mut m = env.base(1);
    for proto in [PROTO_TCP, PROTO_UDP] {
        m.policy
            .insert(key(CLIENT, SERVER, DIR_EGRESS, proto, 80, 16), allow(10));
    }
    isolate(&mut m, CLIENT, DIR_EGRESS, 99);
    env.dp().apply(&m).expect("apply");
    for ip in [env.server_v4(), env.server_v6()] {
        for proto in ALL_PROTOS {
            assert_eq!(
                env.net.probe(&env.client, ip, 80, proto),
                ProbeResult::Connected,
                "{ip} {proto:?} :80"
            );
            // With a 5 s probe timeout, only an immediate EPERM returns well before it.
            let started = Instant::now();
            assert_eq!(
                env.net
                    .probe_with_timeout(&env.client, ip, 81, proto, Duration::from_secs(5)),
                ProbeResult::Denied,
                "{ip} {proto:?} :81"
            );
            assert!(
                started.elapsed() < Duration::from_millis(2500),
                "EPERM must be immediate"
            );
        }
    }
}

#[test]
fn ingress_deny_drops_the_first_packet() {
    if skip() {
        return;
    }
    let mut env = Env::new("ingress-deny");
    let _tcp = env.server.serve(&[80, 81], Proto::Tcp).expect("server");
    let _udp = env.server.serve(&[80, 81], Proto::Udp).expect("server");
    let mut m = env.base(1);
    for proto in [PROTO_TCP, PROTO_UDP] {
        m.policy
            .insert(key(SERVER, CLIENT, DIR_INGRESS, proto, 80, 16), allow(20));
    }
    isolate(&mut m, SERVER, DIR_INGRESS, 98);
    env.dp().apply(&m).expect("apply");
    for ip in [env.server_v4(), env.server_v6()] {
        for proto in ALL_PROTOS {
            assert_eq!(
                env.net.probe(&env.client, ip, 80, proto),
                ProbeResult::Connected,
                "{ip} {proto:?} :80"
            );
            assert_eq!(
                env.net.probe(&env.client, ip, 81, proto),
                ProbeResult::Timeout,
                "{ip} {proto:?} :81"
            );
        }
    }
}

#[test]
fn port_blocks_match_by_prefix() {
    if skip() {
        return;
    }
    let mut env = Env::new("port-blocks");
    let ports = [8000, 8001, 8003, 8004, 7999];
    let _tcp = env.server.serve(&ports, Proto::Tcp).expect("server");
    let mut m = env.base(1);
    // 8000..=8003 is one block: 8000 with the top 14 of 16 port bits.
    m.policy.insert(
        key(CLIENT, SERVER, DIR_EGRESS, PROTO_TCP, 8000, 14),
        allow(11),
    );
    isolate(&mut m, CLIENT, DIR_EGRESS, 99);
    env.dp().apply(&m).expect("apply");
    for (port, want) in [
        (8000, ProbeResult::Connected),
        (8001, ProbeResult::Connected),
        (8003, ProbeResult::Connected),
        (8004, ProbeResult::Denied),
        (7999, ProbeResult::Denied),
    ] {
        assert_eq!(
            env.net
                .probe(&env.client, env.server_v4(), port, Proto::Tcp),
            want,
            "port {port}"
        );
    }
}

#[test]
fn specific_peer_entry_beats_any_entry() {
    if skip() {
        return;
    }
    let mut env = Env::new("peer-over-any");
    let _tcp = env.server.serve(&[80, 81], Proto::Tcp).expect("server");
    let mut m = env.base(1);
    m.policy.insert(
        key(SERVER, CLIENT, DIR_INGRESS, PROTO_TCP, 80, 16),
        allow(21),
    );
    m.policy.insert(
        key(SERVER, identity::ANY, DIR_INGRESS, PROTO_TCP, 80, 16),
        deny(22),
    );
    m.policy.insert(
        key(SERVER, CLIENT, DIR_INGRESS, PROTO_TCP, 81, 16),
        deny(23),
    );
    m.policy.insert(
        key(SERVER, identity::ANY, DIR_INGRESS, PROTO_TCP, 81, 16),
        allow(24),
    );
    env.dp().apply(&m).expect("apply");
    assert_eq!(
        env.net.probe(&env.client, env.server_v4(), 80, Proto::Tcp),
        ProbeResult::Connected
    );
    assert_eq!(
        env.net.probe(&env.client, env.server_v4(), 81, Proto::Tcp),
        ProbeResult::Timeout
    );
    // An address outside ADDRESSES is WORLD: only the ANY entries apply to it.
    let mut world = env.base(2);
    world.addresses.retain(|_, id| *id != CLIENT);
    world.policy = m.policy.clone();
    env.dp().apply(&world).expect("apply");
    assert_eq!(
        env.net.probe(&env.client, env.server_v4(), 80, Proto::Tcp),
        ProbeResult::Timeout
    );
    assert_eq!(
        env.net.probe(&env.client, env.server_v4(), 81, Proto::Tcp),
        ProbeResult::Connected
    );
}

#[test]
fn defaults_isolate_and_absence_allows() {
    if skip() {
        return;
    }
    let mut env = Env::new("defaults");
    let _tcp = env.server.serve(&[80], Proto::Tcp).expect("server");
    let _udp = env.server.serve(&[80], Proto::Udp).expect("server");
    let mut m = env.base(1);
    isolate(&mut m, SERVER, DIR_INGRESS, 97);
    env.dp().apply(&m).expect("apply");
    for proto in ALL_PROTOS {
        assert_eq!(
            env.net.probe(&env.client, env.server_v6(), 80, proto),
            ProbeResult::Timeout,
            "{proto:?}"
        );
    }
    let m = env.base(2);
    env.dp().apply(&m).expect("apply");
    for proto in ALL_PROTOS {
        assert_eq!(
            env.net.probe(&env.client, env.server_v6(), 80, proto),
            ProbeResult::Connected,
            "{proto:?}"
        );
    }
}

#[test]
fn revision_change_re_decides_an_established_connection() {
    if skip() {
        return;
    }
    let mut env = Env::new("revision");
    let _tcp = env.server.serve(&[80], Proto::Tcp).expect("server");
    let mut m = env.base(1);
    m.policy.insert(
        key(CLIENT, SERVER, DIR_EGRESS, PROTO_TCP, 80, 16),
        allow(10),
    );
    isolate(&mut m, CLIENT, DIR_EGRESS, 99);
    env.dp().apply(&m).expect("apply");
    let (mut session, first) = env
        .client
        .open_session(env.server_v4(), 80, Duration::from_secs(1))
        .expect("session");
    assert_eq!(first, ProbeResult::Connected);
    assert_eq!(
        session.exchange().expect("exchange"),
        ProbeResult::Connected
    );
    // Same content, new revision: the cached decision is made again and still allows.
    m.revision = 2;
    env.dp().apply(&m).expect("apply");
    assert_eq!(
        session.exchange().expect("exchange"),
        ProbeResult::Connected
    );
    // The grant goes away: the established flow stops at the next packet.
    m.revision = 3;
    m.policy.clear();
    env.dp().apply(&m).expect("apply");
    assert_eq!(session.exchange().expect("exchange"), ProbeResult::Timeout);
}

#[test]
fn revision_change_re_decides_accepted_connections_in_ingress_orientation() {
    if skip() {
        return;
    }
    let mut env = Env::new("revision-passive");
    let _tcp = env.server.serve(&[80], Proto::Tcp).expect("server");
    let mut m = env.base(1);
    m.policy.insert(
        key(SERVER, CLIENT, DIR_INGRESS, PROTO_TCP, 80, 16),
        allow(20),
    );
    isolate(&mut m, SERVER, DIR_INGRESS, 98);
    // The server may also open connections to the client on any port: the egress orientation
    // would allow the accepted socket too, so only the passive mark (cloned from the listener)
    // makes the ingress orientation the one that counts.
    m.policy
        .insert(key(SERVER, CLIENT, DIR_EGRESS, PROTO_TCP, 0, 0), allow(25));
    isolate(&mut m, SERVER, DIR_EGRESS, 97);
    env.dp().apply(&m).expect("apply");
    let (mut session, first) = env
        .client
        .open_session(env.server_v4(), 80, Duration::from_secs(1))
        .expect("session");
    assert_eq!(first, ProbeResult::Connected);
    // Same content, new revision: the accepted socket is decided again as ingress to local
    // port 80 (the server port, not the client's ephemeral one), so it still passes.
    m.revision = 2;
    env.dp().apply(&m).expect("apply");
    assert_eq!(
        session.exchange().expect("exchange"),
        ProbeResult::Connected
    );
    // The ingress grant goes, the egress grant stays: the accepted socket is ingress-oriented,
    // so the flow stops.
    m.revision = 3;
    m.policy.retain(|(k, _), _| k.direction != DIR_INGRESS);
    env.dp().apply(&m).expect("apply");
    assert_eq!(session.exchange().expect("exchange"), ProbeResult::Timeout);
}

#[test]
fn time_windows_are_enforced_by_the_kernel_clock() {
    if skip() {
        return;
    }
    let mut env = Env::new("time-window");
    let _tcp = env.server.serve(&[80, 81], Proto::Tcp).expect("server");
    let now = BootClock::now_boot_ns();
    let mut m = env.base(1);
    let mut expiring = allow(30);
    expiring.expires_at = now + 1_500_000_000;
    m.policy.insert(
        key(SERVER, CLIENT, DIR_INGRESS, PROTO_TCP, 80, 16),
        expiring,
    );
    let mut future = allow(31);
    future.not_before = now + 3_600_000_000_000;
    m.policy
        .insert(key(SERVER, CLIENT, DIR_INGRESS, PROTO_TCP, 81, 16), future);
    isolate(&mut m, SERVER, DIR_INGRESS, 97);
    env.dp().apply(&m).expect("apply");
    assert_eq!(
        env.net.probe(&env.client, env.server_v4(), 80, Proto::Tcp),
        ProbeResult::Connected
    );
    assert_eq!(
        env.net.probe(&env.client, env.server_v4(), 81, Proto::Tcp),
        ProbeResult::Timeout
    );
    let expires =
        Duration::from_nanos(expiring.expires_at.saturating_sub(BootClock::now_boot_ns()));
    thread::sleep(expires + Duration::from_millis(100));
    // Nothing was written since: the kernel alone stopped honouring the entry.
    assert_eq!(
        env.net.probe(&env.client, env.server_v4(), 80, Proto::Tcp),
        ProbeResult::Timeout
    );
}

/// At a window boundary (`CONFIG.valid_until`, the entries' next window edge) the kernel makes every cached
/// decision again, with nothing written: a grant that expires stops established connections, and
/// a deny that starts stops them too.
#[test]
fn a_window_boundary_re_decides_established_connections_without_an_apply() {
    if skip() {
        return;
    }
    let mut env = Env::new("window-established");
    let _tcp = env.server.serve(&[80, 81], Proto::Tcp).expect("server");
    // Long enough for the set-up below on a loaded machine (checked before the boundary).
    let boundary = BootClock::now_boot_ns() + 4_000_000_000;
    let mut m = env.base(1);
    let mut expiring = allow(40);
    expiring.expires_at = boundary;
    m.policy.insert(
        key(SERVER, CLIENT, DIR_INGRESS, PROTO_TCP, 80, 16),
        expiring,
    );
    // Port 81: allowed from anyone, and a deny of the client that starts at the boundary.
    m.policy.insert(
        key(SERVER, identity::ANY, DIR_INGRESS, PROTO_TCP, 81, 16),
        allow(41),
    );
    let mut starting = deny(42);
    starting.not_before = boundary;
    m.policy.insert(
        key(SERVER, CLIENT, DIR_INGRESS, PROTO_TCP, 81, 16),
        starting,
    );
    isolate(&mut m, SERVER, DIR_INGRESS, 96);
    env.dp().apply(&m).expect("apply");
    let mut sessions = [80, 81].map(|port| {
        let (session, first) = env
            .client
            .open_session(env.server_v4(), port, Duration::from_secs(1))
            .expect("session");
        assert_eq!(first, ProbeResult::Connected, "port {port}");
        session
    });
    for session in &mut sessions {
        assert_eq!(
            session.exchange().expect("exchange"),
            ProbeResult::Connected
        );
    }
    assert!(
        BootClock::now_boot_ns() < boundary,
        "the set-up outlasted the window: the exchanges above do not show the grant"
    );
    let left = Duration::from_nanos(boundary.saturating_sub(BootClock::now_boot_ns()));
    thread::sleep(left + Duration::from_millis(100));
    // Nothing was written since: the kernel alone re-decided both established connections.
    for (session, port) in sessions.iter_mut().zip([80, 81]) {
        assert_eq!(
            session.exchange().expect("exchange"),
            ProbeResult::Timeout,
            "port {port}"
        );
    }
}

#[test]
fn unmanaged_processes_follow_config() {
    if skip() {
        return;
    }
    let mut env = Env::new("unmanaged");
    let stranger = env
        .net
        .add_workload("stranger", Ipv4Addr::new(10, 200, 0, 3), v6("fd00:200::3"))
        .expect("workload");
    let _tcp = env.server.serve(&[80], Proto::Tcp).expect("server");
    let target = IpAddr::V4(env.server.ipv4);
    let mut m = env.base(1);
    isolate(&mut m, 300, DIR_EGRESS, 96);
    env.dp().apply(&m).expect("apply");
    assert_eq!(
        env.net.probe(&stranger, target, 80, Proto::Tcp),
        ProbeResult::Connected,
        "unmanaged: not enforced"
    );
    m.revision = 2;
    m.unmanaged_identity = 300;
    env.dp().apply(&m).expect("apply");
    assert_eq!(
        env.net.probe(&stranger, target, 80, Proto::Tcp),
        ProbeResult::Denied,
        "unmanaged as identity 300"
    );
    // Registered workloads keep their own identity.
    assert_eq!(
        env.net.probe(&env.client, target, 80, Proto::Tcp),
        ProbeResult::Connected
    );
    m.revision = 3;
    m.workloads.insert(
        stranger.cgroup_id,
        WorkloadValue {
            identity: CLIENT,
            flags: 0,
        },
    );
    env.dp().apply(&m).expect("apply");
    assert_eq!(
        env.net.probe(&stranger, target, 80, Proto::Tcp),
        ProbeResult::Connected
    );
}

#[test]
fn apply_diffs_against_kernel_contents() {
    if skip() {
        return;
    }
    let mut env = Env::new("apply-diff");
    let mut m = env.base(1);
    m.policy.insert(
        key(CLIENT, SERVER, DIR_EGRESS, PROTO_TCP, 80, 16),
        allow(10),
    );
    m.policy.insert(
        key(CLIENT, SERVER, DIR_EGRESS, PROTO_TCP, 8000, 14),
        allow(11),
    );
    isolate(&mut m, CLIENT, DIR_EGRESS, 99);
    let first = env.dp().apply(&m).expect("apply");
    assert_eq!(
        (
            first.policy.upserted,
            first.workloads.upserted,
            first.addresses.upserted
        ),
        (2, 2, 4)
    );
    assert_eq!(env.dp().current().expect("read back"), m);
    let again = env.dp().apply(&m).expect("apply");
    assert_eq!(
        (
            again.policy.upserted,
            again.policy.unchanged,
            again.defaults.unchanged
        ),
        (0, 2, 1)
    );
    let mut smaller = m.clone();
    smaller.revision = 2;
    smaller
        .policy
        .retain(|(k, _), _| k.port_be == 80u16.to_be_bytes());
    smaller.defaults.clear();
    let third = env.dp().apply(&smaller).expect("apply");
    assert_eq!(
        (
            third.policy.deleted,
            third.defaults.deleted,
            third.previous_revision
        ),
        (1, 1, 1)
    );
    assert_eq!(env.dp().current().expect("read back"), smaller);
    // The final revision, not the transient one used while deleting, is what the kernel
    // stamps on new decisions.
    let _server = env.server.serve(&[80], Proto::Tcp).expect("server");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _entered = rt.enter();
    let mut reader = env.dp().event_reader().expect("reader");
    assert_eq!(
        env.net.probe(&env.client, env.server_v4(), 80, Proto::Tcp),
        ProbeResult::Connected
    );
    let events = reader.try_next_batch().expect("read").events;
    assert!(!events.is_empty());
    assert!(events.iter().all(|e| e.revision == 2), "{events:#?}");
    let fill = env.dp().map_fill().expect("fill");
    let policy = fill
        .iter()
        .find(|f| f.name == "POLICY")
        .expect("POLICY fill");
    assert_eq!(policy.entries, 1);
    assert!(policy.max_entries >= 65_536);
    assert_eq!(
        DesiredMaps::default().unmanaged_identity,
        identity::UNMANAGED
    );
}

#[test]
fn portless_protocols_match_proto_other_entries() {
    if skip() {
        return;
    }
    let mut env = Env::new("proto-other");
    let mut m = env.base(1);
    // Every TCP port is allowed, which says nothing about ICMP.
    m.policy
        .insert(key(CLIENT, SERVER, DIR_EGRESS, PROTO_TCP, 0, 0), allow(10));
    isolate(&mut m, CLIENT, DIR_EGRESS, 99);
    env.dp().apply(&m).expect("apply");
    for ip in [env.server_v4(), env.server_v6()] {
        // The echo request is dropped at cgroup_skb egress: the socket sees EPERM when the
        // packet leaves at once, nothing when it first waited for neighbour discovery.
        let result = env.net.probe(&env.client, ip, 0, Proto::Icmp);
        assert!(
            matches!(result, ProbeResult::Denied | ProbeResult::Timeout),
            "{ip}: {result:?}"
        );
    }
    m.revision = 2;
    m.policy.insert(
        key(CLIENT, SERVER, DIR_EGRESS, PROTO_OTHER, 0, 0),
        allow(13),
    );
    env.dp().apply(&m).expect("apply");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _entered = rt.enter();
    let mut reader = env.dp().event_reader().expect("reader");
    let _ = reader.try_next_batch().expect("drain");
    for ip in [env.server_v4(), env.server_v6()] {
        assert_eq!(
            env.net.probe(&env.client, ip, 0, Proto::Icmp),
            ProbeResult::Connected,
            "{ip}"
        );
        // One event for the new flow at egress; the reply follows the flow silently, and the
        // kernel's own answer on the server side passes no socket hook.
        let events = reader.try_next_batch().expect("read").events;
        assert_eq!(events.len(), 1, "{events:#?}");
        let e = events[0];
        let icmp = if ip.is_ipv4() { 1 } else { 58 };
        assert_eq!(
            (e.hook, e.direction, e.protocol, e.dst_port, e.rule_id),
            (HOOK_SKB_EGRESS, DIR_EGRESS, icmp, 0, 13)
        );
        assert_eq!(e.dst_addr, mapped(ip));
    }
}

#[test]
fn connections_older_than_the_install_pass_when_either_orientation_allows() {
    if skip() {
        return;
    }
    let mut env = Env::without_datapath("preexisting");
    let _tcp = env.server.serve(&[80], Proto::Tcp).expect("server");
    let (mut session, first) = env
        .client
        .open_session(env.server_v4(), 80, Duration::from_secs(1))
        .expect("session");
    assert_eq!(first, ProbeResult::Connected);
    assert_eq!(env.adopt().origin(), enforcer::datapath::Origin::Installed);
    let mut m = env.base(1);
    // Both ends are isolated both ways; only the client's egress and the server's ingress to
    // port 80 are granted. Neither socket went through the programs' connect or SYN handling.
    m.policy.insert(
        key(CLIENT, SERVER, DIR_EGRESS, PROTO_TCP, 80, 16),
        allow(10),
    );
    m.policy.insert(
        key(SERVER, CLIENT, DIR_INGRESS, PROTO_TCP, 80, 16),
        allow(20),
    );
    for (local, dir) in [
        (CLIENT, DIR_EGRESS),
        (CLIENT, DIR_INGRESS),
        (SERVER, DIR_EGRESS),
        (SERVER, DIR_INGRESS),
    ] {
        isolate(&mut m, local, dir, 90);
    }
    env.dp().apply(&m).expect("apply");
    // Client socket: egress orientation allows. Server socket: egress (to the client's ephemeral
    // port) is denied, ingress to 80 allows.
    assert_eq!(
        session.exchange().expect("exchange"),
        ProbeResult::Connected
    );
    assert_eq!(
        session.exchange().expect("exchange"),
        ProbeResult::Connected
    );
    // The client's socket kept the egress orientation: withdrawing that grant stops the flow.
    m.revision = 2;
    m.policy.retain(|(k, _), _| k.local_identity != CLIENT);
    env.dp().apply(&m).expect("apply");
    assert_eq!(session.exchange().expect("exchange"), ProbeResult::Timeout);
}

/// The workload `w` as seen from a new child cgroup of its own (a container in a pod): same
/// namespace and addresses, processes placed in the child.
fn in_child_cgroup(w: &Workload, name: &str) -> (CgroupDir, Workload) {
    let dir = CgroupDir::create(&w.cgroup_path, name).expect("child cgroup");
    let mut child = w.clone();
    child.cgroup_path = dir.path().to_path_buf();
    child.cgroup_id = dir.id().expect("child cgroup id");
    (dir, child)
}

/// The absolute level of a cgroup directory (the hierarchy's root is 0).
fn cgroup_level(path: &Path) -> u16 {
    let root = find_cgroup2_mount().expect("cgroup2 mount");
    let depth = path
        .strip_prefix(&root)
        .expect("cgroup below the mount")
        .components()
        .count();
    u16::try_from(depth).expect("level")
}

#[test]
fn ancestor_levels_make_a_workload_cgroup_cover_its_children() {
    if skip() {
        return;
    }
    let mut env = Env::new("ancestors");
    let (_client_ctr_dir, client_ctr) = in_child_cgroup(&env.client, "ctr");
    let (_server_ctr_dir, server_ctr) = in_child_cgroup(&env.server, "ctr");
    let _tcp = server_ctr.serve(&[80, 81], Proto::Tcp).expect("server");
    let level = cgroup_level(&env.client.cgroup_path);
    assert_eq!(level, cgroup_level(&env.server.cgroup_path));
    let target = env.server_v4();

    // Client egress allows :80 only; server ingress allows :80 from the client only.
    let mut m = env.base(1);
    m.policy.insert(
        key(CLIENT, SERVER, DIR_EGRESS, PROTO_TCP, 80, 16),
        allow(10),
    );
    isolate(&mut m, CLIENT, DIR_EGRESS, 99);
    m.policy.insert(
        key(SERVER, CLIENT, DIR_INGRESS, PROTO_TCP, 81, 16),
        allow(20),
    );
    isolate(&mut m, SERVER, DIR_INGRESS, 98);
    env.dp().apply(&m).expect("apply");
    // Without ancestor lookups the child cgroups are nobody: not enforced.
    for port in [80, 81] {
        assert_eq!(
            env.net.probe(&client_ctr, target, port, Proto::Tcp),
            ProbeResult::Connected,
            "children not covered yet: :{port}"
        );
    }

    // Bad levels are refused and change nothing.
    for bad in [(0, level), (level, level - 1), (1, 1 + MAX_ANCESTOR_LEVELS)] {
        let mut wrong = m.clone();
        wrong.revision = 9;
        wrong.ancestor_levels = Some(bad);
        env.dp().apply(&wrong).expect_err("invalid ancestor levels");
        assert_eq!(env.dp().revision().expect("revision"), 1, "{bad:?}");
    }

    // The workload's level (and one below it, where nothing is mapped) is looked up: the child
    // processes now have the workloads' identities, at connect (client egress: EPERM) and at
    // ingress (the server drops).
    m.revision = 2;
    m.ancestor_levels = Some((level, level + 1));
    env.dp().apply(&m).expect("apply");
    assert_eq!(
        env.dp().current().expect("read").ancestor_levels,
        Some((level, level + 1))
    );
    assert_eq!(
        env.net.probe(&client_ctr, target, 81, Proto::Tcp),
        ProbeResult::Denied,
        "client egress applies to its child cgroup"
    );
    // :80 passes the client's egress and is dropped by the server's ingress policy (which
    // allows :81 only), seen from the server's child cgroup.
    assert_eq!(
        env.net.probe(&client_ctr, target, 80, Proto::Tcp),
        ProbeResult::Timeout,
        "server ingress applies to its child cgroup"
    );
    // A child with a workload of its own keeps it (the leaf comes first): the client's child
    // as an unrestricted identity.
    m.revision = 3;
    m.workloads.insert(
        client_ctr.cgroup_id,
        WorkloadValue {
            identity: 300,
            flags: 0,
        },
    );
    env.dp().apply(&m).expect("apply");
    // (The server still sees the client's address, identity CLIENT, which it allows on :81.)
    assert_eq!(
        env.net.probe(&client_ctr, target, 81, Proto::Tcp),
        ProbeResult::Connected,
        "leaf identity 300 is not egress-isolated: the leaf's own entry decides, not its parent's"
    );
}

#[test]
fn an_accepted_connections_first_data_follows_the_revision_not_the_syn() {
    if skip() {
        return;
    }
    let mut env = Env::new("syn-then-revoke");
    let _tcp = env.server.serve(&[80], Proto::Tcp).expect("server");
    let mut m = env.base(1);
    m.policy.insert(
        key(SERVER, CLIENT, DIR_INGRESS, PROTO_TCP, 80, 16),
        allow(20),
    );
    isolate(&mut m, SERVER, DIR_INGRESS, 98);
    env.dp().apply(&m).expect("apply");
    // Allowed at its SYN (revision 1): the handshake completes, no data yet. The accepted
    // socket's first packet follows the SYN's decision only under the same revision.
    let (mut allowed, first) = env
        .client
        .open_idle_session(env.server_v4(), 80, Duration::from_secs(1))
        .expect("session");
    assert_eq!(first, ProbeResult::Connected, "handshake");
    assert_eq!(
        allowed.exchange().expect("exchange"),
        ProbeResult::Connected,
        "first data under the SYN's revision"
    );
    let (mut revoked, first) = env
        .client
        .open_idle_session(env.server_v4(), 80, Duration::from_secs(1))
        .expect("session");
    assert_eq!(first, ProbeResult::Connected, "handshake");
    // The grant goes between the handshake and the first data: that data must be dropped.
    m.revision = 2;
    m.policy.retain(|(k, _), _| k.direction != DIR_INGRESS);
    env.dp().apply(&m).expect("apply");
    assert_eq!(
        revoked.exchange().expect("exchange"),
        ProbeResult::Timeout,
        "first data after the grant was revoked"
    );
}

/// The benchmark's hook-floor lane: pass-only programs attach once at each of the datapath's six
/// hooks, let every connection through, and are detached when dropped.
#[test]
fn pass_only_programs_attach_at_the_six_hooks_and_detach_on_drop() {
    if skip() {
        return;
    }
    let env = Env::without_datapath("pass-only");
    let _tcp = env.server.serve(&[80], Proto::Tcp).expect("server");
    let _udp = env.server.serve(&[80], Proto::Udp).expect("server");
    let parent = env.net.cgroup_parent();
    let pass = PassPrograms::attach(parent).expect("attach");
    for attach_type in ALL_ATTACH_TYPES {
        let ids = attached_programs(parent, attach_type).expect("query");
        assert_eq!(ids.len(), 1, "attach type {attach_type}: {ids:?}");
    }
    for ip in [env.server_v4(), env.server_v6()] {
        for proto in ALL_PROTOS {
            assert_eq!(
                env.net.probe(&env.client, ip, 80, proto),
                ProbeResult::Connected,
                "{ip} {proto:?}"
            );
        }
    }
    drop(pass);
    assert_eq!(attached_count(parent).expect("query"), 0);
}
