//! The policy maps seen from user space: the desired contents ([`DesiredMaps`]), the diff
//! against what the kernel holds right now, and how full each map is.
//!
//! `apply` never trusts a cached copy: it reads each map back from the kernel, so a restarted
//! process (or a map someone else touched) is reconciled exactly.

use std::{collections::BTreeMap, path::Path};

use aya::maps::{Array, HashMap, IterableMap as _, LpmTrie, Map, MapData, lpm_trie::Key};
use enforcer_common::{
    AddrKey, Config, DefaultKey, FlowKey, FlowValue, MAX_ANCESTOR_LEVELS, PolicyKey, PolicyValue,
    WorkloadValue, identity,
};

use super::{BootClock, DatapathError, pins};

/// Set in `CONFIG.revision` while `apply` deletes stale entries; revisions themselves never
/// use this bit (it is masked off what `apply` writes and what `current` reports).
pub const TRANSIENT_REVISION_BIT: u64 = 1 << 63;

/// The complete desired contents of the policy maps. Policy and default times are boot-time
/// nanoseconds already (see [`super::BootClock`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredMaps {
    pub revision: u64,
    pub unmanaged_identity: u32,
    /// `(from, to)`: the absolute cgroup levels (root = 0) at which the programs look up the
    /// ancestors of a cgroup that is not in `workloads`, deepest first (e.g. the kubelet's pod
    /// cgroups, so that a pod's cgroup covers its containers before they exist). At most
    /// `MAX_ANCESTOR_LEVELS` levels, from level 1. `None`: each cgroup stands alone.
    pub ancestor_levels: Option<(u16, u16)>,
    /// Cgroup id -> workload.
    pub workloads: BTreeMap<u64, WorkloadValue>,
    /// (address, prefix length in bits over the 128-bit key) -> peer identity. IPv4 prefixes
    /// are IPv4-mapped: `a.b.c.d/n` is `(::ffff:a.b.c.d, 96 + n)`.
    pub addresses: BTreeMap<(AddrKey, u32), u32>,
    /// (key, prefix length in bits over the 96-bit key) -> decision.
    pub policy: BTreeMap<(PolicyKey, u32), PolicyValue>,
    pub defaults: BTreeMap<DefaultKey, PolicyValue>,
}

impl Default for DesiredMaps {
    fn default() -> Self {
        Self {
            revision: 0,
            unmanaged_identity: identity::UNMANAGED,
            ancestor_levels: None,
            workloads: BTreeMap::new(),
            addresses: BTreeMap::new(),
            policy: BTreeMap::new(),
            defaults: BTreeMap::new(),
        }
    }
}

/// What `apply` changed in one map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapDelta {
    pub upserted: usize,
    pub deleted: usize,
    pub unchanged: usize,
}

/// What `apply` changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub workloads: MapDelta,
    pub addresses: MapDelta,
    pub policy: MapDelta,
    pub defaults: MapDelta,
    pub previous_revision: u64,
    pub revision: u64,
}

/// Entries of one map against its capacity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapFill {
    pub name: &'static str,
    pub entries: u32,
    pub max_entries: u32,
}

/// Handles on the pinned policy maps.
pub(super) struct PolicyMaps {
    workloads: HashMap<MapData, u64, WorkloadValue>,
    addresses: LpmTrie<MapData, AddrKey, u32>,
    policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
    defaults: HashMap<MapData, DefaultKey, PolicyValue>,
    config: Array<MapData, Config>,
}

/// Opens the pinned map `name` as `Map`.
pub(super) fn open_pinned(root: &Path, name: &'static str) -> Result<Map, DatapathError> {
    let data = MapData::from_pin(pins::map(root, name)).map_err(|e| {
        DatapathError::map(
            name,
            format!("opening pin {}", pins::map(root, name).display()),
            e,
        )
    })?;
    Map::from_map_data(data).map_err(|e| DatapathError::map(name, "reading its type", e))
}

