//! Facts about the host that the datapath needs: cgroup ids, the cgroup v2 and bpffs mounts,
//! the boot-time clock, and the memlock limit.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use rustix::time::{ClockId, clock_gettime};

use super::{DatapathError, pins};

/// The cgroup id of a cgroup v2 directory: its inode number (what `bpf_get_current_cgroup_id`
/// and `bpf_skb_cgroup_id` return).
pub fn cgroup_id(path: &Path) -> io::Result<u64> {
    Ok(fs::metadata(path)?.ino())
}

/// Mount points of `/proc/self/mountinfo` whose filesystem type is `fstype`.
/// The absolute level of the cgroup v2 directory `path` (the hierarchy's root is 0): its depth
/// below the cgroup2 mount that holds it, plus the depth of that mount's own root in the
/// hierarchy (a mount of a subtree, as in a cgroup namespace).
pub fn cgroup_level(path: &Path) -> io::Result<u16> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    let (root, mount_point) = info
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut fields = left.split(' ');
            let root = unescape(fields.nth(3)?);
            let mount_point = PathBuf::from(unescape(fields.next()?));
            (right.split(' ').next()? == "cgroup2" && path.starts_with(&mount_point))
                .then_some((root, mount_point))
        })
        .max_by_key(|(_, mount_point)| mount_point.components().count())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is on no cgroup2 mount", path.display()),
            )
        })?;
    let below = path
        .strip_prefix(&mount_point)
        .map_err(io::Error::other)?
        .components()
        .count();
    let above = Path::new(&root).components().count().saturating_sub(1);
    u16::try_from(below + above).map_err(io::Error::other)
}

fn mounts_of(fstype: &str) -> io::Result<Vec<PathBuf>> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            (right.split(' ').next()? == fstype).then(|| PathBuf::from(unescape(mount_point)))
        })
        .collect())
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup/unified` on hybrid hosts).
pub fn find_cgroup2_mount() -> io::Result<PathBuf> {
    mounts_of("cgroup2")?.into_iter().next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no cgroup2 mount in /proc/self/mountinfo",
        )
    })
}

/// Mounts bpffs at [`pins::BPFFS_MOUNT`] unless `root` already lies on a bpffs.
pub fn ensure_bpffs(root: &Path) -> Result<(), DatapathError> {
    let mounts =
        mounts_of("bpf").map_err(|e| DatapathError::io("reading", "/proc/self/mountinfo", e))?;
    if mounts.iter().any(|m| root.starts_with(m)) {
        return Ok(());
    }
    let target = Path::new(pins::BPFFS_MOUNT);
    fs::create_dir_all(target).map_err(|e| DatapathError::io("creating", target, e))?;
    rustix::mount::mount(
        "bpf",
        target,
        "bpf",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .map_err(|e| DatapathError::io("mounting bpffs at", target, e.into()))?;
    tracing::info!(path = %target.display(), "mounted bpffs");
    Ok(())
}

/// Tries to lift `RLIMIT_MEMLOCK`; kernels from 5.11 on charge BPF memory to the memory cgroup
/// instead, so a failure is only worth a warning.
pub fn raise_memlock_limit() {
    let unlimited = rustix::process::Rlimit {
        current: None,
        maximum: None,
    };
    if let Err(error) = rustix::process::setrlimit(rustix::process::Resource::Memlock, unlimited) {
        tracing::warn!(%error, "could not raise RLIMIT_MEMLOCK; continuing (memcg accounting applies)");
    }
}

/// Converts wall-clock (Unix epoch) nanoseconds to `bpf_ktime_get_boot_ns` nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootClock {
    /// `CLOCK_REALTIME - CLOCK_BOOTTIME`, in nanoseconds, sampled once.
    pub offset_ns: i128,
}

impl BootClock {
    /// Boot-time nanoseconds of a Unix-epoch instant; keeps the unbounded markers (0 and
    /// `u64::MAX`) and clamps everything else into `1..u64::MAX`.
    pub fn to_boot_ns(&self, unix_ns: u64) -> u64 {
        if unix_ns == 0 || unix_ns == u64::MAX {
            return unix_ns;
        }
        let boot = i128::from(unix_ns) - self.offset_ns;
        boot.clamp(1, i128::from(u64::MAX - 1)) as u64
    }

    /// The boot-time clock now.
    pub fn now_boot_ns() -> u64 {
        timespec_ns(clock_gettime(ClockId::Boottime))
    }
}

fn timespec_ns(t: rustix::time::Timespec) -> u64 {
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// Samples `CLOCK_REALTIME - CLOCK_BOOTTIME` (the two readings taken back to back).
pub fn boot_time_offset() -> BootClock {
    let boot = timespec_ns(clock_gettime(ClockId::Boottime));
    let real = timespec_ns(clock_gettime(ClockId::Realtime));
    BootClock {
        offset_ns: i128::from(real) - i128::from(boot),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_levels_count_from_the_hierarchys_root() {
        let Ok(mount) = find_cgroup2_mount() else {
            eprintln!("SKIPPED: no cgroup2 mount");
            return;
        };
        assert_eq!(cgroup_level(&mount).expect("level of the mount"), 0);
        assert_eq!(cgroup_level(&mount.join("a/b")).expect("level"), 2);
        assert!(cgroup_level(Path::new("/nonexistent-mount/x")).is_err());
    }

    #[test]
    fn unescape_octal() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape("/sys/fs/cgroup/unified"), "/sys/fs/cgroup/unified");
    }

    #[test]
    fn boot_clock_keeps_markers_and_shifts() {
        let c = BootClock { offset_ns: 1_000 };
        assert_eq!(c.to_boot_ns(0), 0);
        assert_eq!(c.to_boot_ns(u64::MAX), u64::MAX);
        assert_eq!(c.to_boot_ns(5_000), 4_000);
        assert_eq!(c.to_boot_ns(10), 1);
    }

    #[test]
    fn offset_matches_clocks() {
        let c = boot_time_offset();
        let unix_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let boot = c.to_boot_ns(unix_now);
        let diff = boot.abs_diff(BootClock::now_boot_ns());
        assert!(
            diff < 1_000_000_000,
            "boot-time conversion off by {diff} ns"
        );
    }
}
