//! The kernel datapath seen from user space: install or adopt the pinned programs, maps and
//! links ([`Datapath::install_or_adopt`]), reconcile the policy maps by diff
//! ([`Datapath::apply`]), read verdict events ([`EventReader`]), report map fill and program run
//! statistics, and remove everything ([`uninstall`]).
//!
//! All state lives on bpffs under one root (see [`pins`]); this process holds nothing the kernel
//! needs, so killing it leaves enforcement running, and a new process adopts the pins without
//! attaching a second time. Pins of another eBPF object (an older or newer enforcer) are not
//! adopted but upgraded without an enforcement gap: the new generation is attached alongside,
//! filled by the caller's first `apply`, then swapped in ([`Datapath::finish_upgrade`]; the
//! states and what a crash in each leaves are in [`upgrade`]).

mod error;
mod events;
mod install;
mod maps;
mod object;
pub mod pins;
mod system;
pub mod upgrade;
mod verifier;

use std::path::{Path, PathBuf};

pub use error::DatapathError;
pub use events::{EventBatch, EventReader};
pub use install::uninstall;
pub use maps::{ApplyStats, DesiredMaps, MapDelta, MapFill, TRANSIENT_REVISION_BIT};
pub use object::meta as object_meta;
pub use system::{BootClock, boot_time_offset, cgroup_id, cgroup_level, find_cgroup2_mount};

/// Load-time options (defaults suit production).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatapathOptions {
    /// Size of the `EVENTS` ring buffer in bytes (a power of two, at least a page); `None` keeps
    /// the object's 4 MiB. Only used when installing (or staging an upgrade), not when adopting.
    pub events_ring_bytes: Option<u32>,
}

/// Whether `install_or_adopt` loaded the programs, found them pinned, or is upgrading pins of
/// another object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Nothing usable was pinned: this object was installed (its maps are empty).
    Installed,
    /// This object's generation was pinned and is adopted as it is.
    Adopted,
    /// Another generation is still attached (the one this replaces, or the one it replaced
    /// before a restart): apply, then call [`Datapath::finish_upgrade`].
    Upgrading,
}

/// What [`Datapath::finish_upgrade`] still has to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    /// Exchange the root with the swap directory, then retire.
    Exchange,
    /// Retire the previous generation in the swap directory.
    Retire,
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

/// The installed datapath: handles on the pinned maps of this object's generation.
pub struct Datapath {
    root: PathBuf,
    /// Where this object's generation is pinned now: the root, or its swap directory until
    /// the exchange of [`Datapath::finish_upgrade`].
    live: PathBuf,
    origin: Origin,
    pending: Option<Pending>,
    maps: maps::PolicyMaps,
}

impl Datapath {
    /// Adopts the datapath pinned under `bpffs_root`, or loads, pins and attaches it to
    /// `cgroup` when nothing usable is pinned there. Adopting never attaches: the pinned links
    /// are the attachment. Pins of another object (`META` missing or different) are upgraded:
    /// this object is attached alongside them (origin [`Origin::Upgrading`]) and the caller
    /// must `apply`, then [`Self::finish_upgrade`]. A partial installation of this object is
    /// removed and installed again. Mounts bpffs when needed and tries to lift
    /// `RLIMIT_MEMLOCK`.
    pub fn install_or_adopt(bpffs_root: &Path, cgroup: &Path) -> Result<Self, DatapathError> {
        Self::install_or_adopt_with(bpffs_root, cgroup, &DatapathOptions::default())
    }

