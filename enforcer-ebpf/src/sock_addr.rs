//! `cgroup/connect*` and `cgroup/sendmsg*`: the egress decision made in the system call, so that a
//! denied connection fails at once with EPERM (pitfall 8).
//!
//! `connect` caches the decision in `SOCK_DECISIONS` (orientation: egress) for the skb programs.
//! `sendmsg` (unconnected UDP) records it per flow in `FLOWS`; a datagram that answers a flow
//! first seen at ingress (a UDP server's reply) follows that flow's ingress decision instead.

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock_addr,
    helpers::generated::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_socket_cookie,
    },
    programs::SockAddrContext,
};
use enforcer_common::{
    AddrKey, DIR_EGRESS, FAMILY_INET, FAMILY_INET6, FlowKey, FlowValue, HOOK_CONNECT, HOOK_SENDMSG,
    PROTO_TCP, PROTO_UDP, SOCK_DECISION_VALID, SockDecision, VERDICT_DENY, VerdictEvent,
};

use crate::{
    decide::{Decision, decide},
    events::emit,
    maps::{self, FLOWS},
    packet::v4_mapped,
};

/// The socket's bound local address and port (zero when not bound yet).
struct Local {
    addr: AddrKey,
    port: u16,
}

/// The destination of the `connect`/`sendmsg` call: address key and port (host order).
#[inline(always)]
fn user_dest(sa: &bpf_sock_addr, v6: bool) -> (AddrKey, u16) {
    let port = u16::from_be(sa.user_port as u16);
    if v6 {
        (ip6_key(&sa.user_ip6), port)
    } else {
        (v4_mapped(sa.user_ip4.to_ne_bytes()), port)
    }
}

#[inline(always)]
fn ip6_key(words: &[u32; 4]) -> AddrKey {
    let (a, b, c, d) = (words[0], words[1], words[2], words[3]);
    let mut key = [0u8; 16];
    key[0..4].copy_from_slice(&a.to_ne_bytes());
    key[4..8].copy_from_slice(&b.to_ne_bytes());
    key[8..12].copy_from_slice(&c.to_ne_bytes());
    key[12..16].copy_from_slice(&d.to_ne_bytes());
    key
}

/// The context's socket (a full socket for connect and sendmsg).
#[inline(always)]
fn sa_sock(sa: &bpf_sock_addr) -> *mut aya_ebpf::bindings::bpf_sock {
    // SAFETY: reading the union's pointer member, which is what the kernel provides.
    unsafe { sa.__bindgen_anon_1.sk }
}

#[inline(always)]
fn local_of(sa: &bpf_sock_addr, v6: bool) -> Local {
    // SAFETY: `sk` of a sock_addr context is a valid socket pointer for the whole program.
    let sk = unsafe { &*sa.__bindgen_anon_1.sk };
    let addr = if v6 {
        ip6_key(&sk.src_ip6)
    } else {
        v4_mapped(sk.src_ip4.to_ne_bytes())
    };
    Local {
        addr,
        port: sk.src_port as u16,
    }
}

/// What an event of this module reports besides the socket itself.
struct Report<'a> {
    hook: u8,
    revision: u64,
    cgroup_id: u64,
    local_identity: u32,
    protocol: u8,
    remote: &'a AddrKey,
    port: u16,
    decision: &'a Decision,
}

#[inline(always)]
fn event(ctx: &SockAddrContext, v6: bool, r: &Report<'_>) {
    // SAFETY: the context pointer is valid for the whole program.
    let sa = unsafe { &*ctx.sock_addr };
    let local = local_of(sa, v6);
    // SAFETY: bpf_get_socket_cookie accepts a sock_addr context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    emit(&VerdictEvent {
        timestamp_ns: r.decision.at_ns,
        cgroup_id: r.cgroup_id,
        socket_cookie: cookie,
        revision: r.revision,
        src_addr: local.addr,
        dst_addr: *r.remote,
        src_port: local.port,
        dst_port: r.port,
        local_identity: r.local_identity,
        remote_identity: r.decision.peer_identity,
        rule_id: r.decision.rule_id,
        direction: DIR_EGRESS,
        hook: r.hook,
        protocol: r.protocol,
        verdict: r.decision.verdict,
        reason: r.decision.reason,
        family: if v6 { FAMILY_INET6 } else { FAMILY_INET },
        _pad: [0; 10],
    });
}

