//! Loading, pinning and attaching (install), and removing every pin (uninstall).
//!
//! Install writes `CONFIG` (unmanaged processes not enforced) before any program is attached,
//! pins every map and program, attaches each program to the cgroup with a `bpf_link` and pins the
//! link, so that enforcement outlives the process (pitfall 5). The `Ebpf` handle is then dropped:
//! the running process always works from the pins, exactly as a restarted one does.

use std::{
    fs, io,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use aya::{
    EbpfLoader,
    maps::{Array, MapData},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSockAddr, Program,
        links::{FdLink, PinnedLink},
    },
};
use enforcer_common::{Config, identity};

use super::{
    DatapathError, DatapathOptions,
    object::{Hook, OBJECT, PROGRAMS},
    pins,
};

/// Loads, pins and attaches everything under `root`; on failure removes what it pinned.
pub fn install(root: &Path, cgroup: &Path, options: &DatapathOptions) -> Result<(), DatapathError> {
    let result = install_inner(root, cgroup, options);
    if result.is_err()
        && let Err(error) = uninstall(root)
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
    let mut ebpf = loader
        .load(OBJECT)
        .map_err(|e| DatapathError::Load(Box::new(e)))?;

    let config = ebpf
        .map_mut(pins::MAP_CONFIG)
        .ok_or(DatapathError::MapMissing {
            name: pins::MAP_CONFIG,
        })?;
    let mut config: Array<&mut MapData, Config> =
        Array::try_from(config).map_err(|e| DatapathError::map(pins::MAP_CONFIG, "opening", e))?;
    let initial = Config {
        revision: 0,
        unmanaged_identity: identity::UNMANAGED,
        ancestor_from: 0,
        ancestor_to: 0,
    };
    config
        .set(0, initial, 0)
        .map_err(|e| DatapathError::map(pins::MAP_CONFIG, "writing", e))?;

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
            p.load().map_err(err("loading (verifier)"))?;
            p.pin(&path).map_err(pin_err(path.clone()))?;
            let id = p
                .attach(cgroup, attach_type, LINK_MODE)
                .map_err(err("attaching"))?;
            let link = p.take_link(id).map_err(err("taking the link"))?;
            FdLink::try_from(link).map_err(link_err)
        }
        Hook::SockAddr => {
            let p: &mut CgroupSockAddr = program.try_into().map_err(err("has the wrong type"))?;
            p.load().map_err(err("loading (verifier)"))?;
            p.pin(&path).map_err(pin_err(path.clone()))?;
            let id = p.attach(cgroup, LINK_MODE).map_err(err("attaching"))?;
            let link = p.take_link(id).map_err(err("taking the link"))?;
            FdLink::try_from(link).map_err(link_err)
        }
    }
}

/// Removes every pin under `root`: links first (which detaches the programs from the cgroup),
/// then programs and maps, then the directories. Missing pins are not an error.
///
/// The kernel frees a link whose last pin is removed from a deferred work item, so uninstall
/// waits (up to [`DETACH_WAIT`]) until the links' ids are gone: on return nothing is attached.
pub fn uninstall(root: &Path) -> Result<(), DatapathError> {
    let link_ids: Vec<u32> = PROGRAMS
        .iter()
        .filter_map(|(name, _)| PinnedLink::from_pin(pins::link(root, name)).ok())
        .filter_map(|link| FdLink::from(link).info().ok().map(|info| info.id()))
        .collect();
    for dir in [pins::LINKS_DIR, pins::PROGRAMS_DIR, pins::MAPS_DIR] {
        let path = root.join(dir);
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(DatapathError::io("listing", &path, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| DatapathError::io("listing", &path, e))?;
            let pin = entry.path();
            remove_if_present(&pin, |p| fs::remove_file(p))?;
        }
        remove_if_present(&path, |p| fs::remove_dir(p))?;
    }
    remove_if_present(root, |p| fs::remove_dir(p))?;
    wait_for_detach(&link_ids);
    tracing::info!(root = %root.display(), "datapath uninstalled");
    Ok(())
}

/// How long uninstall waits for the kernel to release the links.
pub const DETACH_WAIT: Duration = Duration::from_secs(5);

fn wait_for_detach(link_ids: &[u32]) {
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