macro_rules! typed {
    ($root:expr, $name:expr) => {
        open_pinned($root, $name)?
            .try_into()
            .map_err(|e| DatapathError::map($name, "checking its key/value types", e))?
    };
}
pub(super) use typed;

impl PolicyMaps {
    pub(super) fn open(root: &Path) -> Result<Self, DatapathError> {
        Ok(Self {
            workloads: typed!(root, pins::MAP_WORKLOADS),
            addresses: typed!(root, pins::MAP_ADDRESSES),
            policy: typed!(root, pins::MAP_POLICY),
            defaults: typed!(root, pins::MAP_DEFAULTS),
            config: typed!(root, pins::MAP_CONFIG),
        })
    }

    /// The revision the maps hold (a transient one reads as its final one); reads `CONFIG` only.
    pub(super) fn revision(&self) -> Result<u64, DatapathError> {
        let config = self
            .config
            .get(&0, 0)
            .map_err(|e| DatapathError::map(pins::MAP_CONFIG, "reading", e))?;
        Ok(config.revision & !TRANSIENT_REVISION_BIT)
    }

    /// The kernel's current contents.
    pub(super) fn read(&self) -> Result<DesiredMaps, DatapathError> {
        let config = self
            .config
            .get(&0, 0)
            .map_err(|e| DatapathError::map(pins::MAP_CONFIG, "reading", e))?;
        let read_err = |name| move |e| DatapathError::map(name, "reading", e);
        let mut out = DesiredMaps {
            // A transient revision (an apply that did not finish) reads as its final one.
            revision: config.revision & !TRANSIENT_REVISION_BIT,
            unmanaged_identity: config.unmanaged_identity,
            ancestor_levels: (config.ancestor_to != 0)
                .then_some((config.ancestor_from, config.ancestor_to)),
            ..DesiredMaps::default()
        };
        for entry in self.workloads.iter() {
            let (k, v) = entry.map_err(read_err(pins::MAP_WORKLOADS))?;
            out.workloads.insert(k, v);
        }
        for entry in self.addresses.iter() {
            let (k, v) = entry.map_err(read_err(pins::MAP_ADDRESSES))?;
            out.addresses.insert((k.data(), k.prefix_len()), v);
        }
        for entry in self.policy.iter() {
            let (k, v) = entry.map_err(read_err(pins::MAP_POLICY))?;
            out.policy.insert((k.data(), k.prefix_len()), v);
        }
        for entry in self.defaults.iter() {
            let (k, v) = entry.map_err(read_err(pins::MAP_DEFAULTS))?;
            out.defaults.insert(k, v);
        }
        Ok(out)
    }

    /// Diffs `desired` against the kernel and writes the difference, in the order of [`plan`].
    /// Nothing is written when an entry of `desired` is invalid or a map could not hold the
    /// old and the new entries together (the peak during the update).
    pub(super) fn apply(&mut self, desired: &DesiredMaps) -> Result<ApplyStats, DatapathError> {
        check_ancestor_levels(desired.ancestor_levels)?;
        let current = self.read()?;
        self.check_capacity(&current, desired)?;
        let (steps, stats) = plan(&current, desired, BootClock::now_boot_ns());
        let write_err = |name| move |e| DatapathError::map(name, "writing", e);
        let delete_err = |name| move |e| DatapathError::map(name, "deleting", e);
        for step in steps {
            match step {
                Step::Policy((k, len), Some(v)) => self
                    .policy
                    .insert(&Key::new(len, k), v, 0)
                    .map_err(write_err(pins::MAP_POLICY))?,
                Step::Policy((k, len), None) => self
                    .policy
                    .remove(&Key::new(len, k))
                    .map_err(delete_err(pins::MAP_POLICY))?,
                Step::Default(k, Some(v)) => self
                    .defaults
                    .insert(k, v, 0)
                    .map_err(write_err(pins::MAP_DEFAULTS))?,
                Step::Default(k, None) => self
                    .defaults
                    .remove(&k)
                    .map_err(delete_err(pins::MAP_DEFAULTS))?,
                Step::Address((a, len), Some(v)) => self
                    .addresses
                    .insert(&Key::new(len, a), v, 0)
                    .map_err(write_err(pins::MAP_ADDRESSES))?,
                Step::Address((a, len), None) => self
                    .addresses
                    .remove(&Key::new(len, a))
                    .map_err(delete_err(pins::MAP_ADDRESSES))?,
                Step::Workload(k, Some(v)) => self
                    .workloads
                    .insert(k, v, 0)
                    .map_err(write_err(pins::MAP_WORKLOADS))?,
                Step::Workload(k, None) => self
                    .workloads
                    .remove(&k)
                    .map_err(delete_err(pins::MAP_WORKLOADS))?,
                Step::Config(config) => self
                    .config
                    .set(0, config, 0)
                    .map_err(write_err(pins::MAP_CONFIG))?,
            }
        }
        tracing::debug!(?stats, "maps applied");
        Ok(stats)
    }