/// The current task's ancestor cgroup at `level` (0 past its depth).
#[inline(always)]
fn current_ancestor(level: u16) -> u64 {
    // SAFETY: a helper that only reads the current task's cgroup.
    unsafe { bpf_get_current_ancestor_cgroup_id(i32::from(level)) }
}

/// `connect4`/`connect6`: `Ok(true)` lets the connect proceed.
#[inline(always)]
pub fn try_connect(ctx: &SockAddrContext, v6: bool) -> Result<bool, i64> {
    // SAFETY: the context pointer is valid for the whole program.
    let sa = unsafe { &*ctx.sock_addr };
    let protocol = sa.protocol as u8;
    if protocol != PROTO_TCP && protocol != PROTO_UDP {
        return Ok(true);
    }
    let (revision, settings) = maps::config();
    // SAFETY: a helper without arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(local) = maps::local_identity(cgroup_id, &settings, current_ancestor) else {
        return Ok(true);
    };
    let (remote, port) = user_dest(sa, v6);
    let d = decide(local, &remote, DIR_EGRESS, protocol, port);
    let slot = maps::sock_storage(sa_sock(sa), true);
    if !slot.is_null() {
        // SAFETY: a non-null storage pointer of this socket.
        unsafe {
            *slot = SockDecision {
                revision,
                listener_cookie: 0,
                rule_id: d.rule_id,
                verdict: d.verdict,
                reason: d.reason,
                direction: DIR_EGRESS,
                flags: SOCK_DECISION_VALID,
            };
        }
    }
    let report = Report {
        hook: HOOK_CONNECT,
        revision,
        cgroup_id,
        local_identity: local,
        protocol,
        remote: &remote,
        port,
        decision: &d,
    };
    event(ctx, v6, &report);
    Ok(d.passes())
}

/// `sendmsg4`/`sendmsg6` (unconnected UDP): `Ok(true)` lets the datagram go.
#[inline(always)]
pub fn try_sendmsg(ctx: &SockAddrContext, v6: bool) -> Result<bool, i64> {
    // SAFETY: the context pointer is valid for the whole program.
    let sa = unsafe { &*ctx.sock_addr };
    let protocol = sa.protocol as u8;
    if protocol != PROTO_UDP {
        return Ok(true);
    }
    let (revision, settings) = maps::config();
    // SAFETY: a helper without arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(local) = maps::local_identity(cgroup_id, &settings, current_ancestor) else {
        return Ok(true);
    };
    let (remote, port) = user_dest(sa, v6);
    // SAFETY: bpf_get_socket_cookie accepts a sock_addr context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = FlowKey {
        socket_cookie: cookie,
        remote_addr: remote,
        remote_port: port,
        protocol,
        _pad: [0; 5],
    };
    // SAFETY: the value is copied out at once.
    let known = unsafe { FLOWS.get(key) }.copied();
    let (d, direction, fresh) = match known {
        Some(f) if f.revision == revision => return Ok(f.verdict != VERDICT_DENY),
        Some(f) => {
            // A flow decided under an older revision: decide again in its own orientation.
            let server_port = if f.direction == DIR_EGRESS {
                port
            } else {
                local_of(sa, v6).port
            };
            (
                decide(local, &remote, f.direction, protocol, server_port),
                f.direction,
                false,
            )
        }
        None => (
            decide(local, &remote, DIR_EGRESS, protocol, port),
            DIR_EGRESS,
            true,
        ),
    };
    let value = FlowValue {
        revision,
        seen_ns: 0,
        rule_id: d.rule_id,
        verdict: d.verdict,
        reason: d.reason,
        direction,
        flags: 0,
        syn_seq: 0,
        _pad: [0; 4],
    };
    let _ = FLOWS.insert(key, value, 0);
    if fresh {
        let report = Report {
            hook: HOOK_SENDMSG,
            revision,
            cgroup_id,
            local_identity: local,
            protocol,
            remote: &remote,
            port,
            decision: &d,
        };
        event(ctx, v6, &report);
    }
    Ok(d.passes())
}
