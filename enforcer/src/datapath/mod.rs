//! The kernel datapath seen from user space: install or adopt the pinned programs, maps and
//! links ([`Datapath::install_or_adopt`]), reconcile the policy maps by diff
//! ([`Datapath::apply`]), read verdict events ([`EventReader`]), report map fill and program run
//! statistics, and remove everything ([`uninstall`]).
//!
//! All state lives on bpffs under one root (see [`pins`]); this process holds nothing the kernel
//! needs, so killing it leaves enforcement running, and a new process adopts the pins without
//! attaching a second time.

mod error;
mod events;
mod install;
mod maps;
mod object;
pub mod pins;
mod system;

use std::path::{Path, PathBuf};

pub use error::DatapathError;
pub use events::{EventBatch, EventReader};
pub use install::uninstall;
pub use maps::{ApplyStats, DesiredMaps, MapDelta, MapFill, TRANSIENT_REVISION_BIT};
pub use system::{BootClock, boot_time_offset, cgroup_id, cgroup_level, find_cgroup2_mount};

/// Load-time options (defaults suit production).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatapathOptions {
    /// Size of the `EVENTS` ring buffer in bytes (a power of two, at least a page); `None` keeps
    /// the object's 4 MiB. Only used when installing, not when adopting.
    pub events_ring_bytes: Option<u32>,
}

/// Whether `install_or_adopt` loaded the programs or found them pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Installed,
    Adopted,
}

/// Run statistics of one program (zero unless `kernel.bpf_stats_enabled` is on, see
/// [`enable_program_stats`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStats {
    pub name: &'static str,
    pub id: u32,
    pub run_time_ns: u64,
    pub run_count: u64,
}

/// The installed datapath: handles on the pinned maps under `root`.
pub struct Datapath {
    root: PathBuf,
    origin: Origin,
    maps: maps::PolicyMaps,
}

impl Datapath {
    /// Adopts the datapath pinned under `bpffs_root`, or loads, pins and attaches it to
    /// `cgroup` when nothing is pinned there. A partial installation (some links pinned, not
    /// all) is removed and installed again. Adopting never attaches: the pinned links are the
    /// attachment. Mounts bpffs when needed and tries to lift `RLIMIT_MEMLOCK`.
    pub fn install_or_adopt(bpffs_root: &Path, cgroup: &Path) -> Result<Self, DatapathError> {
        Self::install_or_adopt_with(bpffs_root, cgroup, &DatapathOptions::default())
    }

    /// [`Self::install_or_adopt`] with explicit load-time options.
    pub fn install_or_adopt_with(
        bpffs_root: &Path,
        cgroup: &Path,
        options: &DatapathOptions,
    ) -> Result<Self, DatapathError> {
        system::ensure_bpffs(bpffs_root)?;
        system::raise_memlock_limit();
        let pinned = object::PROGRAMS
            .iter()
            .filter(|(name, _)| pins::link(bpffs_root, name).exists())
            .count();
        let maps_pinned = pins::ALL_MAPS
            .iter()
            .all(|name| pins::map(bpffs_root, name).exists());
        let origin = if pinned == object::PROGRAMS.len() && maps_pinned {
            tracing::info!(root = %bpffs_root.display(), "adopting the pinned datapath");
            Origin::Adopted
        } else {
            if pinned > 0 || bpffs_root.exists() {
                tracing::warn!(root = %bpffs_root.display(), pinned, "partial installation found; reinstalling");
                uninstall(bpffs_root)?;
            }
            install::install(bpffs_root, cgroup, options)?;
            Origin::Installed
        };
        let maps = maps::PolicyMaps::open(bpffs_root)?;
        Ok(Self {
            root: bpffs_root.to_path_buf(),
            origin,
            maps,
        })
    }

    /// Whether this handle installed the datapath or adopted it.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The bpffs root of the pins.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The policy revision the kernel maps hold (cheap: reads `CONFIG` only).
    pub fn revision(&self) -> Result<u64, DatapathError> {
        self.maps.revision()
    }

    /// The kernel's current map contents.
    pub fn current(&self) -> Result<DesiredMaps, DatapathError> {
        self.maps.read()
    }

    /// Makes the kernel maps equal `desired`: diffs against their current kernel contents,
    /// upserts policy, defaults and addresses, then workloads, then writes the revision (which
    /// makes every cached socket decision be made again), then deletes stale entries.
    pub fn apply(&mut self, desired: &DesiredMaps) -> Result<ApplyStats, DatapathError> {
        self.maps.apply(desired)
    }

    /// A reader of verdict events (must be called inside a tokio runtime).
    pub fn event_reader(&self) -> Result<EventReader, DatapathError> {
        EventReader::open(&self.root)
    }

    /// Entries against capacity for WORKLOADS, ADDRESSES, POLICY, DEFAULTS and FLOWS.
    pub fn map_fill(&self) -> Result<Vec<MapFill>, DatapathError> {
        maps::map_fill(&self.root)
    }

    /// Cumulative run time and run count of each program, from the pinned programs.
    pub fn program_stats(&self) -> Result<Vec<ProgramStats>, DatapathError> {
        object::PROGRAMS
            .iter()
            .map(|&(name, _)| {
                let path = pins::program(&self.root, name);
                let info = aya::programs::ProgramInfo::from_pin(&path)
                    .map_err(|e| DatapathError::program(name, "reading its info", e))?;
                Ok(ProgramStats {
                    name,
                    id: info.id(),
                    run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                    run_count: info.run_count(),
                })
            })
            .collect()
    }
}

/// Turns on the kernel's program run statistics for as long as the returned fd is open
/// (`BPF_ENABLE_STATS`; the same as `sysctl kernel.bpf_stats_enabled=1` but scoped).
pub fn enable_program_stats() -> Result<std::os::fd::OwnedFd, DatapathError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| DatapathError::io("enabling", "BPF_ENABLE_STATS", e.io_error))
}
