//! Verdict events: exactly one per connection attempt per enforcement point, with the right
//! fields; ring-buffer overflow counted as losses.

use std::{net::IpAddr, time::Duration};

use bulkhead_tests::workload::{ProbeResult, Proto};
use enforcer::datapath::{DatapathOptions, EventReader};
use enforcer_common::{
    DIR_EGRESS, DIR_INGRESS, FAMILY_INET, FAMILY_INET6, HOOK_CONNECT, HOOK_SENDMSG,
    HOOK_SKB_INGRESS, PROTO_TCP, PROTO_UDP, REASON_ALLOWED_BY_RULE, REASON_DEFAULT_DENY,
    REASON_DENIED_BY_RULE, VERDICT_ALLOW, VERDICT_DENY, VerdictEvent,
};

use super::common::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn drain(reader: &mut EventReader) -> Vec<VerdictEvent> {
    let batch = reader.try_next_batch().expect("read events");
    assert_eq!(batch.lost, 0, "no event may be lost here");
    batch.events
}

fn only(events: &[VerdictEvent], hook: u8) -> VerdictEvent {
    let matching: Vec<_> = events.iter().filter(|e| e.hook == hook).collect();
    assert_eq!(
        matching.len(),
        1,
        "exactly one event of hook {hook} in {events:#?}"
    );
    *matching[0]
}

#[test]
fn one_event_per_attempt_per_enforcement_point() {
    if skip() {
        return;
    }
    let mut env = Env::new("events");
    let _tcp = env.server.serve(&[80, 81, 82], Proto::Tcp).expect("server");
    let _udp = env.server.serve(&[80], Proto::Udp).expect("server");
    let mut m = env.base(7);
    for proto in [PROTO_TCP, PROTO_UDP] {
        m.policy
            .insert(key(CLIENT, SERVER, DIR_EGRESS, proto, 0, 0), allow(10));
        m.policy
            .insert(key(SERVER, CLIENT, DIR_INGRESS, proto, 80, 16), allow(20));
    }
    m.policy
        .insert(key(CLIENT, SERVER, DIR_EGRESS, PROTO_TCP, 82, 16), deny(12));
    isolate(&mut m, SERVER, DIR_INGRESS, 98);
    env.dp().apply(&m).expect("apply");
    let rt = runtime();
    let _entered = rt.enter();
    let mut reader = env.dp().event_reader().expect("reader");
    assert!(drain(&mut reader).is_empty());
    let (client_v4, server_v4) = (IpAddr::V4(env.client.ipv4), env.server_v4());

    // TCP allowed both ways: one connect event at the client, one SYN event at the server.
    assert_eq!(
        env.net.probe(&env.client, server_v4, 80, Proto::Tcp),
        ProbeResult::Connected
    );
    let events = drain(&mut reader);
    assert_eq!(events.len(), 2, "{events:#?}");
    let c = only(&events, HOOK_CONNECT);
    assert_eq!(
        (
            c.direction,
            c.cgroup_id,
            c.local_identity,
            c.remote_identity
        ),
        (DIR_EGRESS, env.client.cgroup_id, CLIENT, SERVER)
    );
    assert_eq!(
        (c.dst_addr, c.dst_port, c.protocol, c.family),
        (mapped(server_v4), 80, PROTO_TCP, FAMILY_INET)
    );
    assert_eq!(
        (c.verdict, c.reason, c.rule_id, c.revision),
        (VERDICT_ALLOW, REASON_ALLOWED_BY_RULE, 10, 7)
    );
    assert_ne!(c.socket_cookie, 0);
    let i = only(&events, HOOK_SKB_INGRESS);
    assert_eq!(
        (
            i.direction,
            i.cgroup_id,
            i.local_identity,
            i.remote_identity
        ),
        (DIR_INGRESS, env.server.cgroup_id, SERVER, CLIENT)
    );
    assert_eq!(
        (i.src_addr, i.dst_addr, i.dst_port, i.protocol),
        (mapped(client_v4), mapped(server_v4), 80, PROTO_TCP)
    );
    assert_ne!(i.src_port, 0);
    assert_eq!(
        (i.verdict, i.rule_id, i.revision, i.family),
        (VERDICT_ALLOW, 20, 7, FAMILY_INET)
    );
    assert!(i.timestamp_ns >= c.timestamp_ns);

    // Unconnected UDP over IPv6: sendmsg at the client, first datagram at the server; the echo
    // back (a reply on both sides) adds nothing.
    let server_v6 = env.server_v6();
    assert_eq!(
        env.net.probe(&env.client, server_v6, 80, Proto::Udp),
        ProbeResult::Connected
    );
    let events = drain(&mut reader);
    assert_eq!(events.len(), 2, "{events:#?}");
    let s = only(&events, HOOK_SENDMSG);
    assert_eq!(
        (s.direction, s.dst_addr, s.dst_port, s.protocol, s.family),
        (DIR_EGRESS, mapped(server_v6), 80, PROTO_UDP, FAMILY_INET6)
    );
    let i = only(&events, HOOK_SKB_INGRESS);
    assert_eq!(
        (i.direction, i.src_addr, i.protocol, i.rule_id),
        (
            DIR_INGRESS,
            mapped(IpAddr::V6(env.client.ipv6)),
            PROTO_UDP,
            20
        )
    );

    // Connected UDP: connect at the client.
    assert_eq!(
        env.net
            .probe(&env.client, server_v6, 80, Proto::UdpConnected),
        ProbeResult::Connected
    );
    let events = drain(&mut reader);
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(only(&events, HOOK_CONNECT).protocol, PROTO_UDP);
    only(&events, HOOK_SKB_INGRESS);

    // Dropped SYN, retransmitted at least once within 2.5 s: still one ingress event.
    let slow = Duration::from_millis(2500);
    assert_eq!(
        env.net
            .probe_with_timeout(&env.client, server_v4, 81, Proto::Tcp, slow),
        ProbeResult::Timeout
    );
    let events = drain(&mut reader);
    assert_eq!(events.len(), 2, "{events:#?}");
    let i = only(&events, HOOK_SKB_INGRESS);
    assert_eq!(
        (i.verdict, i.reason, i.rule_id, i.dst_port),
        (VERDICT_DENY, REASON_DEFAULT_DENY, 98, 81)
    );

    // Denied at connect: one event, nothing reaches the server.
    assert_eq!(
        env.net.probe(&env.client, server_v4, 82, Proto::Tcp),
        ProbeResult::Denied
    );
    let events = drain(&mut reader);
    assert_eq!(events.len(), 1, "{events:#?}");
    let c = only(&events, HOOK_CONNECT);
    assert_eq!(
        (c.verdict, c.reason, c.rule_id, c.dst_port),
        (VERDICT_DENY, REASON_DENIED_BY_RULE, 12, 82)
    );
}

