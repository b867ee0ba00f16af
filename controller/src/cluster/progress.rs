//! Per-policy realization, the numbers behind each policy's status.
//!
//! When a policy object's generation is first published (hub revision `R`), the tracker records,
//! for every node running a workload the policy's subject selects, that node's desired revision
//! right after `R` (the revision of its first view that contains the generation). A node that
//! becomes a subject node later is recorded when first seen, at its desired revision then (a
//! conservative bound). `desiredNodes` are the subject nodes now; `realizedNodes` those whose
//! enforcer acknowledged a revision at least the recorded one.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bulkhead_policy::ObjectKey;
use bulkhead_policy::model::PolicyStatus;

use super::pipeline::Pipeline;

/// The status inputs of one policy object.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyProgress {
    /// The object.
    pub key: ObjectKey,
    /// Its `metadata.uid`.
    pub uid: Option<String>,
    /// The status stored on it (as last observed).
    pub stored_status: Option<PolicyStatus>,
    /// `metadata.generation` as last observed.
    pub generation: i64,
    /// Whether that generation is valid (the one-line validation error otherwise).
    pub valid: Result<(), String>,
    /// The generation in force (the last valid one; None: no valid generation yet).
    pub applied_generation: Option<i64>,
    /// The hub revision at which the generation in force was first published (None: not yet
    /// published).
    pub published_revision: Option<u64>,
    /// Nodes running workloads the policy's subject selects (from the generation in force).
    pub desired_nodes: BTreeSet<String>,
    /// Of those, the nodes whose enforcer acknowledged a revision containing the generation in
    /// force.
    pub realized_nodes: BTreeSet<String>,
}

struct Publication {
    generation: i64,
    revision: u64,
    /// Node -> the revision it must acknowledge.
    required: BTreeMap<String, u64>,
}

/// Publication records of the applied policy generations.
#[derive(Default)]
pub struct Tracker {
    published: HashMap<ObjectKey, Publication>,
}

impl Tracker {
    /// Records a publication at hub `revision` of the applied-generation changes `changes`
    /// (None: the object was removed); `desired` is the hub's node -> revision right after it.
    pub fn published(
        &mut self,
        pipeline: &Pipeline,
        changes: &BTreeMap<ObjectKey, Option<i64>>,
        revision: u64,
        desired: &BTreeMap<String, u64>,
    ) {
        for (key, generation) in changes {
            let applied = pipeline
                .policies()
                .get(key)
                .and_then(|r| r.applied.as_ref());
            match (generation, applied) {
                (Some(generation), Some(applied)) => {
                    let required = pipeline
                        .subject_nodes(&applied.object)
                        .into_iter()
                        .map(|n| {
                            let r = desired.get(&n).copied().unwrap_or(revision);
                            (n, r)
                        })
                        .collect();
                    self.published.insert(
                        key.clone(),
                        Publication {
                            generation: *generation,
                            revision,
                            required,
                        },
                    );
                }
                _ => {
                    self.published.remove(key);
                }
            }
        }
    }

    /// The progress of every observed policy object whose latest version was compiled (one
    /// changed since the last flush is left out until the next). `desired` and `realized` are the hub's
    /// node -> revision maps, `revision` its latest revision.
    pub fn progress(
        &mut self,
        pipeline: &Pipeline,
        desired: &BTreeMap<String, u64>,
        realized: &BTreeMap<String, u64>,
        revision: u64,
    ) -> Vec<PolicyProgress> {
        let mut out = Vec::with_capacity(pipeline.policies().len());
        for (key, record) in pipeline.policies() {
            if record.pending {
                continue;
            }
            let mut p = PolicyProgress {
                key: key.clone(),
                uid: record.input.uid().map(str::to_owned),
                stored_status: record.input.status.clone(),
                generation: record.input.generation,
                valid: record.valid.clone(),
                applied_generation: record.applied.as_ref().map(|a| a.generation),
                published_revision: None,
                desired_nodes: BTreeSet::new(),
                realized_nodes: BTreeSet::new(),
            };
            if let (Some(applied), Some(publication)) =
                (record.applied.as_ref(), self.published.get_mut(key))
                && publication.generation == applied.generation
            {
                p.published_revision = Some(publication.revision);
                p.desired_nodes = pipeline.subject_nodes(&applied.object);
                publication
                    .required
                    .retain(|n, _| p.desired_nodes.contains(n));
                for n in &p.desired_nodes {
                    let required = *publication
                        .required
                        .entry(n.clone())
                        .or_insert_with(|| desired.get(n).copied().unwrap_or(revision));
                    if realized.get(n).is_some_and(|acked| *acked >= required) {
                        p.realized_nodes.insert(n.clone());
                    }
                }
            }
            out.push(p);
        }
        out
    }
}
