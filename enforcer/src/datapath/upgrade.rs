//! Replacing a pinned generation of another eBPF object by this binary's, without a moment in
//! which nothing enforces (docs/datapath.md, "Upgrades").
//!
//! A *generation* is the pins of one object under one directory (maps, programs, links; its
//! `maps/META` names the object by SHA-256 and layout version). Two directories can hold one:
//! the root, and its sibling swap directory `<root>-swap` ([`pins::swap`]).
//!
//! Each directory is surveyed into a [`Generation`], and the pair decides the [`Plan`]:
//!
//! | root \ swap | `Absent` | `Broken` | `Foreign` | `Current` |
//! |---|---|---|---|---|
//! | `Absent`, `Broken` | install | install | promote | promote |
//! | `Foreign` | stage | stage (discard swap) | stage (discard swap) | resume |
//! | `Current` | adopt | adopt (discard swap) | adopt, retire swap | adopt, retire swap |
//!
//! The upgrade runs through these states, each of which a crash may leave behind:
//!
//! 1. root `Foreign` (the previous enforcer's, still enforcing), swap `Absent`: **stage** loads
//!    this object into the swap directory and attaches its programs to the cgroup alongside the
//!    old ones. A cgroup runs every attached program and a packet or `connect` passes only when
//!    all allow; the new programs start with `CONFIG` saying "unmanaged processes are not
//!    enforced" and no workloads, so they allow everything and the old ones alone decide.
//!    A crash while staging leaves swap `Broken` (or `Foreign`): discarded, staged again.
//! 2. root `Foreign`, swap `Current`: the caller fills the new maps (its first `apply`); from then
//!    on both generations enforce, each by its own maps. A restart here **resumes**: the new
//!    maps are adopted from the swap directory, and applied again by diff.
//! 3. `finish_upgrade` checks that the new maps were applied (revision above 0), then exchanges
//!    the two directories atomically (`renameat2(RENAME_EXCHANGE)`, which bpffs supports): the
//!    root holds the new generation, the swap directory the old one. This is the commit point.
//! 4. root `Current`, swap `Foreign`: **retire** unpins the old links (the kernel detaches the
//!    old programs), waits until they are gone, drains the old ring buffer (its last events go
//!    to the caller's log), and removes the old pins. A restart before that adopts the root and
//!    retires the swap directory at its `finish_upgrade`; a crash after the links went leaves
//!    swap `Broken`, discarded at the next start (with its undrained events).
//!
//! Only the swap directory can be left enforcing when the root was removed by hand or by an
//! enforcer older than this scheme: it is **promoted** (renamed to the root) and surveyed again.
//! Only a directory pair where nothing enforces is installed from scratch, as a first install is.

use std::{fs, io, path::Path};

use aya::maps::{Array, MapData};
use enforcer_common::ObjectMeta;
use rustix::fs::{CWD, RenameFlags, renameat_with};

use super::{DatapathError, EventBatch, events, install, maps::open_pinned, object, pins};

/// What one directory (the root, or its swap directory) holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// The directory does not exist.
    Absent,
    /// It exists, but there is nothing to adopt and nothing worth keeping attached: no link is
    /// pinned, or it is this object's own install cut short (`META` ours, some pin missing).
    Broken,
    /// Links are pinned and `META` is missing, unreadable, or names another object or layout
    /// version: another enforcer's generation, enforcing its last state.
    Foreign,
    /// This object's complete generation: `META` ours, every map, program and link pinned.
    Current,
}

/// What a survey of one directory found (the inputs of [`Survey::generation`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Survey {
    pub exists: bool,
    /// Link pins of any name.
    pub links: usize,
    /// Every map, program and link pin this object has is present.
    pub complete: bool,
    /// The value of `META`, when it is pinned and has this binary's layout.
    pub meta: Option<ObjectMeta>,
}

impl Survey {
    /// Surveys the generation directory `dir`.
    pub fn of(dir: &Path) -> Result<Self, DatapathError> {
        match fs::symlink_metadata(dir) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Self {
                    exists: false,
                    links: 0,
                    complete: false,
                    meta: None,
                });
            }
            Err(e) => return Err(DatapathError::io("reading", dir, e)),
        }
        let links = install::pin_paths(&dir.join(pins::LINKS_DIR))?.len();
        let complete = object::PROGRAMS
            .iter()
            .all(|(name, _)| pins::link(dir, name).exists() && pins::program(dir, name).exists())
            && pins::ALL_MAPS
                .iter()
                .all(|name| pins::map(dir, name).exists());
        Ok(Self {
            exists: true,
            links,
            complete,
            meta: read_meta(dir),
        })
    }

    /// The generation this survey describes, for an enforcer whose object is `ours`.
    pub fn generation(&self, ours: &ObjectMeta) -> Generation {
        let is_ours = self.meta.as_ref() == Some(ours);
        match (self.exists, self.links, is_ours, self.complete) {
            (false, ..) => Generation::Absent,
            (true, 0, ..) | (true, _, true, false) => Generation::Broken,
            (true, _, true, true) => Generation::Current,
            (true, _, false, _) => Generation::Foreign,
        }
    }
}

