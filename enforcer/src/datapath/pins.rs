//! Every bpffs path Bulkhead pins, in one place (bpfman's `directories` module is the model), so
//! that a restarted process finds its maps, programs and links with `from_pin`.
//!
//! Layout under the root (default [`DEFAULT_ROOT`]):
//! `maps/<MAP>`, `programs/<program>`, `links/<program>`.

use std::path::{Path, PathBuf};

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

/// Every map the object declares; all are pinned.
pub const ALL_MAPS: [&str; 9] = [
    MAP_WORKLOADS,
    MAP_ADDRESSES,
    MAP_POLICY,
    MAP_DEFAULTS,
    MAP_CONFIG,
    MAP_FLOWS,
    MAP_EVENTS,
    MAP_EVENT_LOSSES,
    MAP_SOCK_DECISIONS,
];

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
