//! Every bpffs path Bulkhead pins, in one place (bpfman's `directories` module is the model), so
//! that a restarted process finds its maps, programs and links with `from_pin`.
//!
//! Layout under the root (default [`DEFAULT_ROOT`]):
//! `maps/<MAP>`, `programs/<program>`, `links/<program>`. One such tree is a *generation*: the
//! pins of one eBPF object, named by its `maps/META`. During an upgrade a second generation lives
//! in the [`swap`] directory, a sibling of the root (see `upgrade.rs`).

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

/// Default root of Bulkhead's pins.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/bulkhead";
/// Where bpffs is mounted when it is not yet.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

pub const MAPS_DIR: &str = "maps";
pub const PROGRAMS_DIR: &str = "programs";
pub const LINKS_DIR: &str = "links";

/// Map names, as declared in `enforcer-ebpf/src/maps.rs`.
pub const MAP_WORKLOADS: &str = "WORKLOADS";
pub const MAP_ADDRESSES: &str = "ADDRESSES";
pub const MAP_POLICY: &str = "POLICY";
pub const MAP_DEFAULTS: &str = "DEFAULTS";
pub const MAP_CONFIG: &str = "CONFIG";
pub const MAP_FLOWS: &str = "FLOWS";
pub const MAP_EVENTS: &str = "EVENTS";
pub const MAP_EVENT_LOSSES: &str = "EVENT_LOSSES";
pub const MAP_SOCK_DECISIONS: &str = "SOCK_DECISIONS";
pub const MAP_META: &str = "META";

/// Every map the object declares; all are pinned.
pub const ALL_MAPS: [&str; 10] = [
    MAP_WORKLOADS,
    MAP_ADDRESSES,
    MAP_POLICY,
    MAP_DEFAULTS,
    MAP_CONFIG,
    MAP_FLOWS,
    MAP_EVENTS,
    MAP_EVENT_LOSSES,
    MAP_SOCK_DECISIONS,
    MAP_META,
];

/// Suffix of the [`swap`] directory's name (bpffs refuses names with a dot: EPERM).
pub const SWAP_SUFFIX: &str = "-swap";

/// The pin of map `name`.
pub fn map(root: &Path, name: &str) -> PathBuf {
    root.join(MAPS_DIR).join(name)
}

/// The pin of program `name`.
pub fn program(root: &Path, name: &str) -> PathBuf {
    root.join(PROGRAMS_DIR).join(name)
}

/// The pin of the cgroup link of program `name`.
pub fn link(root: &Path, name: &str) -> PathBuf {
    root.join(LINKS_DIR).join(name)
}

/// The second generation's directory: `<root>-swap`, a sibling of the root on the same bpffs, so
/// that the two can be exchanged atomically. It holds the staged generation during an upgrade
/// and the retired one between the exchange and its removal.
pub fn swap(root: &Path) -> PathBuf {
    let mut name = root
        .file_name()
        .map(OsString::from)
        .unwrap_or_else(|| OsString::from("bulkhead"));
    name.push(SWAP_SUFFIX);
    root.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_is_a_sibling_of_the_root() {
        assert_eq!(
            swap(Path::new(DEFAULT_ROOT)),
            Path::new("/sys/fs/bpf/bulkhead-swap")
        );
        assert_eq!(
            swap(Path::new("/sys/fs/bpf/t-1/")),
            Path::new("/sys/fs/bpf/t-1-swap")
        );
    }
}