    /// Refuses an update that a map could not hold: during it, a map holds its old entries and
    /// the new ones (upserts come before deletions), so the peak is old + inserted.
    fn check_capacity(
        &self,
        current: &DesiredMaps,
        desired: &DesiredMaps,
    ) -> Result<(), DatapathError> {
        let maps = [
            (
                pins::MAP_WORKLOADS,
                self.workloads.map(),
                Peak::of(&current.workloads, &desired.workloads),
            ),
            (
                pins::MAP_ADDRESSES,
                self.addresses.map(),
                Peak::of(&current.addresses, &desired.addresses),
            ),
            (
                pins::MAP_POLICY,
                self.policy.map(),
                Peak::of(&current.policy, &desired.policy),
            ),
            (
                pins::MAP_DEFAULTS,
                self.defaults.map(),
                Peak::of(&current.defaults, &desired.defaults),
            ),
        ];
        for (name, data, peak) in maps {
            let max_entries = data
                .info()
                .map_err(|e| DatapathError::map(name, "reading its info", e))?
                .max_entries();
            peak.check(name, max_entries)?;
        }
        Ok(())
    }
}

/// One write of an update: `Some` upserts the entry, `None` deletes it.
#[derive(Clone, Debug, PartialEq)]
enum Step {
    Policy((PolicyKey, u32), Option<PolicyValue>),
    Default(DefaultKey, Option<PolicyValue>),
    Address((AddrKey, u32), Option<u32>),
    Workload(u64, Option<WorkloadValue>),
    Config(Config),
}

