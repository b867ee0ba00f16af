//! The conformance model: namespaces `x`, `y`, `z`, pods `a`, `b`, `c` in each, every pod serving
//! ports 80 and 81 over TCP, UDP and SCTP. Mirrors upstream's `model.go`, plus fixed addresses so
//! that the `ipBlock` cases can name pod IPs.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Deserialize;

/// The namespaces of the model, in truth-table order.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// The pod names in each namespace, in truth-table order.
pub const POD_NAMES: [&str; 3] = ["a", "b", "c"];
/// The ports every pod serves, on every protocol.
pub const PORTS: [u16; 2] = [80, 81];
/// The label the API server puts on every namespace (the only namespace label the model has).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// The service account of every pod.
pub const SERVICE_ACCOUNT: &str = "default";
/// Number of pods, rows and columns of a truth table.
pub const POD_COUNT: usize = NAMESPACES.len() * POD_NAMES.len();

/// One of the nine pods, by position: `x/a` is 0, `x/b` 1, ... `z/c` 8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodId(u8);

impl PodId {
    /// Every pod in truth-table order.
    pub fn all() -> impl Iterator<Item = PodId> {
        (0..POD_COUNT as u8).map(PodId)
    }

    /// The pod at `index` (0..9) in truth-table order.
    pub fn from_index(index: usize) -> Option<PodId> {
        (index < POD_COUNT).then_some(PodId(index as u8))
    }

    /// Position in truth-table order.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// Index of the namespace (x = 0, y = 1, z = 2).
    pub fn namespace_index(self) -> usize {
        self.index() / POD_NAMES.len()
    }

    /// Index of the pod inside its namespace (a = 0, b = 1, c = 2).
    pub fn pod_index(self) -> usize {
        self.index() % POD_NAMES.len()
    }

    pub fn namespace(self) -> &'static str {
        NAMESPACES[self.namespace_index()]
    }

    pub fn name(self) -> &'static str {
        POD_NAMES[self.pod_index()]
    }

    /// Parses `x/a`.
    pub fn parse(text: &str) -> Option<PodId> {
        let (ns, pod) = text.split_once('/')?;
        let ns = NAMESPACES.iter().position(|n| *n == ns)?;
        let pod = POD_NAMES.iter().position(|p| *p == pod)?;
        PodId::from_index(ns * POD_NAMES.len() + pod)
    }

    /// `10.200.<ns>.<pod>` with x = 1, a = 1.
    pub fn ipv4(self) -> Ipv4Addr {
        Ipv4Addr::new(
            10,
            200,
            self.namespace_index() as u8 + 1,
            self.pod_index() as u8 + 1,
        )
    }

    /// `fd00:200::<ns>:<pod>` with x = 1, a = 1.
    pub fn ipv6(self) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd00,
            0x200,
            0,
            0,
            0,
            0,
            self.namespace_index() as u16 + 1,
            self.pod_index() as u16 + 1,
        )
    }

    pub fn address(self, family: IpFamily) -> IpAddr {
        match family {
            IpFamily::IPv4 => IpAddr::V4(self.ipv4()),
            IpFamily::IPv6 => IpAddr::V6(self.ipv6()),
        }
    }
}

impl fmt::Display for PodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace(), self.name())
    }
}

/// Transport protocol of a probe or a container port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
pub enum Protocol {
    TCP,
    UDP,
    SCTP,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::TCP, Protocol::UDP, Protocol::SCTP];

    /// `tcp`, `udp`, `sctp`: the suffix of the container port names.
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::TCP => "tcp",
            Protocol::UDP => "udp",
            Protocol::SCTP => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::TCP => "TCP",
            Protocol::UDP => "UDP",
            Protocol::SCTP => "SCTP",
        })
    }
}

/// Address family a probe connects over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
pub enum IpFamily {
    #[default]
    IPv4,
    IPv6,
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::IPv4 => "IPv4",
            IpFamily::IPv6 => "IPv6",
        })
    }
}

/// A named container port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    /// `serve-<port>-<protocol in lower case>`.
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: &'static str,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub id: PodId,
    pub labels: BTreeMap<String, String>,
    pub service_account: &'static str,
    pub ports: Vec<ContainerPort>,
}

impl Pod {
    pub fn namespace(&self) -> &'static str {
        self.id.namespace()
    }

    pub fn name(&self) -> &'static str {
        self.id.name()
    }
}

/// The inventory a scenario runs against: the standard model, with the labels that the
/// scenario's steps have changed so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    pub namespaces: Vec<Namespace>,
    /// In truth-table order: `pods[id.index()]`.
    pub pods: Vec<Pod>,
}

impl Model {
    /// The model every scenario starts from.
    pub fn standard() -> Model {
        let namespaces = NAMESPACES
            .iter()
            .map(|&name| Namespace {
                name,
                labels: BTreeMap::from([(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned())]),
            })
            .collect();
        let ports: Vec<ContainerPort> = Protocol::ALL
            .iter()
            .flat_map(|&protocol| {
                PORTS.iter().map(move |&port| ContainerPort {
                    name: format!("serve-{port}-{}", protocol.lower()),
                    port,
                    protocol,
                })
            })
            .collect();
        let pods = PodId::all()
            .map(|id| Pod {
                id,
                labels: BTreeMap::from([("pod".to_owned(), id.name().to_owned())]),
                service_account: SERVICE_ACCOUNT,
                ports: ports.clone(),
            })
            .collect();
        Model { namespaces, pods }
    }

    pub fn pod(&self, id: PodId) -> &Pod {
        &self.pods[id.index()]
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.iter().find(|n| n.name == name)
    }

    /// Applies a label change (set, then remove) to one pod.
    pub fn relabel_pod(&mut self, id: PodId, change: &LabelChange) {
        change.apply_to(&mut self.pods[id.index()].labels);
    }

    /// Applies a label change (set, then remove) to one namespace; false if there is no such
    /// namespace.
    pub fn relabel_namespace(&mut self, name: &str, change: &LabelChange) -> bool {
        match self.namespaces.iter_mut().find(|n| n.name == name) {
            Some(ns) => {
                change.apply_to(&mut ns.labels);
                true
            }
            None => false,
        }
    }
}

/// Labels to set (added or overwritten) and keys to remove.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelChange {
    pub set: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

impl LabelChange {
    fn apply_to(&self, labels: &mut BTreeMap<String, String>) {
        for (k, v) in &self.set {
            labels.insert(k.clone(), v.clone());
        }
        for k in &self.remove {
            labels.remove(k);
        }
    }
}

impl fmt::Display for LabelChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.set.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.extend(self.remove.iter().map(|k| format!("{k}-")));
        f.write_str(&parts.join(" "))
    }
}