/// `META[0]` of the generation under `dir`; `None` when it is not pinned or not readable with
/// this binary's layout (an older install, or a newer one with another `ObjectMeta`).
fn read_meta(dir: &Path) -> Option<ObjectMeta> {
    let read = || -> Result<ObjectMeta, DatapathError> {
        let map = open_pinned(dir, pins::MAP_META)?;
        let meta: Array<MapData, ObjectMeta> = map
            .try_into()
            .map_err(|e| DatapathError::map(pins::MAP_META, "checking its value type", e))?;
        meta.get(&0, 0)
            .map_err(|e| DatapathError::map(pins::MAP_META, "reading", e))
    };
    read()
        .inspect_err(|error| tracing::debug!(%error, dir = %dir.display(), "no readable META"))
        .ok()
}

/// What `install_or_adopt` does about the two directories (see the module docs' table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing enforces: remove what is left of both, install at the root.
    Install,
    /// Only the swap directory enforces: remove the root's leftovers, rename the swap directory
    /// to the root, and survey again.
    Promote,
    /// Adopt the root; when `discard_swap`, remove the swap directory first.
    Adopt { discard_swap: bool },
    /// Adopt the root, exchanged already; the swap directory holds the previous generation,
    /// still attached, to retire at `finish_upgrade`.
    AdoptAndRetire,
    /// The root enforces another object and the swap directory holds this one's complete
    /// generation: use it, and exchange at `finish_upgrade`.
    Resume,
    /// The root enforces another object: (after removing the swap directory's leftovers when
    /// `discard_swap`) install this object in the swap directory, attached alongside, and
    /// exchange at `finish_upgrade`.
    Stage { discard_swap: bool },
}

/// The plan for a root and swap directory holding `root` and `swap`.
pub fn plan(root: Generation, swap: Generation) -> Plan {
    use Generation::{Absent, Broken, Current, Foreign};
    match (root, swap) {
        (Absent | Broken, Absent | Broken) => Plan::Install,
        (Absent | Broken, Foreign | Current) => Plan::Promote,
        (Foreign, Current) => Plan::Resume,
        (Foreign, Absent) => Plan::Stage {
            discard_swap: false,
        },
        (Foreign, Broken | Foreign) => Plan::Stage { discard_swap: true },
        (Current, Absent) => Plan::Adopt {
            discard_swap: false,
        },
        (Current, Broken) => Plan::Adopt { discard_swap: true },
        (Current, Foreign | Current) => Plan::AdoptAndRetire,
    }
}

/// Surveys both directories and plans, logging what was found.
pub(super) fn survey(root: &Path) -> Result<Plan, DatapathError> {
    let ours = object::meta();
    let root_gen = Survey::of(root)?.generation(&ours);
    let swap_gen = Survey::of(&pins::swap(root))?.generation(&ours);
    let plan = plan(root_gen, swap_gen);
    tracing::info!(root = %root.display(), ?root_gen, ?swap_gen, ?plan, "pinned generations");
    Ok(plan)
}

/// Removes the root's leftovers and renames the swap directory to the root.
pub(super) fn promote(root: &Path) -> Result<(), DatapathError> {
    let swap = pins::swap(root);
    tracing::warn!(root = %root.display(), swap = %swap.display(),
        "only the swap directory enforces; promoting it to the root");
    install::remove_generation(root)?;
    fs::rename(&swap, root).map_err(|e| DatapathError::io("renaming to the root", &swap, e))
}

/// Exchanges the root and the swap directory atomically: the commit point of an upgrade
/// ([`super::Datapath::finish_upgrade`] calls it; public so that tests can stop right after it).
pub fn exchange(root: &Path) -> Result<(), DatapathError> {
    let swap = pins::swap(root);
    renameat_with(CWD, root, CWD, &swap, RenameFlags::EXCHANGE)
        .map_err(|e| DatapathError::io("exchanging the root with", &swap, e.into()))?;
    tracing::info!(root = %root.display(), "new generation swapped in");
    Ok(())
}

/// Detaches and removes the generation in the swap directory; returns the last events of its
/// ring buffer, read after its programs were detached (none when the ring cannot be read).
pub(super) fn retire(root: &Path) -> Result<EventBatch, DatapathError> {
    let swap = pins::swap(root);
    let link_ids = install::unpin_links(&swap)?;
    install::wait_for_detach(&link_ids);
    let batch = events::drain(&swap).unwrap_or_else(|error| {
        tracing::warn!(%error, swap = %swap.display(), "the retired ring buffer could not be read");
        EventBatch::default()
    });
    install::remove_generation(&swap)?;
    tracing::info!(swap = %swap.display(), events = batch.events.len(), lost = batch.lost,
        "previous generation retired");
    Ok(batch)
}

#[cfg(test)]
mod tests;