/// The writes that take the kernel from `current` to `desired`, in order, and what they change.
///
/// The order keeps every lookup answering as the old state or as the new one, never a mix of
/// the two, for a flow whose endpoints keep their identities (an address or cgroup that moves to
/// another identity switches when its entry is written, and the transient revision then makes
/// cached decisions again). The kernel takes the first hit of: the peer's `POLICY` entry (longest prefix), the
/// `ANY` entry (longest prefix), `DEFAULTS`. So upserts go from the highest priority down (a new
/// answer appears only once nothing of higher priority can still give an old one that the new
/// state lacks), and deletions from the lowest up (removing an old answer never uncovers another
/// old entry below it: a stale isolation default, say, under a stale allow).
///
/// Upserts of policy, defaults and addresses, then workloads, then the revision, then deletions.
/// When there is something to delete, the revision written between upserts and deletions is a
/// transient one ([`TRANSIENT_REVISION_BIT`] set), and the final revision is written last: a
/// connection re-decided while a stale (possibly more permissive) entry still existed carries the
/// transient revision and is decided once more against the final state.
///
/// `CONFIG.valid_until` is the first window boundary of `desired`'s entries after `now`.
fn plan(current: &DesiredMaps, desired: &DesiredMaps, now: u64) -> (Vec<Step>, ApplyStats) {
    let mut stats = ApplyStats {
        previous_revision: current.revision,
        revision: desired.revision,
        ..ApplyStats::default()
    };
    let mut steps = Vec::new();

    let mut policy: Vec<_> = desired.policy.iter().collect();
    policy.sort_by_key(|(k, _)| policy_priority(k));
    for (k, v) in policy {
        if upsert(&current.policy, k, v, &mut stats.policy) {
            steps.push(Step::Policy(*k, Some(*v)));
        }
    }
    for (k, v) in &desired.defaults {
        if upsert(&current.defaults, k, v, &mut stats.defaults) {
            steps.push(Step::Default(*k, Some(*v)));
        }
    }
    // Addresses by the same rule: the trie answers with the longest prefix, so longer first.
    let mut addresses: Vec<_> = desired.addresses.iter().collect();
    addresses.sort_by_key(|((_, len), _)| std::cmp::Reverse(*len));
    for (k, v) in addresses {
        if upsert(&current.addresses, k, v, &mut stats.addresses) {
            steps.push(Step::Address(*k, Some(*v)));
        }
    }
    for (k, v) in &desired.workloads {
        if upsert(&current.workloads, k, v, &mut stats.workloads) {
            steps.push(Step::Workload(*k, Some(*v)));
        }
    }

    let (ancestor_from, ancestor_to) = desired.ancestor_levels.unwrap_or((0, 0));
    let final_config = Config {
        revision: desired.revision & !TRANSIENT_REVISION_BIT,
        unmanaged_identity: desired.unmanaged_identity,
        ancestor_from,
        ancestor_to,
        valid_until: next_boundary(desired, now),
    };
    let stale_workloads = stale(&current.workloads, &desired.workloads);
    let stale_defaults = stale(&current.defaults, &desired.defaults);
    let mut stale_policy = stale(&current.policy, &desired.policy);
    stale_policy.sort_by_key(|k| std::cmp::Reverse(policy_priority(k)));
    let mut stale_addresses = stale(&current.addresses, &desired.addresses);
    stale_addresses.sort_by_key(|&(_, len)| len);
    let deletions =
        stale_workloads.len() + stale_defaults.len() + stale_policy.len() + stale_addresses.len();
    if deletions == 0 {
        steps.push(Step::Config(final_config));
        return (steps, stats);
    }
    steps.push(Step::Config(Config {
        revision: final_config.revision | TRANSIENT_REVISION_BIT,
        ..final_config
    }));
    stats.workloads.deleted = stale_workloads.len();
    stats.defaults.deleted = stale_defaults.len();
    stats.policy.deleted = stale_policy.len();
    stats.addresses.deleted = stale_addresses.len();
    steps.extend(stale_workloads.into_iter().map(|k| Step::Workload(k, None)));
    steps.extend(stale_defaults.into_iter().map(|k| Step::Default(k, None)));
    steps.extend(stale_policy.into_iter().map(|k| Step::Policy(k, None)));
    steps.extend(stale_addresses.into_iter().map(|k| Step::Address(k, None)));
    steps.push(Step::Config(final_config));
    (steps, stats)
}

/// The first instant after `now` (boot-time ns) at which an entry of `maps` enters or leaves its
/// window, `u64::MAX` when none does: until then the maps decide every flow as they do now.
fn next_boundary(maps: &DesiredMaps, now: u64) -> u64 {
    maps.policy
        .values()
        .chain(maps.defaults.values())
        .flat_map(|v| [v.not_before, v.expires_at])
        .filter(|&t| t > now && t != u64::MAX)
        .min()
        .unwrap_or(u64::MAX)
}

/// A `POLICY` entry's rank in the kernel's lookup order, first looked up first: the peer's own
/// entries before the `ANY` ones, and within each, longer prefixes (narrower port blocks) first.
fn policy_priority(&(key, len): &(PolicyKey, u32)) -> (bool, std::cmp::Reverse<u32>) {
    (key.peer_identity == identity::ANY, std::cmp::Reverse(len))
}

/// A map's entries before, after and at the peak of an update (upserts come before deletions,
/// so the peak holds every old entry and every new one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Peak {
    before: usize,
    after: usize,
    peak: usize,
}

