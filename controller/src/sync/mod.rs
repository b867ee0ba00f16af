//! Policy sync, controller side: the [`SyncHub`] holds the compiled cluster state and which pods
//! run on which node, derives each node's view (the policy and defaults entries of its pods'
//! identities, the whole address table, its pods, the rule table), and publishes a revision per
//! [`SyncHub::update`]: only nodes whose view changed get a delta. Each node keeps a bounded
//! history of its deltas, so a reconnecting enforcer resumes from the revision it holds; one
//! outside the history (or of another epoch, or unknown) gets a snapshot. Acknowledged revisions
//! per node are [`SyncHub::realized`].
//!
//! [`serve`] runs the tonic service on a listener, with mutual TLS or the loopback-only dev mode
//! (`bulkhead_proto::security`).

mod hub;
mod service;
pub mod synth;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

pub use hub::{SyncHub, Touched};
pub use service::{ServeError, serve};

/// Which pods run on which node: node name -> (workload -> pod UID). A node with no pods may be
/// listed (it still receives the address and rule tables).
pub type NodeAssignment = BTreeMap<String, BTreeMap<bulkhead_policy::WorkloadRef, String>>;