    /// [`Self::install_or_adopt`] with explicit load-time options (used when installing or
    /// staging, not when adopting).
    pub fn install_or_adopt_with(
        bpffs_root: &Path,
        cgroup: &Path,
        options: &DatapathOptions,
    ) -> Result<Self, DatapathError> {
        system::ensure_bpffs(bpffs_root)?;
        system::raise_memlock_limit();
        let root = bpffs_root.to_path_buf();
        let swap = pins::swap(bpffs_root);
        let mut plan = upgrade::survey(bpffs_root)?;
        if plan == upgrade::Plan::Promote {
            upgrade::promote(bpffs_root)?;
            plan = upgrade::survey(bpffs_root)?;
        }
        let (live, origin, pending) = match plan {
            upgrade::Plan::Promote => {
                return Err(DatapathError::Upgrade {
                    root,
                    reason: "the swap directory is back after promoting it",
                });
            }
            upgrade::Plan::Install => {
                if bpffs_root.exists() || swap.exists() {
                    tracing::warn!(root = %bpffs_root.display(), "partial installation found; reinstalling");
                    uninstall(bpffs_root)?;
                }
                install::install(bpffs_root, cgroup, options)?;
                (root.clone(), Origin::Installed, None)
            }
            upgrade::Plan::Adopt { discard_swap } => {
                if discard_swap {
                    install::remove_generation(&swap)?;
                }
                tracing::info!(root = %bpffs_root.display(), "adopting the pinned datapath");
                (root.clone(), Origin::Adopted, None)
            }
            upgrade::Plan::AdoptAndRetire => {
                (root.clone(), Origin::Upgrading, Some(Pending::Retire))
            }
            upgrade::Plan::Resume => (swap, Origin::Upgrading, Some(Pending::Exchange)),
            upgrade::Plan::Stage { discard_swap } => {
                if discard_swap {
                    install::remove_generation(&swap)?;
                }
                tracing::info!(root = %bpffs_root.display(), swap = %swap.display(),
                    "pins of another object; attaching this one alongside them");
                install::install(&swap, cgroup, options)?;
                (swap, Origin::Upgrading, Some(Pending::Exchange))
            }
        };
        let maps = maps::PolicyMaps::open(&live)?;
        Ok(Self {
            root,
            live,
            origin,
            pending,
            maps,
        })
    }

    /// Completes an upgrade once the new maps are filled (call it after the first successful
    /// [`Self::apply`]): exchanges the generations, detaches and removes the previous one, and
    /// returns the last events of its ring buffer for the log. `None` when no upgrade is
    /// pending. Refuses while the new maps were never applied (revision 0): swapping them in
    /// empty would stop enforcement.
    pub fn finish_upgrade(&mut self) -> Result<Option<EventBatch>, DatapathError> {
        let Some(pending) = self.pending else {
            return Ok(None);
        };
        if pending == Pending::Exchange {
            if self.maps.revision()? == 0 {
                return Err(DatapathError::Upgrade {
                    root: self.root.clone(),
                    reason: "the new maps were never applied (revision 0); apply before finishing",
                });
            }
            upgrade::exchange(&self.root)?;
            self.live = self.root.clone();
            self.pending = Some(Pending::Retire);
        }
        let batch = upgrade::retire(&self.root)?;
        self.pending = None;
        Ok(Some(batch))
    }

    /// Whether [`Self::finish_upgrade`] still has work to do.
    pub fn upgrade_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether this handle installed the datapath, adopted it, or is upgrading.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The bpffs root of the pins.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where this object's generation is pinned now (the root, or its swap directory while an
    /// upgrade is pending).
    pub fn live_root(&self) -> &Path {
        &self.live
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
        EventReader::open(&self.live)
    }

    /// Entries against capacity for WORKLOADS, ADDRESSES, POLICY, DEFAULTS and FLOWS.
    pub fn map_fill(&self) -> Result<Vec<MapFill>, DatapathError> {
        maps::map_fill(&self.live)
    }

    /// Cumulative run time and run count of each program, from the pinned programs.
    pub fn program_stats(&self) -> Result<Vec<ProgramStats>, DatapathError> {
        object::PROGRAMS
            .iter()
            .map(|&(name, _)| {
                let path = pins::program(&self.live, name);
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
