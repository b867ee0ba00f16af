//! Pod UID -> cgroups, under the kubelet's hierarchy, for both cgroup drivers and every QoS
//! class:
//!
//! | driver   | Guaranteed                              | Burstable / BestEffort                                                  |
//! |----------|-----------------------------------------|-------------------------------------------------------------------------|
//! | systemd  | `kubepods.slice/kubepods-pod<u>.slice`  | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<u>.slice` |
//! | cgroupfs | `kubepods/pod<uid>`                     | `kubepods/burstable/pod<uid>`                                           |
//!
//! (`<u>` is the UID with `-` replaced by `_`, as systemd unit names require; BestEffort is the
//! same as Burstable with `besteffort`.) The programs look `WORKLOADS` up by the cgroup a socket
//! belongs to, which is the leaf (the container's cgroup, e.g. `cri-containerd-<id>.scope`, or
//! `<id>` with cgroupfs), not the pod's: a pod is therefore every cgroup of its subtree, the pod
//! directory included.

use std::fs;
use std::path::{Path, PathBuf};

use crate::datapath::cgroup_id;

use super::PodCgroups;

/// The kubelet's cgroup driver (its `cgroupDriver` setting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// `kubepods.slice/...` (systemd slices).
    Systemd,
    /// `kubepods/...` (plain directories).
    Cgroupfs,
}

impl Driver {
    /// Both drivers, in the order they are tried when not forced.
    pub const ALL: [Driver; 2] = [Driver::Systemd, Driver::Cgroupfs];

    /// The top directory of the kubelet's hierarchy.
    pub fn top(self) -> &'static str {
        match self {
            Driver::Systemd => "kubepods.slice",
            Driver::Cgroupfs => "kubepods",
        }
    }

    /// The pod directory of `uid` for each QoS class (Guaranteed, Burstable, BestEffort),
    /// relative to the hierarchy's root.
    pub fn pod_dirs(self, uid: &str) -> [PathBuf; 3] {
        match self {
            Driver::Systemd => {
                let u = uid.replace('-', "_");
                [
                    PathBuf::from(format!("kubepods.slice/kubepods-pod{u}.slice")),
                    PathBuf::from(format!(
                        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"
                    )),
                    PathBuf::from(format!(
                        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice"
                    )),
                ]
            }
            Driver::Cgroupfs => [
                PathBuf::from(format!("kubepods/pod{uid}")),
                PathBuf::from(format!("kubepods/burstable/pod{uid}")),
                PathBuf::from(format!("kubepods/besteffort/pod{uid}")),
            ],
        }
    }
}

/// The driver whose hierarchy exists under `root` (systemd first), if any.
pub fn detect(root: &Path) -> Option<Driver> {
    Driver::ALL
        .into_iter()
        .find(|d| root.join(d.top()).is_dir())
}

/// Whether `uid` can be a Kubernetes UID (hex digits and dashes): anything else could name a
/// path outside the pod directories and is never looked up.
pub fn valid_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// The kubelet's pod cgroups below `root` (the cgroup v2 mount, or the directory holding
/// `kubepods.slice`/`kubepods`).
#[derive(Clone, Debug)]
pub struct KubeletCgroups {
    root: PathBuf,
    /// `None`: the driver whose layout exists (both are tried).
    forced: Option<Driver>,
    /// The absolute cgroup level of `root`, when known (see [`Self::at_level`]).
    root_level: Option<u16>,
}

impl KubeletCgroups {
    /// Pods under `root`, with the driver forced or detected on each lookup.
    pub fn new(root: PathBuf, forced: Option<Driver>) -> Self {
        Self {
            root,
            forced,
            root_level: None,
        }
    }

    /// Declares `root`'s absolute cgroup level, which places the pod cgroups: two levels below
    /// it for Guaranteed pods (`kubepods.slice/kubepods-pod<u>.slice`, `kubepods/pod<u>`), three
    /// for Burstable and BestEffort ones, with either driver.
    pub fn at_level(mut self, level: u16) -> Self {
        self.root_level = Some(level);
        self
    }

    /// The root of the hierarchy.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The drivers a lookup tries.
    pub fn drivers(&self) -> Vec<Driver> {
        match self.forced {
            Some(d) => vec![d],
            None => Driver::ALL.to_vec(),
        }
    }

    /// The pod's own cgroup directory, if it exists.
    pub fn pod_dir(&self, uid: &str) -> Option<PathBuf> {
        if !valid_uid(uid) {
            return None;
        }
        self.drivers()
            .into_iter()
            .flat_map(|d| d.pod_dirs(uid))
            .map(|rel| self.root.join(rel))
            .find(|dir| dir.is_dir())
    }
}

impl PodCgroups for KubeletCgroups {
    fn pod_levels(&self) -> Option<(u16, u16)> {
        let base = self.root_level?;
        Some((base.checked_add(2)?, base.checked_add(3)?))
    }

    fn cgroup_ids(&self, pod_uid: &str) -> Vec<u64> {
        let Some(dir) = self.pod_dir(pod_uid) else {
            return Vec::new();
        };
        let mut ids = Vec::new();
        subtree_ids(&dir, &mut ids);
        ids
    }
}

