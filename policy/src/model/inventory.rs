//! The workload inventory: namespaces and workloads with their labels, service accounts,
//! addresses, named ports and cgroups. It stands in for the Kubernetes API on hosts without
//! Kubernetes and for offline tracing.
//!
//! ```yaml
//! namespaces:
//!   - {name: shop, labels: {team: shop}}
//! workloads:
//!   - namespace: shop
//!     name: web
//!     labels: {app: web}
//!     serviceAccount: web          # default "default"
//!     ips: [10.0.0.5, "fd00::5"]
//!     ports: [{name: http, port: 8080, protocol: TCP}]
//!     cgroup: /sys/fs/cgroup/shop/web   # optional cgroup v2 directory
//! ```
//!
//! Every workload's namespace must be listed under `namespaces` (otherwise the inventory is
//! rejected with an error naming `workloads[i].namespace`). The label
//! `kubernetes.io/metadata.name: <name>` is implied on every namespace.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The label every namespace carries with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Namespace {
    /// Name.
    pub name: String,
    /// Labels (`kubernetes.io/metadata.name` is implied).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A named container port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedPort {
    /// Port name (what policies refer to).
    pub name: String,
    /// Port number.
    pub port: u16,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
}

fn default_protocol() -> String {
    "TCP".to_owned()
}

fn default_service_account() -> String {
    "default".to_owned()
}

/// A workload (a pod, or a process group on a host without Kubernetes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    /// Namespace (must be listed in the inventory).
    pub namespace: String,
    /// Name, unique in the namespace.
    pub name: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Service account (default `default`).
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// Addresses; each belongs to one workload only.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// Named ports.
    #[serde(default)]
    pub ports: Vec<NamedPort>,
    /// cgroup v2 directory of the workload's processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

impl Workload {
    /// The workload's reference.
    pub fn reference(&self) -> WorkloadRef {
        WorkloadRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// `namespace/name` of a workload.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkloadRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl WorkloadRef {
    /// Builds a reference.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        WorkloadRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Namespaces and workloads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Inventory {
    /// Namespaces.
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    /// Workloads.
    #[serde(default)]
    pub workloads: Vec<Workload>,
}

impl Inventory {
    /// Parses and validates an inventory document; `file` names it in errors.
    pub fn from_yaml_str(file: &str, text: &str) -> Result<Inventory, Error> {
        let inv: Inventory = serde_yaml_ng::from_str(text).map_err(|e| Error::Parse {
            file: file.to_owned(),
            object: "Inventory".to_owned(),
            message: e.to_string(),
        })?;
        inv.validate(file)?;
        Ok(inv)
    }

    /// Reads, parses and validates an inventory file.
    pub fn load(path: &Path) -> Result<Inventory, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        Inventory::from_yaml_str(&path.display().to_string(), &text)
    }

