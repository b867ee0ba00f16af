//! Input types: the custom resources ([`crd`]), the workload inventory ([`inventory`]) and the
//! envelope [`PolicyObject`] that carries any supported policy kind.

pub mod crd;
pub mod inventory;
pub mod status;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::{Deserialize, Serialize};

pub use crd::{
    Action, ClusterSegmentationPolicy, ClusterSegmentationPolicySpec, ClusterSubject, Mode, Peer,
    PortSpec, Rule, SegmentationPolicy, SegmentationPolicySpec, ServiceAccountRef, Subject, Tier,
};
pub use inventory::{Inventory, NamedPort, Namespace, Workload, WorkloadRef};
pub use status::{PolicyStatus, crd_yaml};

/// The policy kinds Bulkhead understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// `networking.k8s.io/v1` `NetworkPolicy`.
    NetworkPolicy,
    /// `bulkhead.dev/v1alpha1` `SegmentationPolicy`.
    SegmentationPolicy,
    /// `bulkhead.dev/v1alpha1` `ClusterSegmentationPolicy`.
    ClusterSegmentationPolicy,
}

impl Kind {
    /// The kind's name as written in `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::SegmentationPolicy => "SegmentationPolicy",
            Kind::ClusterSegmentationPolicy => "ClusterSegmentationPolicy",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of a policy object: `(kind, namespace, name)`; cluster-scoped objects have no
/// namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    /// The kind.
    pub kind: Kind,
    /// Namespace (None for cluster-scoped kinds).
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// Any supported policy object.
#[derive(Clone, Debug, PartialEq)]
pub enum PolicyObject {
    /// An upstream NetworkPolicy.
    NetworkPolicy(NetworkPolicy),
    /// A namespaced Bulkhead policy.
    Segmentation(SegmentationPolicy),
    /// A cluster-scoped Bulkhead policy.
    ClusterSegmentation(ClusterSegmentationPolicy),
}

impl PolicyObject {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            PolicyObject::NetworkPolicy(_) => Kind::NetworkPolicy,
            PolicyObject::Segmentation(_) => Kind::SegmentationPolicy,
            PolicyObject::ClusterSegmentation(_) => Kind::ClusterSegmentationPolicy,
        }
    }

    /// The object's key. Namespaced objects without a namespace get `None` here (and are
    /// rejected by validation).
    pub fn key(&self) -> ObjectKey {
        let meta = match self {
            PolicyObject::NetworkPolicy(o) => &o.metadata,
            PolicyObject::Segmentation(o) => &o.metadata,
            PolicyObject::ClusterSegmentation(o) => &o.metadata,
        };
        ObjectKey {
            kind: self.kind(),
            namespace: match self {
                PolicyObject::ClusterSegmentation(_) => None,
                _ => meta.namespace.clone(),
            },
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}
