//! Kubernetes objects -> the policy library's inputs (pure functions, no API access).
//!
//! **Which pods are workloads.** A pod becomes a workload once it is scheduled
//! (`spec.nodeName` set) and stays one until it is terminal (`status.phase` `Succeeded` or
//! `Failed`) or deleted. A scheduled pod without an address yet is a workload without addresses:
//! its node learns its identity (and so enforces its policy) before its containers start, while
//! peers can address it only once `status.podIPs` lists its addresses. An unscheduled pod runs
//! nowhere and is not a workload. A `hostNetwork` pod gets no addresses: the ones in its status
//! are its node's, which belong to the host identity.
//!
//! **Pod UID** is the one the kubelet names the pod's cgroup after: `metadata.uid`, except for a
//! mirror pod (a static pod's API object), whose `kubernetes.io/config.mirror` annotation holds
//! the static pod's UID.
//!
//! **Named ports** are the containers' `ports` with a name; a name repeated for the same
//! protocol keeps its first port (the API server does not forbid the repetition across
//! containers, the inventory does).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use bulkhead_policy::model::{NamedPort, Workload};
use bulkhead_policy::{PolicyObject, WorkloadRef};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;

use bulkhead_policy::model::{ClusterSegmentationPolicy, PolicyStatus, SegmentationPolicy};

/// A pod as the pipeline keeps it: the workload it compiles to, where it runs and its UID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEntry {
    /// The workload (namespace, name, labels, service account, addresses, named ports).
    pub workload: Workload,
    /// The node it is scheduled on.
    pub node: String,
    /// The UID the kubelet names the pod's cgroup after (how the enforcer finds it):
    /// `metadata.uid`, or a mirror pod's static pod UID.
    pub uid: String,
}

impl PodEntry {
    /// The workload's reference.
    pub fn reference(&self) -> WorkloadRef {
        self.workload.reference()
    }
}

/// A pod's reference (`namespace/name`); None without a namespace.
pub fn pod_ref(pod: &Pod) -> Option<WorkloadRef> {
    Some(WorkloadRef::new(
        pod.metadata.namespace.clone()?,
        pod.name_any(),
    ))
}

/// The workload of `pod`, or None when the pod is no workload (see the module docs).
pub fn pod(pod: &Pod) -> Option<PodEntry> {
    let namespace = pod.metadata.namespace.clone()?;
    let name = pod.metadata.name.clone()?;
    let uid = pod_uid(pod)?;
    let spec = pod.spec.as_ref()?;
    let node = spec.node_name.clone().filter(|n| !n.is_empty())?;
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    if spec.host_network != Some(true)
        && let Some(status) = status
    {
        let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
        for ip in listed.chain(status.pod_ip.as_deref()) {
            if let Ok(ip) = ip.parse::<IpAddr>() {
                let ip = canonical(ip);
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
    }
    let mut ports = Vec::new();
    let mut seen = BTreeSet::new();
    for p in spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
    {
        let (Some(name), Ok(port)) = (p.name.as_ref(), u16::try_from(p.container_port)) else {
            continue;
        };
        let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".to_owned());
        if name.is_empty() || port == 0 || !seen.insert((name.clone(), protocol.clone())) {
            continue;
        }
        ports.push(NamedPort {
            name: name.clone(),
            port,
            protocol,
        });
    }
    let service_account = spec
        .service_account_name
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    Some(PodEntry {
        workload: Workload {
            namespace,
            name,
            labels: pod.labels().clone(),
            service_account,
            ips,
            ports,
            cgroup: None,
        },
        node,
        uid,
    })
}

/// Annotation of a mirror pod (the API object of a kubelet's static pod): the static pod's UID.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The UID the kubelet names the pod's cgroup after: `metadata.uid`, except for a mirror pod,
/// whose cgroup is the static pod's, named after the static pod's UID (its config hash, or the
/// uid its manifest sets) that the kubelet writes into the mirror annotation. Returned as written:
/// the enforcer escapes `-` for systemd slice names itself.
///
/// The annotation counts only on a pod the kubelet made: owned by its node (the kubelet sets that
/// owner on every mirror pod). Anyone who may create pods can write the annotation, and a pod
/// that named another pod's UID would otherwise take over that pod's cgroup.
fn pod_uid(pod: &Pod) -> Option<String> {
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    let owned_by_node = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "Node" && o.api_version == "v1" && Some(o.name.as_str()) == node);
    let mirror = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(MIRROR_ANNOTATION))
        .filter(|h| owned_by_node && !h.is_empty());
    mirror.or(pod.metadata.uid.as_ref()).cloned()
}

/// An IPv4-mapped IPv6 address as IPv4 (the inventory refuses the mapped form).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// A namespace's labels without `kubernetes.io/metadata.name` (the inventory implies it).
pub fn namespace_labels(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut labels = labels.clone();
    labels.remove(bulkhead_policy::model::inventory::NAMESPACE_NAME_LABEL);
    labels
}

/// A policy object as the pipeline keeps it: the object (without the server's bookkeeping and
/// without its status), its `metadata.generation`, and the status stored on it (what the status
/// writer compares with).
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyInput {
    /// The object.
    pub object: PolicyObject,
    /// `metadata.generation` (0 when the server sets none).
    pub generation: i64,
    /// The stored status (None for a NetworkPolicy, or when none was written yet).
    pub status: Option<PolicyStatus>,
}

impl PolicyInput {
    /// Whether `other` is the same object and generation (its status aside).
    pub fn same_spec(&self, other: &PolicyInput) -> bool {
        self.generation == other.generation && self.object == other.object
    }

    /// The object's `metadata.uid`.
    pub fn uid(&self) -> Option<&str> {
        let meta = match &self.object {
            PolicyObject::NetworkPolicy(o) => &o.metadata,
            PolicyObject::Segmentation(o) => &o.metadata,
            PolicyObject::ClusterSegmentation(o) => &o.metadata,
        };
        meta.uid.as_deref()
    }
}

/// Drops what the compiler never reads and what changes without the spec changing (status,
/// managed fields, resource version), so that equal inputs compare equal.
fn trim(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> i64 {
    meta.managed_fields = None;
    meta.resource_version = None;
    meta.annotations = None;
    meta.generation.take().unwrap_or(0)
}

/// A NetworkPolicy as a policy input.
pub fn network_policy(o: &NetworkPolicy) -> PolicyInput {
    let mut o = o.clone();
    let generation = trim(&mut o.metadata);
    PolicyInput {
        object: PolicyObject::NetworkPolicy(o),
        generation,
        status: None,
    }
}

/// A SegmentationPolicy as a policy input.
pub fn segmentation_policy(o: &SegmentationPolicy) -> PolicyInput {
    let mut o = o.clone();
    let generation = trim(&mut o.metadata);
    let status = o.status.take();
    PolicyInput {
        object: PolicyObject::Segmentation(o),
        generation,
        status,
    }
}

/// A ClusterSegmentationPolicy as a policy input.
pub fn cluster_segmentation_policy(o: &ClusterSegmentationPolicy) -> PolicyInput {
    let mut o = o.clone();
    let generation = trim(&mut o.metadata);
    let status = o.status.take();
    PolicyInput {
        object: PolicyObject::ClusterSegmentation(o),
        generation,
        status,
    }
}
