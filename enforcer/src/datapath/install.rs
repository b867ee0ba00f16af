//! Loading, pinning and attaching one generation (install), and removing pins (uninstall).
//!
//! Install writes `CONFIG` (unmanaged processes not enforced) and `META` (which object this is)
//! before any program is attached, pins every map and program, attaches each program to the
//! cgroup with a `bpf_link` and pins the link, so that enforcement outlives the process
//! (pitfall 5). The `Ebpf` handle is then dropped: the running process always works from the
//! pins, exactly as a restarted one does.
use std::{
    fs, io,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Array, MapData},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSockAddr, Program,
        links::{FdLink, PinnedLink},
    },
};
use enforcer_common::{Config, identity};

use super::{
    DatapathError, DatapathOptions,
    object::{self, Hook, OBJECT, PROGRAMS},
    pins, verifier,
};

/// Loads, pins and attaches one generation under `root` (the root, or its swap directory during
/// an upgrade); on failure removes what it pinned there.
pub fn install(root: &Path, cgroup: &Path, options: &DatapathOptions) -> Result<(), DatapathError> {
    let result = install_inner(root, cgroup, options);
    if result.is_err()
        && let Err(error) = remove_generation(root)
    {
        tracing::warn!(%error, root = %root.display(), "cleanup after a failed install failed");
    }
    result
}

fn install_inner(
    root: &Path,
    cgroup: &Path,
    options: &DatapathOptions,
) -> Result<(), DatapathError> {
    if OBJECT.is_empty() {
        return Err(DatapathError::ObjectMissing);
    }
    for dir in [pins::MAPS_DIR, pins::PROGRAMS_DIR, pins::LINKS_DIR] {
        let path = root.join(dir);
        fs::create_dir_all(&path).map_err(|e| DatapathError::io("creating", &path, e))?;
    }
    let mut loader = EbpfLoader::new();
    if let Some(bytes) = options.events_ring_bytes {
        loader.map_max_entries(pins::MAP_EVENTS, bytes);
    }
    let mut ebpf = verifier::with_signals_blocked(|| loader.load(OBJECT))
        .map_err(|e| DatapathError::Load(Box::new(e)))?;

    let initial = Config {
        revision: 0,
        unmanaged_identity: identity::UNMANAGED,
        ancestor_from: 0,
        ancestor_to: 0,
        valid_until: u64::MAX,
    };
    set_first(&mut ebpf, pins::MAP_CONFIG, initial)?;
    set_first(&mut ebpf, pins::MAP_META, object::meta())?;

    for name in pins::ALL_MAPS {
        let map = ebpf.map(name).ok_or(DatapathError::MapMissing { name })?;
        let path = pins::map(root, name);
        map.pin(&path).map_err(|source| DatapathError::Pin {
            what: format!("map {name}"),
            path,
            source,
        })?;
    }

    let cgroup_dir =
        fs::File::open(cgroup).map_err(|e| DatapathError::io("opening cgroup", cgroup, e))?;
    for (name, hook) in PROGRAMS {
        let program = ebpf
            .program_mut(name)
            .ok_or(DatapathError::ProgramMissing { name })?;
        let link = attach(program, name, hook, &cgroup_dir, root)?;
        let path = pins::link(root, name);
        link.pin(&path).map_err(|source| DatapathError::Pin {
            what: format!("link of {name}"),
            path,
            source,
        })?;
    }
    tracing::info!(root = %root.display(), cgroup = %cgroup.display(), "datapath installed");
    Ok(())
}

/// Writes index 0 of the loaded object's array map `name`.
fn set_first<T: Pod>(ebpf: &mut Ebpf, name: &'static str, value: T) -> Result<(), DatapathError> {
    let map = ebpf
        .map_mut(name)
        .ok_or(DatapathError::MapMissing { name })?;
    let mut array: Array<&mut MapData, T> =
        Array::try_from(map).map_err(|e| DatapathError::map(name, "opening", e))?;
    array
        .set(0, value, 0)
        .map_err(|e| DatapathError::map(name, "writing", e))
}

