//! Compiled policy state -> the desired contents of the kernel maps: cgroup paths become cgroup
//! ids, wall-clock validity windows become boot-clock instants.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bulkhead_policy::{CompiledState, WorkloadRef};
use enforcer_common::{PolicyValue, WorkloadValue, identity};

use crate::datapath::{BootClock, DesiredMaps, cgroup_id};

/// The desired maps, and the workloads whose cgroup does not exist (yet).
pub struct Translation {
    pub maps: DesiredMaps,
    /// Cgroup id -> workload, for attributing events.
    pub by_cgroup: BTreeMap<u64, WorkloadRef>,
    /// Workloads with a `cgroup` that could not be found: re-checked every second.
    pub missing: Vec<(WorkloadRef, PathBuf)>,
}

/// Where an inventory `cgroup` lives: a path as `/proc/<pid>/cgroup` shows it (relative to the
/// cgroup v2 mount, e.g. `/system.slice/nginx.service`), or a full path below the mount.
pub fn cgroup_dir(cgroup_root: &Path, cgroup: &str) -> PathBuf {
    let path = Path::new(cgroup);
    if path.starts_with(cgroup_root) {
        path.to_path_buf()
    } else {
        cgroup_root.join(cgroup.trim_start_matches('/'))
    }
}

/// Translates `state` for revision `revision`.
pub fn translate(
    state: &CompiledState,
    revision: u64,
    cgroup_root: &Path,
    clock: &BootClock,
) -> Translation {
    let mut maps = DesiredMaps {
        revision,
        unmanaged_identity: identity::UNMANAGED,
        ..DesiredMaps::default()
    };
    let mut by_cgroup = BTreeMap::new();
    let mut missing = Vec::new();
    for (workload, compiled) in &state.workloads {
        let Some(cgroup) = &compiled.cgroup else {
            continue;
        };
        let dir = cgroup_dir(cgroup_root, cgroup);
        match cgroup_id(&dir) {
            Ok(id) => {
                maps.workloads.insert(
                    id,
                    WorkloadValue {
                        identity: compiled.identity,
                        flags: 0,
                    },
                );
                by_cgroup.insert(id, workload.clone());
            }
            Err(_) => missing.push((workload.clone(), dir)),
        }
    }
    maps.addresses = state
        .addresses
        .iter()
        .map(|(prefix, id)| ((prefix.addr, prefix.prefix_len), *id))
        .collect();
    maps.policy = state
        .policy
        .iter()
        .map(|(key, value)| ((key.key, key.prefix_len), to_boot(value, clock)))
        .collect();
    maps.defaults = state
        .defaults
        .iter()
        .map(|(key, value)| (*key, to_boot(value, clock)))
        .collect();
    Translation {
        maps,
        by_cgroup,
        missing,
    }
}

fn to_boot(value: &PolicyValue, clock: &BootClock) -> PolicyValue {
    PolicyValue {
        not_before: clock.to_boot_ns(value.not_before),
        expires_at: clock.to_boot_ns(value.expires_at),
        ..*value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_are_relative_to_the_mount_unless_already_below_it() {
        let root = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(
            cgroup_dir(root, "/system.slice/nginx.service"),
            Path::new("/sys/fs/cgroup/unified/system.slice/nginx.service")
        );
        assert_eq!(
            cgroup_dir(root, "bulkhead/x-a"),
            Path::new("/sys/fs/cgroup/unified/bulkhead/x-a")
        );
        assert_eq!(
            cgroup_dir(root, "/sys/fs/cgroup/unified/bulkhead/x-a"),
            Path::new("/sys/fs/cgroup/unified/bulkhead/x-a")
        );
    }

    #[test]
    fn windows_move_to_the_boot_clock_and_unbounded_stays_unbounded() {
        let clock = BootClock {
            offset_ns: 1_000_000,
        };
        let value = PolicyValue {
            verdict: 1,
            reason: 1,
            _pad: [0; 2],
            rule_id: 9,
            not_before: 5_000_000,
            expires_at: u64::MAX,
        };
        let boot = to_boot(&value, &clock);
        assert_eq!(boot.not_before, 4_000_000);
        assert_eq!(boot.expires_at, u64::MAX);
        assert_eq!(boot.rule_id, 9);
    }
}
