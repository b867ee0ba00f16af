//! Kernel datapath tests: real programs on a per-test cgroup, real traffic between network
//! namespaces, map contents written directly through `DesiredMaps` (no policy compiler).
//! They need root and BPF; elsewhere they skip with a message (or fail when
//! `BULKHEAD_REQUIRE_KERNEL_TESTS=1`).

#[path = "datapath/common.rs"]
mod common;

use bulkhead_tests::{
    bpf_query,
    workload::{ProbeResult, Proto},
};
use common::*;
use enforcer_common::{DIR_EGRESS, DIR_INGRESS, PROTO_TCP, PROTO_UDP};

#[test]
fn install_attaches_every_program_and_uninstall_detaches() {
    if skip() {
        return;
    }
    let env = Env::new("install");
    assert_eq!(
        bpf_query::attached_count(env.net.cgroup_parent()).expect("query"),
        6
    );
    let _server = env.server.serve(&[80], Proto::Tcp).expect("server");
    assert_eq!(
        env.net.probe(&env.client, env.server_v4(), 80, Proto::Tcp),
        ProbeResult::Connected
    );
    let parent = env.net.cgroup_parent().to_path_buf();
    let root = env.pins.0.clone();
    drop(env.dp);
    enforcer::datapath::uninstall(&root).expect("uninstall");
    assert_eq!(bpf_query::attached_count(&parent).expect("query"), 0);
    assert!(!root.exists(), "pins left behind at {}", root.display());
}

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
    env.dp.apply(&m).expect("apply");
    for ip in [env.server_v4(), env.server_v6()] {
        for proto in [Proto::Tcp, Proto::Udp, Proto::UdpConnected] {
            assert_eq!(
                env.net.probe(&env.client, ip, 80, proto),
                ProbeResult::Connected,
                "{ip} {proto:?} :80"
            );
            let started = std::time::Instant::now();
            assert_eq!(
                env.net.probe(&env.client, ip, 81, proto),
                ProbeResult::Denied,
                "{ip} {proto:?} :81"
            );
            assert!(
                started.elapsed() < std::time::Duration::from_millis(500),
                "EPERM must be immediate"
            );
        }
    }
    let _ = DIR_INGRESS;
}
