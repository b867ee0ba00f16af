//! Watch events -> pipeline [`Change`]s: the per-kind translation and the re-list rule (after a
//! watcher restarts, objects the new list lacks are gone). Pure, no API access.

use std::collections::{BTreeMap, BTreeSet};

use bulkhead_policy::model::{ClusterSegmentationPolicy, SegmentationPolicy};
use bulkhead_policy::{Kind, ObjectKey, WorkloadRef};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use kube::runtime::watcher::Event;

use super::convert;
use super::pipeline::{Change, Pipeline};

/// The watched kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Watched {
    /// `v1` Pod.
    Pod,
    /// `v1` Namespace.
    Namespace,
    /// `v1` Node.
    Node,
    /// `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy,
    /// `bulkhead.dev/v1alpha1` SegmentationPolicy.
    SegmentationPolicy,
    /// `bulkhead.dev/v1alpha1` ClusterSegmentationPolicy.
    ClusterSegmentationPolicy,
}

impl Watched {
    /// Every watched kind.
    pub const ALL: [Watched; 6] = [
        Watched::Pod,
        Watched::Namespace,
        Watched::Node,
        Watched::NetworkPolicy,
        Watched::SegmentationPolicy,
        Watched::ClusterSegmentationPolicy,
    ];

    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Watched::Pod => "Pod",
            Watched::Namespace => "Namespace",
            Watched::Node => "Node",
            Watched::NetworkPolicy => "NetworkPolicy",
            Watched::SegmentationPolicy => "SegmentationPolicy",
            Watched::ClusterSegmentationPolicy => "ClusterSegmentationPolicy",
        }
    }
}

/// An object's key in the pipeline.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// A pod.
    Pod(WorkloadRef),
    /// A namespace.
    Namespace(String),
    /// A node.
    Node(String),
    /// A policy object.
    Policy(ObjectKey),
}

/// A watched object type.
pub trait Object {
    /// Its kind.
    const KIND: Watched;
    /// Its key (None: an object without a name or namespace, ignored).
    fn key(&self) -> Option<Key>;
    /// What its existence means for the pipeline.
    fn change(&self) -> Option<Change>;
}

impl Object for Pod {
    const KIND: Watched = Watched::Pod;
    fn key(&self) -> Option<Key> {
        convert::pod_ref(self).map(Key::Pod)
    }
    fn change(&self) -> Option<Change> {
        match convert::pod(self) {
            Some(entry) => Some(Change::Pod(Box::new(entry))),
            None => convert::pod_ref(self).map(Change::PodGone),
        }
    }
}

impl Object for Namespace {
    const KIND: Watched = Watched::Namespace;
    fn key(&self) -> Option<Key> {
        Some(Key::Namespace(self.metadata.name.clone()?))
    }
    fn change(&self) -> Option<Change> {
        Some(Change::Namespace(
            self.metadata.name.clone()?,
            convert::namespace_labels(self.labels()),
        ))
    }
}

impl Object for Node {
    const KIND: Watched = Watched::Node;
    fn key(&self) -> Option<Key> {
        Some(Key::Node(self.metadata.name.clone()?))
    }
    fn change(&self) -> Option<Change> {
        Some(Change::Node(self.metadata.name.clone()?))
    }
}

fn policy_key(kind: Kind, namespace: Option<&String>, name: Option<&String>) -> Option<Key> {
    Some(Key::Policy(ObjectKey {
        kind,
        namespace: namespace.cloned(),
        name: name?.clone(),
    }))
}

impl Object for NetworkPolicy {
    const KIND: Watched = Watched::NetworkPolicy;
    fn key(&self) -> Option<Key> {
        let ns = self.metadata.namespace.as_ref()?;
        policy_key(Kind::NetworkPolicy, Some(ns), self.metadata.name.as_ref())
    }
    fn change(&self) -> Option<Change> {
        self.key()?;
        Some(Change::Policy(Box::new(convert::network_policy(self))))
    }
}

