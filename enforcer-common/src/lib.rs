//! Every `#[repr(C)]` type that crosses the kernel/user boundary: map keys, map values and
//! ring-buffer events, plus the constants both sides agree on.
//!
//! Layout rules: every field is explicitly sized, there are no padding holes (flags are `u8`/`u32`,
//! never `bool`), and each struct's size is asserted at compile time, so the kernel and user space
//! can never disagree on a layout. The policy compiler emits these types directly: what the
//! evaluator reads is byte for byte what the kernel maps hold.
#![no_std]

/// Traffic direction, seen from the local workload.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// IP protocol numbers. `PROTO_OTHER` stands for every protocol without ports (ICMP, ...): only
/// rules that allow or deny all ports match it.
pub const PROTO_OTHER: u8 = 0;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// Numeric security identities.
pub mod identity {
    /// The wildcard peer in policy keys: "any peer not matched by a more specific entry".
    pub const ANY: u32 = 0;
    /// The host itself (its own network namespace, outside every workload).
    pub const HOST: u32 = 1;
    /// Any address outside the inventory/cluster and outside every policy CIDR.
    pub const WORLD: u32 = 2;
    /// A local process in no known workload cgroup.
    pub const UNMANAGED: u32 = 3;
    /// Workload identities (label set + namespace labels + service account), and composite
    /// identities (a workload address that also lies inside a policy CIDR), start here.
    pub const FIRST_WORKLOAD: u32 = 256;
    /// CIDR identities (one per distinct policy CIDR) start here.
    pub const FIRST_CIDR: u32 = 1 << 24;
}

/// Verdicts, in policy map values, socket storage and events.
pub const VERDICT_ALLOW: u8 = 1;
pub const VERDICT_DENY: u8 = 2;
/// Traffic flows, but an audit-mode policy would have denied it.
pub const VERDICT_AUDIT: u8 = 3;

/// Why a verdict was reached.
pub const REASON_ALLOWED_BY_RULE: u8 = 1;
pub const REASON_DENIED_BY_RULE: u8 = 2;
/// The local workload is isolated in this direction and no rule matched.
pub const REASON_DEFAULT_DENY: u8 = 3;
/// No policy isolates the local workload in this direction.
pub const REASON_NOT_ISOLATED: u8 = 4;

/// Enforcement points (hooks) that emit events.
pub const HOOK_CONNECT: u8 = 1;
pub const HOOK_SENDMSG: u8 = 2;
pub const HOOK_SKB_EGRESS: u8 = 3;
pub const HOOK_SKB_INGRESS: u8 = 4;

/// Address families in events.
pub const FAMILY_INET: u8 = 4;
pub const FAMILY_INET6: u8 = 6;

/// Rule id 0: no rule (a default decided).
pub const RULE_NONE: u32 = 0;

/// Timestamps in map values are `bpf_ktime_get_boot_ns()` nanoseconds. 0 in `not_before` and
/// `u64::MAX` in `expires_at` mean unbounded.
pub const TIME_UNBOUNDED_END: u64 = u64::MAX;

/// Key of the policy LPM trie (`POLICY`). The first [`POLICY_KEY_FIXED_BITS`] bits (local
/// identity, peer identity, direction, protocol) are always matched in full; the port (big
/// endian) by its top `prefix_len - POLICY_KEY_FIXED_BITS` bits, so a port range is stored as at
/// most 30 prefix-aligned blocks. Identities are stored in native byte order: they are always
/// matched in full, so their byte order is irrelevant to the trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    pub local_identity: u32,
    pub peer_identity: u32,
    pub direction: u8,
    pub protocol: u8,
    /// Destination (server) port of the connection, big endian.
    pub port_be: [u8; 2],
}
pub const POLICY_KEY_FIXED_BITS: u32 = 80;
pub const POLICY_KEY_FULL_BITS: u32 = 96;

