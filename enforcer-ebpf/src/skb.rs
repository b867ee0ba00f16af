//! `cgroup_skb/egress` and `cgroup_skb/ingress`: every packet of a managed socket.
//!
//! Orientation (who is the server, hence which port and direction the policy is looked up with):
//! - a TCP SYN (without ACK) at ingress is a new inbound connection: ingress decision, one event
//!   (retransmitted SYNs of the same attempt follow the recorded decision silently);
//! - a TCP socket that went through `connect` carries its egress decision in `SOCK_DECISIONS`;
//! - a listener gets the passive mark in its socket storage at its first SYN; the storage map has
//!   `BPF_F_CLONE`, so every socket it accepts inherits the mark and is decided silently at
//!   ingress orientation (peer = remote address, port = local port), then cached. Listeners
//!   themselves are never cached: their handshake packets follow the `FLOWS` entry of their SYN
//!   (current revision), else are decided the same way;
//! - a connected TCP socket with neither mark (it predates the programs) passes when either
//!   orientation allows it, and keeps the orientation that did;
//! - UDP and port-less protocols: a connected socket's cached decision, else the `FLOWS` entry
//!   of (socket cookie, remote address, remote port), else a new flow oriented by the hook that
//!   saw its first packet (event written once).
//!
//! A cached decision of an older `CONFIG.revision` is made again in its recorded orientation,
//! silently, so established flows follow a policy change. One of the current revision is the
//! fast path: followed before anything else (see `try_skb`).

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::bpf_sock,
    helpers::generated::{
        bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_sk_fullsock, bpf_skb_ancestor_cgroup_id,
        bpf_skb_cgroup_id,
    },
    programs::SkBuffContext,
};
use enforcer_common::{
    AddrKey, DIR_EGRESS, DIR_INGRESS, FlowKey, FlowValue, HOOK_SKB_EGRESS, HOOK_SKB_INGRESS,
    PROTO_SCTP, PROTO_TCP, PROTO_UDP, SOCK_DECISION_PASSIVE, SOCK_DECISION_VALID, SockDecision,
    VERDICT_DENY, VerdictEvent,
};

use crate::{
    decide::{Decision, decide, decide_at},
    events::emit,
    maps::{self, FLOWS},
    packet::{self, Packet},
};

/// `TCP_LISTEN` in the kernel's socket states.
const TCP_LISTEN: u32 = 10;
/// A SYN with the recorded initial sequence number of a flow decided within this window is a
/// retransmission of the same attempt.
const SYN_RETRANSMIT_WINDOW_NS: u64 = 30_000_000_000;

/// One packet seen from the local socket.
struct View {
    local: u32,
    revision: u64,
    cgroup_id: u64,
    cookie: u64,
    remote: AddrKey,
    remote_port: u16,
    local_port: u16,
    hook_dir: u8,
}

impl View {
    /// The server port of a connection in `direction`: the remote port for egress-oriented
    /// connections, the local one for ingress-oriented ones.
    #[inline(always)]
    fn server_port(&self, direction: u8) -> u16 {
        if direction == DIR_EGRESS {
            self.remote_port
        } else {
            self.local_port
        }
    }
}