/// A client that reuses its source port for a new connection within the retransmission window
/// (same listener, remote address and port, revision) makes a new attempt, not a retransmission:
/// its SYN carries another initial sequence number, and the server writes one event per attempt.
#[test]
fn reused_client_port_is_a_new_attempt() {
    if skip() {
        return;
    }
    let mut env = Env::new("events-reuse");
    let _tcp = env.server.serve(&[80], Proto::Tcp).expect("server");
    let mut m = env.base(3);
    m.policy.insert(
        key(CLIENT, SERVER, DIR_EGRESS, PROTO_TCP, 80, 16),
        allow(10),
    );
    m.policy.insert(
        key(SERVER, CLIENT, DIR_INGRESS, PROTO_TCP, 80, 16),
        allow(20),
    );
    env.dp().apply(&m).expect("apply");
    let rt = runtime();
    let _entered = rt.enter();
    let mut reader = env.dp().event_reader().expect("reader");
    assert!(drain(&mut reader).is_empty());

    let attempts: u32 = 20;
    let src_port: u16 = 40_000;
    let results = env
        .client
        .probe_reused_port(
            env.server_v4(),
            80,
            src_port,
            attempts,
            Duration::from_secs(2),
        )
        .expect("reused-port probes");
    assert_eq!(results, vec![ProbeResult::Connected; attempts as usize]);
    let events = drain(&mut reader);
    let connects = events.iter().filter(|e| e.hook == HOOK_CONNECT).count();
    let syns: Vec<_> = events
        .iter()
        .filter(|e| e.hook == HOOK_SKB_INGRESS)
        .collect();
    assert_eq!(connects, attempts as usize, "{events:#?}");
    assert_eq!(
        syns.len(),
        attempts as usize,
        "one SYN event per attempt from the reused port: {events:#?}"
    );
    assert!(
        syns.iter()
            .all(|e| (e.src_port, e.dst_port, e.rule_id) == (src_port, 80, 20)),
        "{syns:#?}"
    );
    assert_eq!(events.len(), 2 * attempts as usize, "{events:#?}");
}

#[test]
fn async_reader_wakes_on_new_events() {
    if skip() {
        return;
    }
    let mut env = Env::new("events-async");
    let m = env.base(1);
    env.dp().apply(&m).expect("apply");
    assert!(
        env.dp().event_reader().is_err(),
        "outside a tokio runtime the reader is an error, not a panic"
    );
    let rt = runtime();
    let mut reader = rt
        .block_on(async { env.dp.as_ref().expect("dp").event_reader() })
        .expect("reader");
    let client = env.client.clone();
    let target = env.server_v4();
    let prober = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        // No server listens: refused, but the connect hook still decides and reports.
        bulkhead_tests::workload::probe_once(&client, target, 9, Proto::Tcp, Duration::from_secs(1))
    });
    let batch = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), reader.next_batch()).await })
        .expect("an event within 5 s")
        .expect("read");
    assert!(
        batch
            .events
            .iter()
            .any(|e| e.hook == HOOK_CONNECT && e.dst_port == 9),
        "{batch:#?}"
    );
    assert_eq!(prober.join().expect("prober"), ProbeResult::Refused);
}

#[test]
fn ring_buffer_overflow_is_counted() {
    if skip() {
        return;
    }
    // One page of ring: 39 records of 96 + 8 bytes fit.
    let options = DatapathOptions {
        events_ring_bytes: Some(4096),
    };
    let mut env = Env::with_options("events-loss", &options);
    let mut m = env.base(1);
    isolate(&mut m, CLIENT, DIR_EGRESS, 99);
    env.dp().apply(&m).expect("apply");
    let attempts = 60;
    for _ in 0..attempts {
        assert_eq!(
            env.net.probe(&env.client, env.server_v4(), 80, Proto::Tcp),
            ProbeResult::Denied
        );
    }
    let rt = runtime();
    let _entered = rt.enter();
    let mut reader = env.dp().event_reader().expect("reader");
    let batch = reader.try_next_batch().expect("read");
    assert!(batch.lost > 0, "nothing lost with a one-page ring");
    assert_eq!(
        batch.events.len() as u64 + batch.lost,
        attempts,
        "every attempt is an event or a loss"
    );
    assert_eq!(reader.lost_total().expect("losses"), batch.lost);
    // Losses are reported once.
    assert_eq!(reader.try_next_batch().expect("read").lost, 0);
}