/// Value of the policy trie and of the isolation defaults map: a fully resolved decision.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    /// `VERDICT_*`.
    pub verdict: u8,
    /// `REASON_*`; for `VERDICT_AUDIT`, the reason the audit-mode policy would have denied.
    pub reason: u8,
    pub _pad: [u8; 2],
    /// The deciding rule (for `VERDICT_AUDIT`: the audit-mode rule or policy that would deny).
    pub rule_id: u32,
    /// The entry exists only from this instant (boot-time ns; 0 = always).
    pub not_before: u64,
    /// The entry stops existing at this instant (boot-time ns; `u64::MAX` = never). The kernel
    /// treats an entry outside its window as absent.
    pub expires_at: u64,
}

/// Key of the isolation defaults map (`DEFAULTS`): what decides when no policy entry matches.
/// Absent key: the workload is not isolated in that direction (allow, `REASON_NOT_ISOLATED`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DefaultKey {
    pub local_identity: u32,
    pub direction: u8,
    pub _pad: [u8; 3],
}

/// Value of the cgroup map (`WORKLOADS`, key: cgroup id `u64`, the cgroup directory's inode).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadValue {
    pub identity: u32,
    pub flags: u32,
}

/// Key data of the address LPM trie (`ADDRESSES`): IPv6, with IPv4 as IPv4-mapped (`::ffff:a.b.c.d`).
/// Value: the peer identity (`u32`). A miss means `identity::WORLD`.
pub type AddrKey = [u8; 16];

/// Index 0 of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// Policy revision of the maps' content; decisions cached per socket carry it and are
    /// re-made when it changes.
    pub revision: u64,
    /// Identity given to processes in no known workload cgroup; `identity::UNMANAGED` = not enforced.
    pub unmanaged_identity: u32,
    /// Cgroup levels (absolute: the hierarchy's root is 0) at which the ancestors of a cgroup
    /// that is not in `WORKLOADS` are looked up, deepest first, the first hit deciding: a pod's
    /// cgroup then covers every container cgroup below it from the moment it exists. Both 0:
    /// only the cgroup itself is looked up. At most [`MAX_ANCESTOR_LEVELS`] levels.
    pub ancestor_from: u16,
    pub ancestor_to: u16,
    /// Boot-time ns at which the next validity window of the maps' entries opens or closes
    /// (written by every apply); `u64::MAX`: none. From that instant the programs see the revision
    /// with [`REVISION_PAST_CHANGE_BIT`] set, so every decision cached per socket or flow is made
    /// again once, against the entries' windows at that time: a grant expires on established
    /// connections too, and a deny that starts applies to them, with no agent running.
    pub valid_until: u64,
}

/// Set in the revision the programs work with once `Config::valid_until` has passed (never in a
/// revision written to `CONFIG`).
pub const REVISION_PAST_CHANGE_BIT: u64 = 1 << 62;

/// How many ancestor levels `Config::ancestor_from..=ancestor_to` may span.
pub const MAX_ANCESTOR_LEVELS: u16 = 4;

/// Per-socket cached decision (socket storage).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockDecision {
    pub revision: u64,
    /// A listener's own socket cookie, set with [`SOCK_DECISION_PASSIVE`]: the key of the
    /// `FLOWS` entries its SYNs record. Cloned into the sockets it accepts, whose first packet
    /// then follows the decision their SYN got instead of deciding again. 0 otherwise.
    pub listener_cookie: u64,
    pub rule_id: u32,
    pub verdict: u8,
    pub reason: u8,
    /// Direction the connection was decided in (`DIR_*`).
    pub direction: u8,
    pub flags: u8,
}

/// One verdict on a new connection (TCP connect/SYN, first UDP datagram of a flow), written to
/// the `EVENTS` ring buffer. Addresses are IPv6 or IPv4-mapped; ports in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VerdictEvent {
    pub timestamp_ns: u64,
    pub cgroup_id: u64,
    pub socket_cookie: u64,
    pub revision: u64,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub local_identity: u32,
    pub remote_identity: u32,
    pub rule_id: u32,
    pub direction: u8,
    pub hook: u8,
    pub protocol: u8,
    pub verdict: u8,
    pub reason: u8,
    pub family: u8,
    pub _pad: [u8; 10],
}

