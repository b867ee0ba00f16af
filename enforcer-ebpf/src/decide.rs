//! The decision of docs/design.md, step by step: peer identity, specific-peer policy entry,
//! `ANY` entry, isolation default, not isolated. The kernel never combines entries; the first
//! hit is the answer.

use aya_ebpf::helpers::generated::bpf_ktime_get_boot_ns;
use enforcer_common::{
    AddrKey, PROTO_OTHER, PROTO_SCTP, PROTO_TCP, PROTO_UDP, PolicyKey, PolicyValue,
    REASON_NOT_ISOLATED, RULE_NONE, VERDICT_ALLOW, VERDICT_DENY, identity,
};

use crate::maps;

/// A resolved decision, copied out of the maps.
#[derive(Clone, Copy)]
pub struct Decision {
    pub verdict: u8,
    pub reason: u8,
    pub rule_id: u32,
    pub peer_identity: u32,
    /// The boot-time instant the windows were checked at (also the event's timestamp).
    pub at_ns: u64,
}

impl Decision {
    /// Whether the traffic may flow (`AUDIT` lets it through).
    #[inline(always)]
    pub fn passes(&self) -> bool {
        self.verdict != VERDICT_DENY
    }
}

/// The protocol and port as the policy keys see them: ports only for TCP, UDP and SCTP.
#[inline(always)]
pub fn policy_protocol(protocol: u8, port: u16) -> (u8, u16) {
    match protocol {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => (protocol, port),
        _ => (PROTO_OTHER, 0),
    }
}

/// Decides a connection of `local` with remote address `remote` to destination (server) port
/// `port`, seen in `direction`, now.
#[inline(always)]
pub fn decide(local: u32, remote: &AddrKey, direction: u8, protocol: u8, port: u16) -> Decision {
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    decide_at(now, local, remote, direction, protocol, port)
}

/// [`decide`] at `now` (boot-time ns), for callers that read the clock already.
#[inline(always)]
pub fn decide_at(
    now: u64,
    local: u32,
    remote: &AddrKey,
    direction: u8,
    protocol: u8,
    port: u16,
) -> Decision {
    let peer = maps::peer_identity(remote);
    let (protocol, port) = policy_protocol(protocol, port);
    let mut key = PolicyKey {
        local_identity: local,
        peer_identity: peer,
        direction,
        protocol,
        port_be: port.to_be_bytes(),
    };
    if let Some(v) = in_window(maps::policy_entry(key), now) {
        return from_value(&v, peer, now);
    }
    key.peer_identity = identity::ANY;
    if let Some(v) = in_window(maps::policy_entry(key), now) {
        return from_value(&v, peer, now);
    }
    if let Some(v) = in_window(maps::default_entry(local, direction), now) {
        return from_value(&v, peer, now);
    }
    Decision {
        verdict: VERDICT_ALLOW,
        reason: REASON_NOT_ISOLATED,
        rule_id: RULE_NONE,
        peer_identity: peer,
        at_ns: now,
    }
}

/// An entry outside its `[not_before, expires_at)` window counts as a miss.
#[inline(always)]
fn in_window(entry: Option<PolicyValue>, now: u64) -> Option<PolicyValue> {
    match entry {
        Some(v) if v.not_before <= now && now < v.expires_at => Some(v),
        _ => None,
    }
}

#[inline(always)]
fn from_value(v: &PolicyValue, peer_identity: u32, at_ns: u64) -> Decision {
    Decision {
        verdict: v.verdict,
        reason: v.reason,
        rule_id: v.rule_id,
        peer_identity,
        at_ns,
    }
}