/// Both cgroup_skb programs: `Ok(true)` lets the packet through.
///
/// Fast path first: a socket whose storage holds a valid decision of the current revision
/// follows it before anything else is read (no header parsing, no other map lookup). Such a
/// decision exists only for a socket of a managed workload, and a revision names the maps'
/// whole content, so the slow path would reach the same verdict.
#[inline(always)]
pub fn try_skb(ctx: &SkBuffContext, hook_dir: u8) -> Result<bool, i64> {
    let (revision, settings) = maps::config();
    let sk = full_socket(ctx);
    let slot = maps::sock_storage(sk, false);
    if !slot.is_null() && !sk.is_null() {
        // SAFETY: a non-null storage pointer of this socket; copied out at once.
        let cached = unsafe { *slot };
        // SAFETY: a full socket; `state` is a readable field. A listener is never cached (its
        // SYNs are new attempts), whatever its storage holds.
        let listening = unsafe { (*sk).state } == TCP_LISTEN;
        if cached.flags & SOCK_DECISION_VALID != 0 && cached.revision == revision && !listening {
            return Ok(cached.verdict != VERDICT_DENY);
        }
    }
    let Ok(pkt) = packet::parse(ctx) else {
        return Ok(true);
    };
    // SAFETY: the context's skb pointer is valid for the whole program.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let ancestor = |level: u16| {
        // SAFETY: as above; the helper reads the skb's socket's cgroup.
        unsafe { bpf_skb_ancestor_cgroup_id(ctx.skb.skb, i32::from(level)) }
    };
    let Some(local) = maps::local_identity(cgroup_id, &settings, ancestor) else {
        return Ok(true);
    };
    // SAFETY: as above; bpf_get_socket_cookie accepts an skb.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast::<c_void>()) };
    let (remote, remote_port, local_port) = if hook_dir == DIR_EGRESS {
        (pkt.dst, pkt.dst_port, pkt.src_port)
    } else {
        (pkt.src, pkt.src_port, pkt.dst_port)
    };
    let view = View {
        local,
        revision,
        cgroup_id,
        cookie,
        remote,
        remote_port,
        local_port,
        hook_dir,
    };
    if pkt.protocol == PROTO_TCP {
        if hook_dir == DIR_INGRESS && pkt.syn {
            return Ok(syn(&view, &pkt, sk));
        }
        return Ok(tcp(&view, sk, slot));
    }
    Ok(datagram(&view, &pkt, slot))
}

/// The packet's full socket, or null.
#[inline(always)]
fn full_socket(ctx: &SkBuffContext) -> *mut bpf_sock {
    // SAFETY: reading `sk` from the skb context; the kernel checks for null below.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: `sk` is a non-null socket pointer from the context.
    unsafe { bpf_sk_fullsock(sk) }
}

/// Follows a valid cached decision of the current revision; decides again (and stores) one of
/// an older revision. `None` when the slot holds no decision.
#[inline(always)]
fn follow_or_refresh(view: &View, slot: *mut SockDecision, protocol: u8) -> Option<bool> {
    // SAFETY: a non-null storage pointer of this socket; copied out at once.
    let cached = unsafe { *slot };
    if cached.flags & SOCK_DECISION_VALID == 0 {
        return None;
    }
    if cached.revision == view.revision {
        return Some(cached.verdict != VERDICT_DENY);
    }
    let d = decide(
        view.local,
        &view.remote,
        cached.direction,
        protocol,
        view.server_port(cached.direction),
    );
    store(slot, view.revision, cached.direction, &d);
    Some(d.passes())
}

#[inline(always)]
fn store(slot: *mut SockDecision, revision: u64, direction: u8, d: &Decision) {
    // SAFETY: a non-null storage pointer of this socket.
    unsafe {
        *slot = SockDecision {
            revision,
            listener_cookie: 0,
            rule_id: d.rule_id,
            verdict: d.verdict,
            reason: d.reason,
            direction,
            flags: SOCK_DECISION_VALID,
        };
    }
}

/// A TCP SYN at ingress: a new inbound connection attempt.
#[inline(always)]
fn syn(view: &View, pkt: &Packet, sk: *mut bpf_sock) -> bool {
    mark_passive(sk, view.cookie);
    let key = flow_key(view, PROTO_TCP, view.remote_port);
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: the value is copied out at once.
    let known = unsafe { FLOWS.get(key) }.copied();
    if let Some(f) = known
        && f.revision == view.revision
        && f.syn_seq == pkt.seq
        && now.wrapping_sub(f.seen_ns) < SYN_RETRANSMIT_WINDOW_NS
    {
        return f.verdict != VERDICT_DENY;
    }
    let d = decide_at(
        now,
        view.local,
        &view.remote,
        DIR_INGRESS,
        PROTO_TCP,
        view.local_port,
    );
    record_flow(&key, view.revision, now, DIR_INGRESS, &d, pkt.seq);
    flow_event(view, pkt, DIR_INGRESS, &d);
    d.passes()
}