/// Key of the per-flow table (`FLOWS`, LRU hash) for traffic that no socket-level decision covers:
/// unconnected UDP, listener sockets (TCP SYN de-duplication) and protocols without ports. One
/// entry per (socket, remote address, remote port, protocol): the first packet of a flow writes
/// the event, later packets (and replies, through the same key) follow the recorded decision.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub socket_cookie: u64,
    /// Remote address, IPv6 or IPv4-mapped.
    pub remote_addr: [u8; 16],
    /// Remote port, host byte order (0 for protocols without ports).
    pub remote_port: u16,
    /// `PROTO_*`.
    pub protocol: u8,
    pub _pad: [u8; 5],
}

/// Value of the per-flow table: the decision and its orientation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowValue {
    pub revision: u64,
    /// Boot-time ns of the last packet that created or refreshed the entry.
    pub seen_ns: u64,
    pub rule_id: u32,
    pub verdict: u8,
    pub reason: u8,
    /// Direction the flow was decided in (`DIR_*`).
    pub direction: u8,
    pub flags: u8,
    /// TCP SYN entries: the initial sequence number of the attempt the entry recorded. A SYN
    /// with the same sequence number is a retransmission of it; another one is a new attempt
    /// from a reused client port. 0 for other entries.
    pub syn_seq: u32,
    pub _pad: [u8; 4],
}

/// `SockDecision::flags`: the entry holds a decision (a zeroed, freshly created entry does not).
pub const SOCK_DECISION_VALID: u8 = 1;
/// `SockDecision::flags`: a listening socket, or a socket accepted from one (the storage is
/// cloned into accepted children): its connections are ingress-oriented.
pub const SOCK_DECISION_PASSIVE: u8 = 2;

const _: () = {
    assert!(core::mem::size_of::<PolicyKey>() == 12);
    assert!(core::mem::size_of::<PolicyValue>() == 24);
    assert!(core::mem::size_of::<DefaultKey>() == 8);
    assert!(core::mem::size_of::<WorkloadValue>() == 8);
    assert!(core::mem::size_of::<Config>() == 24);
    assert!(core::mem::size_of::<SockDecision>() == 24);
    assert!(core::mem::size_of::<VerdictEvent>() == 96);
    assert!(core::mem::size_of::<FlowKey>() == 32);
    assert!(core::mem::size_of::<FlowValue>() == 32);
};

#[cfg(feature = "user")]
mod pod {
    #![allow(
        unsafe_code,
        reason = "aya::Pod is an unsafe marker trait; every type is repr(C) without padding"
    )]
    use super::*;
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for PolicyValue {}
    unsafe impl aya::Pod for DefaultKey {}
    unsafe impl aya::Pod for WorkloadValue {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for SockDecision {}
    unsafe impl aya::Pod for VerdictEvent {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for ObjectMeta {}
}

/// Version of the bpffs pin layout and of [`ObjectMeta`] itself: bumped when either changes, so
/// that an enforcer never adopts pins it would misread.
pub const META_LAYOUT_VERSION: u32 = 1;

/// Index 0 of the `META` array: which eBPF object a pinned generation was loaded from. Written
/// by user space at install, never read by the programs. An enforcer adopts a pinned generation
/// only when both fields equal its own; otherwise it upgrades it (see the enforcer's
/// `datapath::upgrade`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObjectMeta {
    /// SHA-256 of the embedded eBPF object's bytes.
    pub object_sha256: [u8; 32],
    /// The writer's [`META_LAYOUT_VERSION`].
    pub layout_version: u32,
    pub _pad: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<ObjectMeta>() == 40);