/// The cgroup ids of `dir` and of every directory below it (a directory removed meanwhile is
/// skipped).
fn subtree_ids(dir: &Path, ids: &mut Vec<u64>) {
    let Ok(id) = cgroup_id(dir) else {
        return;
    };
    ids.push(id);
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            subtree_ids(&entry.path(), ids);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f3a9c1e-7b2d-4e5f-8a6b-1c2d3e4f5a6b";

    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("bulkhead-pods-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Tree(dir)
        }

        fn mkdir(&self, rel: &str) -> u64 {
            let dir = self.0.join(rel);
            fs::create_dir_all(&dir).unwrap();
            // A cgroup directory holds interface files; they are not cgroups.
            fs::write(dir.join("cgroup.procs"), "").unwrap();
            cgroup_id(&dir).unwrap()
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn sorted(mut ids: Vec<u64>) -> Vec<u64> {
        ids.sort_unstable();
        ids
    }

    #[test]
    fn every_qos_class_of_both_drivers_is_found_with_its_containers() {
        let u = UID.replace('-', "_");
        let cases = [
            (
                Driver::Systemd,
                format!("kubepods.slice/kubepods-pod{u}.slice"),
            ),
            (
                Driver::Systemd,
                format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"),
            ),
            (
                Driver::Systemd,
                format!(
                    "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice"
                ),
            ),
            (Driver::Cgroupfs, format!("kubepods/pod{UID}")),
            (Driver::Cgroupfs, format!("kubepods/burstable/pod{UID}")),
            (Driver::Cgroupfs, format!("kubepods/besteffort/pod{UID}")),
        ];
        for (i, (driver, pod)) in cases.iter().enumerate() {
            let tree = Tree::new(&format!("qos{i}"));
            let pod_id = tree.mkdir(pod);
            let c1 = tree.mkdir(&format!("{pod}/cri-containerd-aaa.scope"));
            let c2 = tree.mkdir(&format!("{pod}/cri-containerd-bbb.scope"));
            // Another pod's cgroup is not this pod's.
            tree.mkdir(&pod.replace("a6b", "a6c"));
            assert_eq!(detect(&tree.0), Some(*driver), "{pod}");
            for forced in [None, Some(*driver)] {
                let pods = KubeletCgroups::new(tree.0.clone(), forced);
                assert_eq!(pods.pod_dir(UID), Some(tree.0.join(pod)), "{pod}");
                assert_eq!(
                    sorted(pods.cgroup_ids(UID)),
                    sorted(vec![pod_id, c1, c2]),
                    "{pod}"
                );
            }
            let other = match driver {
                Driver::Systemd => Driver::Cgroupfs,
                Driver::Cgroupfs => Driver::Systemd,
            };
            let wrong = KubeletCgroups::new(tree.0.clone(), Some(other));
            assert!(wrong.cgroup_ids(UID).is_empty(), "{pod} with {other:?}");
        }
    }

    #[test]
    fn systemd_names_use_underscores_and_cgroupfs_names_keep_dashes() {
        let [g, b, be] = Driver::Systemd.pod_dirs("a-b-c");
        assert_eq!(g, Path::new("kubepods.slice/kubepods-poda_b_c.slice"));
        assert!(b.ends_with("kubepods-burstable-poda_b_c.slice"));
        assert!(be.ends_with("kubepods-besteffort-poda_b_c.slice"));
        let [g, b, be] = Driver::Cgroupfs.pod_dirs("a-b-c");
        assert_eq!(g, Path::new("kubepods/poda-b-c"));
        assert_eq!(b, Path::new("kubepods/burstable/poda-b-c"));
        assert_eq!(be, Path::new("kubepods/besteffort/poda-b-c"));
    }

    #[test]
    fn a_missing_pod_or_hierarchy_has_no_cgroups() {
        let tree = Tree::new("missing");
        assert_eq!(detect(&tree.0), None);
        let pods = KubeletCgroups::new(tree.0.clone(), None);
        assert!(pods.cgroup_ids(UID).is_empty());
        tree.mkdir("kubepods.slice/kubepods-burstable.slice");
        assert_eq!(detect(&tree.0), Some(Driver::Systemd));
        assert!(pods.cgroup_ids(UID).is_empty());
        assert_eq!(pods.pod_dir(UID), None);
    }

    #[test]
    fn a_uid_that_could_name_another_path_is_never_looked_up() {
        let tree = Tree::new("traversal");
        tree.mkdir("kubepods/pod..");
        tree.mkdir("kubepods/podx");
        let pods = KubeletCgroups::new(tree.0.clone(), None);
        for uid in ["..", "x", "", "../../etc", "a/b"] {
            assert!(!valid_uid(uid), "{uid}");
            assert!(pods.cgroup_ids(uid).is_empty(), "{uid}");
        }
        assert!(valid_uid(UID));
    }

    #[test]
    fn pod_levels_follow_the_roots_level() {
        let pods = KubeletCgroups::new(PathBuf::from("/nowhere"), None);
        assert_eq!(
            pods.pod_levels(),
            None,
            "unknown root level: no ancestor lookups"
        );
        assert_eq!(pods.at_level(0).pod_levels(), Some((2, 3)));
        let pods = KubeletCgroups::new(PathBuf::from("/nowhere"), Some(Driver::Cgroupfs));
        assert_eq!(pods.at_level(4).pod_levels(), Some((6, 7)));
    }
}