/// Any other TCP packet; `slot` is the socket's storage if it exists already.
#[inline(always)]
fn tcp(view: &View, sk: *mut bpf_sock, slot: *mut SockDecision) -> bool {
    if sk.is_null() {
        return passive(view);
    }
    // SAFETY: a full socket; `state` is a readable field.
    let state = unsafe { (*sk).state };
    if state == TCP_LISTEN {
        mark_passive(sk, view.cookie);
        return handshake(view);
    }
    let slot = if slot.is_null() {
        maps::sock_storage(sk, true)
    } else {
        slot
    };
    if slot.is_null() {
        return passive(view);
    }
    if let Some(pass) = follow_or_refresh(view, slot, PROTO_TCP) {
        return pass;
    }
    // SAFETY: a non-null storage pointer of this socket; copied out at once.
    let marks = unsafe { *slot };
    if marks.flags & SOCK_DECISION_PASSIVE != 0
        && let Some(pass) = follow_syn(view, slot, marks.listener_cookie)
    {
        return pass;
    }
    let (direction, d) = if marks.flags & SOCK_DECISION_PASSIVE != 0 {
        let d = decide(
            view.local,
            &view.remote,
            DIR_INGRESS,
            PROTO_TCP,
            view.local_port,
        );
        (DIR_INGRESS, d)
    } else {
        unknown_orientation(view)
    };
    store(slot, view.revision, direction, &d);
    d.passes()
}

/// A connected TCP socket with neither a connect-time decision nor the passive mark existed
/// before the programs were attached: its orientation is unknown. It passes when either
/// orientation allows it (egress first), and keeps the orientation that did.
#[inline(always)]
fn unknown_orientation(view: &View) -> (u8, Decision) {
    let egress = decide(
        view.local,
        &view.remote,
        DIR_EGRESS,
        PROTO_TCP,
        view.remote_port,
    );
    if egress.passes() {
        return (DIR_EGRESS, egress);
    }
    let ingress = decide(
        view.local,
        &view.remote,
        DIR_INGRESS,
        PROTO_TCP,
        view.local_port,
    );
    if ingress.passes() {
        return (DIR_INGRESS, ingress);
    }
    (DIR_EGRESS, egress)
}

/// An accepted socket's first packet: the decision its SYN recorded in `FLOWS` under the
/// listener's cookie (same listener, remote address and port, current revision), cached as the
/// socket's own. `None` when there is no such entry (it was evicted, or the revision changed
/// since the SYN): the caller decides.
#[inline(always)]
fn follow_syn(view: &View, slot: *mut SockDecision, listener_cookie: u64) -> Option<bool> {
    if listener_cookie == 0 {
        return None;
    }
    let key = FlowKey {
        socket_cookie: listener_cookie,
        remote_addr: view.remote,
        remote_port: view.remote_port,
        protocol: PROTO_TCP,
        _pad: [0; 5],
    };
    // SAFETY: the value is copied out at once.
    let f = unsafe { FLOWS.get(key) }.copied()?;
    if f.revision != view.revision || f.direction != DIR_INGRESS {
        return None;
    }
    // SAFETY: a non-null storage pointer of this socket.
    unsafe {
        *slot = SockDecision {
            revision: view.revision,
            listener_cookie: 0,
            rule_id: f.rule_id,
            verdict: f.verdict,
            reason: f.reason,
            direction: DIR_INGRESS,
            flags: SOCK_DECISION_VALID,
        };
    }
    Some(f.verdict != VERDICT_DENY)
}

/// Marks a listener passive and records its cookie; `BPF_F_CLONE` copies both into the sockets
/// it accepts.
#[inline(always)]
fn mark_passive(sk: *mut bpf_sock, cookie: u64) {
    let slot = maps::sock_storage(sk, true);
    if !slot.is_null() {
        // SAFETY: a non-null storage pointer of this socket.
        unsafe {
            (*slot).flags |= SOCK_DECISION_PASSIVE;
            (*slot).listener_cookie = cookie;
        }
    }
}

