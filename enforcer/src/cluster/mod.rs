//! Cluster mode, policy sync client side: the enforcer connects to the controller
//! ([`client::run`]), says which node it is and which revision it holds, applies the snapshot
//! and deltas it receives to its [`Held`] state, hands each new state to an [`Enforce`]
//! implementation (which writes the kernel maps, from [`Held::desired`]), and acknowledges what
//! was enforced. A message that is malformed, does not follow the held revision, or fails to
//! enforce is rejected (`Nack`) and nothing of it is kept. While disconnected the last enforced
//! state stays in force; the client reconnects with exponential, capped, jittered backoff and
//! resumes from the held revision.
//!
//! Pods reach the `WORKLOADS` map through their cgroups, which [`PodCgroups`] finds by pod UID
//! ([`pods::KubeletCgroups`] under the kubelet's hierarchy; [`watch::CgroupWatcher`] says when
//! cgroups appear).

mod client;
pub mod pods;
#[cfg(test)]
mod tests;
pub mod watch;

use std::collections::BTreeMap;

use bulkhead_proto::{ControllerMsg, NodeView, PodRef, Problem, WireError};
use enforcer_common::{PolicyValue, WorkloadValue, identity};

use crate::datapath::{BootClock, DesiredMaps};

pub use client::{Backoff, ClientConfig, ClientError, check, connect, run};

/// Finds a pod's cgroups (cgroup v2 directories' inodes) by its UID.
pub trait PodCgroups {
    /// The ids of every cgroup of the pod (its own and its containers'); empty when its cgroup
    /// does not exist.
    fn cgroup_ids(&self, pod_uid: &str) -> Vec<u64>;

    /// The absolute cgroup levels of pod cgroups (`DesiredMaps::ancestor_levels`), when known:
    /// the kernel then finds a container's pod through its ancestors, even before the
    /// container's own cgroup is mapped.
    fn pod_levels(&self) -> Option<(u16, u16)> {
        None
    }
}

/// The kernel maps of a held state, and how its pods were found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    /// The maps to apply.
    pub maps: DesiredMaps,
    /// Cgroup id -> the pod it belongs to.
    pub by_cgroup: BTreeMap<u64, PodRef>,
    /// Pods whose cgroup was not found (not enforced until it is).
    pub missing: Vec<PodRef>,
}

/// Which kind of message produced a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A whole view.
    Snapshot,
    /// A delta on the held view.
    Delta,
}

/// Makes a state the enforced one.
pub trait Enforce: Send {
    /// Enforces `held` (e.g. `held.desired(..)` written to the kernel maps). An error keeps the
    /// previous state in force and is reported to the controller.
    fn enforce(&mut self, held: &Held, how: Applied) -> Result<(), String>;

    /// Told when a sync stream opens (`true`) and when it ends (`false`).
    fn connection(&mut self, _open: bool) {}
}

/// The state an enforcer holds: which controller epoch and revision, and the node's view.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Held {
    /// Epoch of the controller that produced it.
    pub epoch: u64,
    /// Revision (0: nothing held).
    pub revision: u64,
    /// The node's view.
    pub view: NodeView,
}

impl Held {
    /// Applies a controller message; on error nothing changed. A snapshot replaces the view; a
    /// delta must follow the held revision of the same epoch.
    pub fn apply(&mut self, msg: ControllerMsg) -> Result<Applied, WireError> {
        match msg {
            ControllerMsg::Snapshot(s) => {
                self.epoch = s.epoch;
                self.revision = s.revision;
                self.view = s.view;
                Ok(Applied::Snapshot)
            }
            ControllerMsg::Delta(d) => {
                if d.epoch != self.epoch {
                    return Err(WireError {
                        message: "Delta",
                        field: "epoch".into(),
                        problem: Problem::Revision {
                            got: d.epoch,
                            expected: format!("= {} (the held epoch)", self.epoch),
                        },
                    });
                }
                if d.previous_revision != self.revision {
                    return Err(WireError {
                        message: "Delta",
                        field: "previous_revision".into(),
                        problem: Problem::Revision {
                            got: d.previous_revision,
                            expected: format!("= {} (the held revision)", self.revision),
                        },
                    });
                }
                self.view.apply(&d)?;
                self.revision = d.revision;
                Ok(Applied::Delta)
            }
        }
    }

    /// The desired kernel maps of this state: pods through their cgroups, validity windows on
    /// the boot clock, the sync revision as the maps' revision.
    pub fn desired(&self, cgroups: &dyn PodCgroups, clock: &BootClock) -> Desired {
        let to_boot = |v: &PolicyValue| PolicyValue {
            not_before: clock.to_boot_ns(v.not_before),
            expires_at: clock.to_boot_ns(v.expires_at),
            ..*v
        };
        let mut maps = DesiredMaps {
            revision: self.revision,
            unmanaged_identity: identity::UNMANAGED,
            ancestor_levels: cgroups.pod_levels(),
            ..DesiredMaps::default()
        };
        let mut missing = Vec::new();
        let mut by_cgroup = BTreeMap::new();
        for (pod, id) in &self.view.workloads {
            let ids = cgroups.cgroup_ids(&pod.uid);
            if ids.is_empty() {
                missing.push(pod.clone());
            }
            for cgroup in ids {
                let value = WorkloadValue {
                    identity: *id,
                    flags: 0,
                };
                maps.workloads.insert(cgroup, value);
                by_cgroup.insert(cgroup, pod.clone());
            }
        }
        maps.addresses = self
            .view
            .addresses
            .iter()
            .map(|(p, id)| ((p.addr, p.prefix_len), *id))
            .collect();
        maps.policy = self
            .view
            .policy
            .iter()
            .map(|(k, v)| ((k.key, k.prefix_len), to_boot(v)))
            .collect();
        maps.defaults = self
            .view
            .defaults
            .iter()
            .map(|(k, v)| (*k, to_boot(v)))
            .collect();
        Desired {
            maps,
            by_cgroup,
            missing,
        }
    }
}
