//! The maps of docs/design.md, plus `FLOWS` (per-flow decisions for traffic that no socket
//! decision covers), and the scalar readers over them (pitfall 2: every map value is copied into
//! a scalar right after the lookup).
//!
//! Sizes here are defaults: user space may change `max_entries` at load time (the ring buffer
//! size in particular).

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{
        BPF_F_CLONE, BPF_F_NO_PREALLOC, BPF_SK_STORAGE_GET_F_CREATE, bpf_map_type, bpf_sock,
    },
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_sk_storage_get},
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
};
use enforcer_common::{
    AddrKey, Config, DefaultKey, FlowKey, FlowValue, MAX_ANCESTOR_LEVELS, ObjectMeta, PolicyKey,
    PolicyValue, REVISION_PAST_CHANGE_BIT, SockDecision, WorkloadValue, identity,
};

#[map]
pub static WORKLOADS: HashMap<u64, WorkloadValue> = HashMap::with_max_entries(65_536, 0);

#[map]
pub static ADDRESSES: LpmTrie<AddrKey, u32> = LpmTrie::with_max_entries(262_144, 0);

#[map]
pub static POLICY: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::with_max_entries(1_048_576, 0);

#[map]
pub static DEFAULTS: HashMap<DefaultKey, PolicyValue> = HashMap::with_max_entries(65_536, 0);

#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(65_536, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Which object this generation was loaded from (written by user space at install). No program
/// reads it; bpf-linker keeps it all the same, as every `#[map]` static (checked: `readelf -s`
/// of the object lists it, and install fails with `MapMissing` when it is not there).
#[map]
pub static META: Array<ObjectMeta> = Array::with_max_entries(1, 0);

#[map]
pub static EVENT_LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Socket storage must be a BTF map (pitfall 3). aya-ebpf's `SkStorage` fixes its flags to
/// `BPF_F_NO_PREALLOC`; this one adds `BPF_F_CLONE`, so that the mark a listener gets at its
/// first SYN is copied into every socket accepted from it. The layout is the BTF map definition
/// aya-ebpf's own `btf_map_def!` generates: the loader reads type, key, value and flags from it.
#[repr(C)]
pub struct CloneableSkStorage {
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const SockDecision,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; (BPF_F_NO_PREALLOC | BPF_F_CLONE) as usize],
}

// SAFETY: placeholder pointers patched by the loader, never dereferenced (as in aya-ebpf).
unsafe impl Sync for CloneableSkStorage {}

impl CloneableSkStorage {
    pub const fn new() -> Self {
        Self {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
        }
    }
}

#[btf_map]
pub static SOCK_DECISIONS: CloneableSkStorage = CloneableSkStorage::new();

/// The socket's decision slot (created zeroed when `create`), or null. `sk` must be a full
/// socket (or null).
#[inline(always)]
pub fn sock_storage(sk: *mut bpf_sock, create: bool) -> *mut SockDecision {
    if sk.is_null() {
        return ptr::null_mut();
    }
    let flags = if create {
        u64::from(BPF_SK_STORAGE_GET_F_CREATE)
    } else {
        0
    };
    let map = ptr::from_ref(&SOCK_DECISIONS).cast_mut().cast::<c_void>();
    // SAFETY: `sk` is a full socket; the map is this object's socket storage map.
    unsafe { bpf_sk_storage_get(map, sk.cast(), ptr::null_mut(), flags) }.cast::<SockDecision>()
}

/// What the programs read from `CONFIG[0]`.
#[derive(Clone, Copy)]
pub struct Settings {
    pub unmanaged_identity: u32,
    pub ancestor_from: u16,
    pub ancestor_to: u16,
}

/// `CONFIG[0]` as the revision and the settings; a zero revision, the default unmanaged identity
/// and no ancestor lookups before the first write.
#[inline(always)]
pub fn config() -> (u64, Settings) {
    match CONFIG.get(0) {
        Some(c) => (
            effective_revision(c.revision, c.valid_until),
            Settings {
                unmanaged_identity: c.unmanaged_identity,
                ancestor_from: c.ancestor_from,
                ancestor_to: c.ancestor_to,
            },
        ),
        None => (
            0,
            Settings {
                unmanaged_identity: identity::UNMANAGED,
                ancestor_from: 0,
                ancestor_to: 0,
            },
        ),
    }
}

/// The revision as the caches compare it: past `valid_until` (a window boundary), a different
/// one, so that decisions cached before the boundary are made again. Reads the clock only when
/// some entry has a window.
#[inline(always)]
fn effective_revision(revision: u64, valid_until: u64) -> u64 {
    // SAFETY: a helper without arguments or side effects.
    if valid_until != u64::MAX && unsafe { bpf_ktime_get_boot_ns() } >= valid_until {
        revision | REVISION_PAST_CHANGE_BIT
    } else {
        revision
    }
}

/// The identity of the local process or socket owner given its cgroup id, else of its deepest
/// ancestor in `WORKLOADS` among the configured levels (`ancestor(level)` gives the ancestor's
/// id, 0 past the cgroup's own depth); `None` when it is not enforced (no workload and
/// `unmanaged_identity == UNMANAGED`).
#[inline(always)]
pub fn local_identity(
    cgroup_id: u64,
    settings: &Settings,
    ancestor: impl Fn(u16) -> u64,
) -> Option<u32> {
    if let Some(identity) = workload(cgroup_id) {
        return Some(identity);
    }
    if settings.ancestor_to != 0 {
        for step in 0..MAX_ANCESTOR_LEVELS {
            let Some(level) = settings.ancestor_to.checked_sub(step) else {
                break;
            };
            if level < settings.ancestor_from {
                break;
            }
            let id = ancestor(level);
            if id != 0
                && id != cgroup_id
                && let Some(identity) = workload(id)
            {
                return Some(identity);
            }
        }
    }
    match settings.unmanaged_identity {
        identity::UNMANAGED => None,
        unmanaged => Some(unmanaged),
    }
}

#[inline(always)]
fn workload(cgroup_id: u64) -> Option<u32> {
    // SAFETY: the value is copied out at once; nothing can alias it in between.
    unsafe { WORKLOADS.get(cgroup_id) }.map(|w| w.identity)
}

/// `ADDRESSES[addr]` (longest prefix), `WORLD` on a miss.
#[inline(always)]
pub fn peer_identity(addr: &AddrKey) -> u32 {
    let key = Key::new(128, *addr);
    match ADDRESSES.get(&key) {
        Some(id) => *id,
        None => identity::WORLD,
    }
}

/// Longest-prefix lookup of a full policy key, copied out.
#[inline(always)]
pub fn policy_entry(key: PolicyKey) -> Option<PolicyValue> {
    let key = Key::new(enforcer_common::POLICY_KEY_FULL_BITS, key);
    POLICY.get(&key).copied()
}

/// The isolation default of `(local, direction)`, copied out.
#[inline(always)]
pub fn default_entry(local_identity: u32, direction: u8) -> Option<PolicyValue> {
    let key = DefaultKey {
        local_identity,
        direction,
        _pad: [0; 3],
    };
    // SAFETY: the value is copied out at once.
    unsafe { DEFAULTS.get(key) }.copied()
}