impl Peak {
    fn of<K: Ord, V>(current: &BTreeMap<K, V>, desired: &BTreeMap<K, V>) -> Self {
        let inserted = desired.keys().filter(|k| !current.contains_key(k)).count();
        Self {
            before: current.len(),
            after: desired.len(),
            peak: current.len() + inserted,
        }
    }

    /// Fails when a map of `max_entries` cannot hold the peak.
    fn check(self, name: &'static str, max_entries: u32) -> Result<(), DatapathError> {
        if self.peak > max_entries as usize {
            return Err(DatapathError::Desired {
                field: name,
                problem: format!(
                    "the update needs {} entries at its peak ({} now, {} after) and the map \
                     holds at most {max_entries}; nothing was written",
                    self.peak, self.before, self.after
                ),
            });
        }
        Ok(())
    }
}

/// Keys of `current` that `desired` no longer has, in key order.
fn stale<K: Ord + Copy, V>(current: &BTreeMap<K, V>, desired: &BTreeMap<K, V>) -> Vec<K> {
    current
        .keys()
        .filter(|k| !desired.contains_key(k))
        .copied()
        .collect()
}

/// Counts the entry; `true` when it must be written.
fn upsert<K: Ord, V: PartialEq>(
    current: &BTreeMap<K, V>,
    k: &K,
    v: &V,
    delta: &mut MapDelta,
) -> bool {
    if current.get(k) == Some(v) {
        delta.unchanged += 1;
        false
    } else {
        delta.upserted += 1;
        true
    }
}

/// Entry counts and capacities of the maps worth watching.
pub(super) fn map_fill(root: &Path) -> Result<Vec<MapFill>, DatapathError> {
    let workloads: HashMap<MapData, u64, WorkloadValue> = typed!(root, pins::MAP_WORKLOADS);
    let addresses: LpmTrie<MapData, AddrKey, u32> = typed!(root, pins::MAP_ADDRESSES);
    let policy: LpmTrie<MapData, PolicyKey, PolicyValue> = typed!(root, pins::MAP_POLICY);
    let defaults: HashMap<MapData, DefaultKey, PolicyValue> = typed!(root, pins::MAP_DEFAULTS);
    let flows: HashMap<MapData, FlowKey, FlowValue> = typed!(root, pins::MAP_FLOWS);
    Ok(vec![
        fill(pins::MAP_WORKLOADS, workloads.map(), workloads.keys())?,
        fill(pins::MAP_ADDRESSES, addresses.map(), addresses.keys())?,
        fill(pins::MAP_POLICY, policy.map(), policy.keys())?,
        fill(pins::MAP_DEFAULTS, defaults.map(), defaults.keys())?,
        fill(pins::MAP_FLOWS, flows.map(), flows.keys())?,
    ])
}

fn fill<K>(
    name: &'static str,
    data: &MapData,
    keys: impl Iterator<Item = Result<K, aya::maps::MapError>>,
) -> Result<MapFill, DatapathError> {
    let max_entries = data
        .info()
        .map_err(|e| DatapathError::map(name, "reading its info", e))?
        .max_entries();
    let mut entries = 0u32;
    for key in keys {
        key.map_err(|e| DatapathError::map(name, "counting keys", e))?;
        entries += 1;
    }
    Ok(MapFill {
        name,
        entries,
        max_entries,
    })
}

/// `ancestor_levels` must name 1 to `MAX_ANCESTOR_LEVELS` levels below the root, in order.
fn check_ancestor_levels(levels: Option<(u16, u16)>) -> Result<(), DatapathError> {
    let Some((from, to)) = levels else {
        return Ok(());
    };
    if from == 0 || to < from || to - from >= MAX_ANCESTOR_LEVELS {
        return Err(DatapathError::Desired {
            field: "ancestor_levels",
            problem: format!(
                "({from}, {to}): expected 1 <= from <= to < from + {MAX_ANCESTOR_LEVELS}"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