/// A listener's handshake packet (SYN-ACK out, ACK in): the decision its SYN recorded in
/// `FLOWS` under the current revision (the same inputs: listener, remote address, local port),
/// else a silent ingress-oriented decision.
#[inline(always)]
fn handshake(view: &View) -> bool {
    let key = flow_key(view, PROTO_TCP, view.remote_port);
    // SAFETY: the value is copied out at once.
    let known = unsafe { FLOWS.get(key) }.copied();
    if let Some(f) = known
        && f.revision == view.revision
        && f.direction == DIR_INGRESS
    {
        return f.verdict != VERDICT_DENY;
    }
    passive(view)
}

/// A silent ingress-oriented decision (listener handshake packets, non-full sockets).
#[inline(always)]
fn passive(view: &View) -> bool {
    decide(
        view.local,
        &view.remote,
        DIR_INGRESS,
        PROTO_TCP,
        view.local_port,
    )
    .passes()
}

/// UDP, SCTP and port-less protocols; `slot` is the socket's storage if it exists.
#[inline(always)]
fn datagram(view: &View, pkt: &Packet, slot: *mut SockDecision) -> bool {
    if !slot.is_null()
        && let Some(pass) = follow_or_refresh(view, slot, pkt.protocol)
    {
        return pass;
    }
    let has_ports = matches!(pkt.protocol, PROTO_UDP | PROTO_SCTP);
    let key = flow_key(
        view,
        pkt.protocol,
        if has_ports { view.remote_port } else { 0 },
    );
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: the value is copied out at once.
    let known = unsafe { FLOWS.get(key) }.copied();
    let (direction, fresh) = match known {
        Some(f) if f.revision == view.revision => return f.verdict != VERDICT_DENY,
        Some(f) => (f.direction, false),
        None => (view.hook_dir, true),
    };
    let d = decide_at(
        now,
        view.local,
        &view.remote,
        direction,
        pkt.protocol,
        view.server_port(direction),
    );
    record_flow(&key, view.revision, now, direction, &d, 0);
    if fresh {
        flow_event(view, pkt, direction, &d);
    }
    d.passes()
}

#[inline(always)]
fn flow_key(view: &View, protocol: u8, remote_port: u16) -> FlowKey {
    FlowKey {
        socket_cookie: view.cookie,
        remote_addr: view.remote,
        remote_port,
        protocol,
        _pad: [0; 5],
    }
}

#[inline(always)]
fn record_flow(key: &FlowKey, revision: u64, now: u64, direction: u8, d: &Decision, syn_seq: u32) {
    let value = FlowValue {
        revision,
        seen_ns: now,
        rule_id: d.rule_id,
        verdict: d.verdict,
        reason: d.reason,
        direction,
        flags: 0,
        syn_seq,
        _pad: [0; 4],
    };
    let _ = FLOWS.insert(key, value, 0);
}

/// The event of a new flow seen by an skb program; addresses and ports as in the packet.
#[inline(always)]
fn flow_event(view: &View, pkt: &Packet, direction: u8, d: &Decision) {
    emit(&VerdictEvent {
        timestamp_ns: d.at_ns,
        cgroup_id: view.cgroup_id,
        socket_cookie: view.cookie,
        revision: view.revision,
        src_addr: pkt.src,
        dst_addr: pkt.dst,
        src_port: pkt.src_port,
        dst_port: pkt.dst_port,
        local_identity: view.local,
        remote_identity: d.peer_identity,
        rule_id: d.rule_id,
        direction,
        hook: if view.hook_dir == DIR_EGRESS {
            HOOK_SKB_EGRESS
        } else {
            HOOK_SKB_INGRESS
        },
        protocol: pkt.protocol,
        verdict: d.verdict,
        reason: d.reason,
        family: pkt.family,
        _pad: [0; 10],
    });
}
