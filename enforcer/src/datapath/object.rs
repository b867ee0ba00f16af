//! The embedded kernel object and the list of its programs with their attach points.

use aya::programs::CgroupSkbAttachType;

/// The eBPF object built by `build.rs` (empty when the build was skipped).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bulkhead"));

/// How a program attaches to the cgroup.
#[derive(Clone, Copy, Debug)]
pub enum Hook {
    /// `cgroup_skb` in the given direction.
    Skb(CgroupSkbAttachType),
    /// `cgroup_sock_addr`; the attach type comes from the ELF section (`cgroup/connect4`, ...).
    SockAddr,
}

/// Every program of the object, by function name.
pub const PROGRAMS: [(&str, Hook); 6] = [
    ("connect4", Hook::SockAddr),
    ("connect6", Hook::SockAddr),
    ("sendmsg4", Hook::SockAddr),
    ("sendmsg6", Hook::SockAddr),
    ("egress", Hook::Skb(CgroupSkbAttachType::Egress)),
    ("ingress", Hook::Skb(CgroupSkbAttachType::Ingress)),
];
