//! Compiled policy state -> the desired contents of the kernel maps: cgroup paths become cgroup
//! ids, wall-clock validity windows become boot-clock instants.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bulkhead_policy::model::Workload;
use bulkhead_policy::{CompiledState, Error, Inventory, WorkloadRef};
use enforcer_common::{PolicyValue, WorkloadValue, identity};

use crate::datapath::{BootClock, DesiredMaps, cgroup_id};

/// The desired maps, and the workloads whose cgroup does not exist (yet).
pub struct Translation {
    pub maps: DesiredMaps,
    /// Cgroup id -> workload, for attributing events.
    pub by_cgroup: BTreeMap<u64, WorkloadRef>,
    /// Workloads with a `cgroup` that could not be found.
    pub missing: Vec<(WorkloadRef, PathBuf)>,

    /// Every workload cgroup directory and the id it had (`None`: missing): the agent checks
    /// them every second and applies again when one appears, disappears or is made anew.
    pub cgroups: CgroupIds,
}

/// Workload cgroup directories and the ids they resolved to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupIds(BTreeMap<PathBuf, Option<u64>>);

impl CgroupIds {
    /// The directories whose id is not the recorded one any more, with the recorded id and the
    /// current one: a cgroup created, removed, or removed and made again (a restarted systemd
    /// service or container gets a new directory, so a new id, at the same path).
    ///
    /// Records the current ids: a change is reported once, also when the apply it causes fails
    /// (that failure is logged, and the next change or input edit tries again).
    pub fn take_changes(&mut self) -> Vec<(PathBuf, Option<u64>, Option<u64>)> {
        let mut changes = Vec::new();
        for (dir, recorded) in &mut self.0 {
            let now = cgroup_id(dir).ok();
            if now != *recorded {
                changes.push((dir.clone(), *recorded, now));
                *recorded = now;
            }
        }
        changes
    }
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

/// Refuses an inventory (read from `file`) in which two workloads name the same cgroup directory
/// spelled differently (relative and full path, a trailing `/`, a symlink): the inventory's own
/// check compares the spellings, this one the directories that exist.
pub fn check_cgroups(inventory: &Inventory, file: &Path, cgroup_root: &Path) -> Result<(), Error> {
    let mut seen: BTreeMap<u64, &Workload> = BTreeMap::new();
    for (i, w) in inventory.workloads.iter().enumerate() {
        let Some(cgroup) = &w.cgroup else {
            continue;
        };
        let dir = cgroup_dir(cgroup_root, cgroup);
        let Ok(id) = cgroup_id(&dir) else {
            continue;
        };
        if let Some(first) = seen.insert(id, w) {
            return Err(Error::Invalid {
                file: file.display().to_string(),
                object: format!("Workload {}/{}", w.namespace, w.name),
                field: format!("workloads[{i}].cgroup"),
                message: format!(
                    "{} is the cgroup of {}/{} too (the same directory, spelled differently)",
                    dir.display(),
                    first.namespace,
                    first.name
                ),
            });
        }
    }
    Ok(())
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
    let mut cgroups = BTreeMap::new();
    for (workload, compiled) in &state.workloads {
        let Some(cgroup) = &compiled.cgroup else {
            continue;
        };
        let dir = cgroup_dir(cgroup_root, cgroup);
        let id = cgroup_id(&dir).ok();
        cgroups.insert(dir.clone(), id);
        match id {
            Some(id) => {
                maps.workloads.insert(
                    id,
                    WorkloadValue {
                        identity: compiled.identity,
                        flags: 0,
                    },
                );
                by_cgroup.insert(id, workload.clone());
            }
            None => missing.push((workload.clone(), dir)),
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
        cgroups: CgroupIds(cgroups),
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

    #[test]
    fn two_spellings_of_one_cgroup_are_refused() {
        let root = std::env::temp_dir().join(format!("bulkhead-cg-{}", std::process::id()));
        std::fs::create_dir_all(root.join("system.slice/a.service")).unwrap();
        std::fs::create_dir_all(root.join("system.slice/b.service")).unwrap();
        let inventory = |b_cgroup: &str| {
            let yaml = format!(
                "namespaces: [{{name: x}}]\nworkloads:\n\
                 - {{namespace: x, name: a, cgroup: /system.slice/a.service}}\n\
                 - {{namespace: x, name: b, cgroup: \"{b_cgroup}\"}}\n"
            );
            Inventory::from_yaml_str("inventory.yaml", &yaml).unwrap()
        };
        let file = Path::new("/etc/bulkhead/inventory.yaml");
        let distinct = inventory("/system.slice/b.service");
        assert!(check_cgroups(&distinct, file, &root).is_ok());
        let full = format!("{}/system.slice/a.service/", root.display());
        let error = check_cgroups(&inventory(&full), file, &root).expect_err("same cgroup");
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(
            error.to_string(),
            format!(
                "/etc/bulkhead/inventory.yaml: Workload x/b: workloads[1].cgroup: {full} is the \
                 cgroup of x/a too (the same directory, spelled differently)"
            )
        );
    }
}