    /// Checks names, namespaces, protocols, duplicate workloads, ports and addresses.
    pub fn validate(&self, file: &str) -> Result<(), Error> {
        let mut namespaces = BTreeMap::new();
        for (i, ns) in self.namespaces.iter().enumerate() {
            let object = format!("Namespace {}", ns.name);
            if ns.name.is_empty() {
                return Err(Error::invalid(
                    file,
                    &object,
                    format!("namespaces[{i}].name"),
                    "must not be empty",
                ));
            }
            if namespaces.insert(ns.name.as_str(), i).is_some() {
                return Err(Error::invalid(
                    file,
                    &object,
                    format!("namespaces[{i}].name"),
                    "duplicate namespace",
                ));
            }
            if let Some(v) = ns.labels.get(NAMESPACE_NAME_LABEL)
                && v != &ns.name
            {
                return Err(Error::invalid(
                    file,
                    &object,
                    format!("namespaces[{i}].labels.{NAMESPACE_NAME_LABEL}"),
                    format!("must equal the namespace name, not {v:?}"),
                ));
            }
        }
        let mut workloads = BTreeMap::new();
        let mut ips: BTreeMap<IpAddr, String> = BTreeMap::new();
        let mut cgroups: BTreeMap<&str, String> = BTreeMap::new();
        for (i, w) in self.workloads.iter().enumerate() {
            let object = format!("Workload {}/{}", w.namespace, w.name);
            if w.name.is_empty() {
                return Err(Error::invalid(
                    file,
                    &object,
                    format!("workloads[{i}].name"),
                    "must not be empty",
                ));
            }
            if !namespaces.contains_key(w.namespace.as_str()) {
                return Err(Error::invalid(
                    file,
                    &object,
                    format!("workloads[{i}].namespace"),
                    format!("namespace {:?} is not listed under namespaces", w.namespace),
                ));
            }
            if workloads
                .insert((w.namespace.as_str(), w.name.as_str()), i)
                .is_some()
            {
                return Err(Error::invalid(
                    file,
                    &object,
                    format!("workloads[{i}].name"),
                    "duplicate workload",
                ));
            }
            if w.service_account.is_empty() {
                return Err(Error::invalid(
                    file,
                    &object,
                    format!("workloads[{i}].serviceAccount"),
                    "must not be empty",
                ));
            }
            if let Some(cg) = &w.cgroup {
                if !cg.starts_with('/') {
                    return Err(Error::invalid(
                        file,
                        &object,
                        format!("workloads[{i}].cgroup"),
                        format!("{cg:?} is not an absolute path"),
                    ));
                }
                if let Some(other) = cgroups.insert(cg.as_str(), object.clone()) {
                    return Err(Error::invalid(
                        file,
                        &object,
                        format!("workloads[{i}].cgroup"),
                        format!("{cg} already belongs to {other}"),
                    ));
                }
            }
            for (j, ip) in w.ips.iter().enumerate() {
                if let IpAddr::V6(v6) = ip
                    && v6.to_ipv4_mapped().is_some()
                {
                    return Err(Error::invalid(
                        file,
                        &object,
                        format!("workloads[{i}].ips[{j}]"),
                        format!("{ip} is IPv4-mapped: write it as an IPv4 address"),
                    ));
                }
                if let Some(other) = ips.insert(*ip, object.clone()) {
                    return Err(Error::invalid(
                        file,
                        &object,
                        format!("workloads[{i}].ips[{j}]"),
                        format!("{ip} already belongs to {other}"),
                    ));
                }
            }
            let mut names = BTreeMap::new();
            for (j, p) in w.ports.iter().enumerate() {
                if crate::validate::parse_protocol(&p.protocol).is_none() {
                    return Err(Error::invalid(
                        file,
                        &object,
                        format!("workloads[{i}].ports[{j}].protocol"),
                        format!(
                            "unknown protocol {:?} (expected TCP, UDP or SCTP)",
                            p.protocol
                        ),
                    ));
                }
                if p.port == 0 {
                    return Err(Error::invalid(
                        file,
                        &object,
                        format!("workloads[{i}].ports[{j}].port"),
                        "0 is not a valid port",
                    ));
                }
                if p.name.is_empty() {
                    return Err(Error::invalid(
                        file,
                        &object,
                        format!("workloads[{i}].ports[{j}].name"),
                        "must not be empty",
                    ));
                }
                if names
                    .insert((p.name.as_str(), p.protocol.to_ascii_uppercase()), j)
                    .is_some()
                {
                    return Err(Error::invalid(
                        file,
                        &object,
                        format!("workloads[{i}].ports[{j}].name"),
                        format!(
                            "duplicate port name {:?} for protocol {}",
                            p.name, p.protocol
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Labels of namespace `name` including the implied `kubernetes.io/metadata.name`; `None`
    /// when the namespace is not listed.
    pub fn namespace_labels(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let ns = self.namespaces.iter().find(|n| n.name == name)?;
        let mut labels = ns.labels.clone();
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), ns.name.clone());
        Some(labels)
    }

    /// The workload `r`, if present.
    pub fn workload(&self, r: &WorkloadRef) -> Option<&Workload> {
        self.workloads
            .iter()
            .find(|w| w.namespace == r.namespace && w.name == r.name)
    }

    /// The workload that owns address `ip`, if any.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Workload> {
        self.workloads.iter().find(|w| w.ips.contains(&ip))
    }

    /// Replaces the labels of workload `r`; returns false when it does not exist.
    pub fn set_workload_labels(
        &mut self,
        r: &WorkloadRef,
        labels: BTreeMap<String, String>,
    ) -> bool {
        match self
            .workloads
            .iter_mut()
            .find(|w| w.namespace == r.namespace && w.name == r.name)
        {
            Some(w) => {
                w.labels = labels;
                true
            }
            None => false,
        }
    }

    /// Replaces the labels of namespace `name`; returns false when it does not exist.
    pub fn set_namespace_labels(&mut self, name: &str, labels: BTreeMap<String, String>) -> bool {
        match self.namespaces.iter_mut().find(|n| n.name == name) {
            Some(n) => {
                n.labels = labels;
                true
            }
            None => false,
        }
    }
}