/// `bpf_link_create` on a cgroup accepts no attach flags (EINVAL otherwise): the kernel always
/// attaches links in multi mode, so `Single` (flags 0) is what coexists with other programs.
const LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// Loads, pins and attaches one program; returns its link, not yet pinned.
fn attach(
    program: &mut Program,
    name: &'static str,
    hook: Hook,
    cgroup: &fs::File,
    root: &Path,
) -> Result<FdLink, DatapathError> {
    let err = |action| move |e| DatapathError::program(name, action, e);
    let pin_err = |path: std::path::PathBuf| {
        move |source| DatapathError::Pin {
            what: format!("program {name}"),
            path,
            source,
        }
    };
    let link_err = |source| DatapathError::Link {
        name,
        path: pins::link(root, name),
        source,
    };
    let path = pins::program(root, name);
    match hook {
        Hook::Skb(attach_type) => {
            let p: &mut CgroupSkb = program.try_into().map_err(err("has the wrong type"))?;
            verifier::load(|| p.load()).map_err(err("loading (verifier)"))?;
            p.pin(&path).map_err(pin_err(path.clone()))?;
            let id = p
                .attach(cgroup, attach_type, LINK_MODE)
                .map_err(err("attaching"))?;
            let link = p.take_link(id).map_err(err("taking the link"))?;
            FdLink::try_from(link).map_err(link_err)
        }
        Hook::SockAddr => {
            let p: &mut CgroupSockAddr = program.try_into().map_err(err("has the wrong type"))?;
            verifier::load(|| p.load()).map_err(err("loading (verifier)"))?;
            p.pin(&path).map_err(pin_err(path.clone()))?;
            let id = p.attach(cgroup, LINK_MODE).map_err(err("attaching"))?;
            let link = p.take_link(id).map_err(err("taking the link"))?;
            FdLink::try_from(link).map_err(link_err)
        }
    }
}

/// Removes both generations: the swap directory's (a staged or retired generation, see
/// `upgrade.rs`), then the root's. On return nothing of either is attached or pinned.
pub fn uninstall(root: &Path) -> Result<(), DatapathError> {
    remove_generation(&pins::swap(root))?;
    remove_generation(root)?;
    tracing::info!(root = %root.display(), "datapath uninstalled");
    Ok(())
}

/// Removes every pin of the generation under `dir`: links first (which detaches the programs
/// from the cgroup), then programs and maps, then the directories. Missing pins are not an
/// error; every pin is removed, whatever its name (an older object's too).
///
/// The kernel frees a link whose last pin is removed from a deferred work item, so this waits
/// (up to [`DETACH_WAIT`]) until the links' ids are gone: on return nothing is attached.
pub fn remove_generation(dir: &Path) -> Result<(), DatapathError> {
    let link_ids = unpin_links(dir)?;
    for sub in [pins::PROGRAMS_DIR, pins::MAPS_DIR] {
        remove_pins_in(&dir.join(sub))?;
    }
    remove_if_present(dir, |p| fs::remove_dir(p))?;
    wait_for_detach(&link_ids);
    Ok(())
}

/// Removes the link pins of the generation under `dir` and their directory; returns the ids of
/// the links they held (still being released by the kernel, see [`wait_for_detach`]).
pub fn unpin_links(dir: &Path) -> Result<Vec<u32>, DatapathError> {
    let links = dir.join(pins::LINKS_DIR);
    let link_ids = pin_paths(&links)?
        .into_iter()
        .filter_map(|pin| PinnedLink::from_pin(pin).ok())
        .filter_map(|link| FdLink::from(link).info().ok().map(|info| info.id()))
        .collect();
    remove_pins_in(&links)?;
    Ok(link_ids)
}

/// The pins in directory `dir` (none when it does not exist).
pub fn pin_paths(dir: &Path) -> Result<Vec<PathBuf>, DatapathError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(DatapathError::io("listing", dir, e)),
    };
    entries
        .map(|entry| {
            entry
                .map(|e| e.path())
                .map_err(|e| DatapathError::io("listing", dir, e))
        })
        .collect()
}

/// Removes every pin in `dir`, then `dir`.
fn remove_pins_in(dir: &Path) -> Result<(), DatapathError> {
    for pin in pin_paths(dir)? {
        remove_if_present(&pin, |p| fs::remove_file(p))?;
    }
    remove_if_present(dir, |p| fs::remove_dir(p))
}

/// How long uninstall waits for the kernel to release the links.
pub const DETACH_WAIT: Duration = Duration::from_secs(5);

/// Waits (up to [`DETACH_WAIT`]) until no link of `link_ids` is listed by the kernel.
pub fn wait_for_detach(link_ids: &[u32]) {
    let deadline = Instant::now() + DETACH_WAIT;
    loop {
        // A link being torn down is still listed but can no longer be opened: count it too.
        let alive = aya::programs::loaded_links()
            .filter(|info| {
                info.as_ref()
                    .map_or(true, |info| link_ids.contains(&info.id()))
            })
            .count();
        if alive == 0 {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(alive, "links still attached after uninstall");
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn remove_if_present(
    path: &Path,
    remove: impl Fn(&Path) -> io::Result<()>,
) -> Result<(), DatapathError> {
    match remove(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DatapathError::io("removing", path, e)),
    }
}