impl Object for SegmentationPolicy {
    const KIND: Watched = Watched::SegmentationPolicy;
    fn key(&self) -> Option<Key> {
        let ns = self.metadata.namespace.as_ref()?;
        policy_key(
            Kind::SegmentationPolicy,
            Some(ns),
            self.metadata.name.as_ref(),
        )
    }
    fn change(&self) -> Option<Change> {
        self.key()?;
        Some(Change::Policy(Box::new(convert::segmentation_policy(self))))
    }
}

impl Object for ClusterSegmentationPolicy {
    const KIND: Watched = Watched::ClusterSegmentationPolicy;
    fn key(&self) -> Option<Key> {
        policy_key(
            Kind::ClusterSegmentationPolicy,
            None,
            self.metadata.name.as_ref(),
        )
    }
    fn change(&self) -> Option<Change> {
        self.key()?;
        Some(Change::Policy(Box::new(
            convert::cluster_segmentation_policy(self),
        )))
    }
}

impl Key {
    /// The change saying the object is gone.
    pub fn gone(self) -> Change {
        match self {
            Key::Pod(r) => Change::PodGone(r),
            Key::Namespace(n) => Change::NamespaceGone(n),
            Key::Node(n) => Change::NodeGone(n),
            Key::Policy(k) => Change::PolicyGone(k),
        }
    }
}

/// The keys the pipeline holds for objects of `kind`.
fn held(pipeline: &Pipeline, kind: Watched) -> BTreeSet<Key> {
    match kind {
        Watched::Pod => pipeline.pod_refs().into_iter().map(Key::Pod).collect(),
        Watched::Namespace => pipeline
            .namespace_names()
            .into_iter()
            .map(Key::Namespace)
            .collect(),
        Watched::Node => pipeline.node_names().into_iter().map(Key::Node).collect(),
        Watched::NetworkPolicy => policy_keys(pipeline, Kind::NetworkPolicy),
        Watched::SegmentationPolicy => policy_keys(pipeline, Kind::SegmentationPolicy),
        Watched::ClusterSegmentationPolicy => {
            policy_keys(pipeline, Kind::ClusterSegmentationPolicy)
        }
    }
}

fn policy_keys(pipeline: &Pipeline, kind: Kind) -> BTreeSet<Key> {
    pipeline
        .policy_keys(kind)
        .into_iter()
        .map(Key::Policy)
        .collect()
}

/// The watchers' progress: which kinds listed completely at least once, and the keys of the
/// lists in progress.
#[derive(Default)]
pub struct Lists {
    listing: BTreeMap<Watched, BTreeSet<Key>>,
    synced: BTreeSet<Watched>,
}

impl Lists {
    /// Whether every kind listed completely at least once.
    pub fn synced(&self) -> bool {
        self.synced.len() == Watched::ALL.len()
    }

    /// Records one watch event of `K` into `pipeline`.
    pub fn take<K: Object>(&mut self, event: Event<K>, pipeline: &mut Pipeline) {
        match event {
            Event::Apply(o) => {
                if let Some(c) = o.change() {
                    pipeline.record(c);
                }
            }
            Event::Delete(o) => {
                if let Some(k) = o.key() {
                    pipeline.record(k.gone());
                }
            }
            Event::Init => {
                self.listing.insert(K::KIND, BTreeSet::new());
            }
            Event::InitApply(o) => {
                if let Some(k) = o.key() {
                    self.listing.entry(K::KIND).or_default().insert(k);
                }
                if let Some(c) = o.change() {
                    pipeline.record(c);
                }
            }
            Event::InitDone => {
                let listed = self.listing.remove(&K::KIND).unwrap_or_default();
                for k in held(pipeline, K::KIND) {
                    if !listed.contains(&k) {
                        pipeline.record(k.gone());
                    }
                }
                self.synced.insert(K::KIND);
            }
        }
    }
}
