//! The embedded kernel object, its identity (what `META` records), and the list of its programs
//! with their attach points.

use std::sync::LazyLock;

use aya::programs::CgroupSkbAttachType;
use enforcer_common::{META_LAYOUT_VERSION, ObjectMeta};

/// The eBPF object built by `build.rs` (empty when the build was skipped).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bulkhead"));

/// The `META` value of a generation loaded from [`OBJECT`] by this binary.
pub fn meta() -> ObjectMeta {
    static META: LazyLock<ObjectMeta> = LazyLock::new(|| meta_of(OBJECT));
    *META
}

/// The `META` value naming the object `bytes`.
pub fn meta_of(bytes: &[u8]) -> ObjectMeta {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut object_sha256 = [0; 32];
    object_sha256.copy_from_slice(digest.as_ref());
    ObjectMeta {
        object_sha256,
        layout_version: META_LAYOUT_VERSION,
        _pad: [0; 4],
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_is_the_sha256_of_the_object() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        let abc = meta_of(b"abc");
        assert_eq!(abc.object_sha256[..4], [0xba, 0x78, 0x16, 0xbf], "{abc:?}");
        assert_eq!(abc.object_sha256[28..], [0xf2, 0x00, 0x15, 0xad]);
        assert_eq!(abc.layout_version, META_LAYOUT_VERSION);
        assert_ne!(meta_of(b"abd"), abc);
        assert_eq!(meta(), meta_of(OBJECT));
    }
}
