//! Numeric identities: the persistent [`AllocationTable`] and what each number means
//! ([`IdentityInfo`]). Ranges and reserved numbers are those of `enforcer_common::identity`.
//!
//! Identity keys are canonical strings:
//! - workload: `w:` + JSON of (namespace labels, workload labels, service account, named ports);
//!   named ports are part of the key so that named ports resolve exactly per identity;
//! - CIDR: `c:` + the normalized CIDR (host bits cleared);
//! - composite (a workload address inside a policy CIDR): `x:` + CIDR + `|` + workload key.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use enforcer_common::identity::{ANY, FIRST_CIDR, FIRST_WORKLOAD, HOST, UNMANAGED, WORLD};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::model::NamedPort;

/// Persistent map from identity key to number. Existing keys keep their numbers (keys are never
/// forgotten, so a label set that comes back gets its old number); new keys get the lowest free
/// number of their range, in sorted key order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AllocationTable {
    entries: BTreeMap<String, u32>,
}

impl AllocationTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of `key`, if allocated.
    pub fn get(&self, key: &str) -> Option<u32> {
        self.entries.get(key).copied()
    }

    /// Every `(key, number)`.
    pub fn entries(&self) -> &BTreeMap<String, u32> {
        &self.entries
    }

    /// Allocates every key of `keys` not yet in the table (sorted order, lowest free number of
    /// the key's range).
    pub(crate) fn allocate(&mut self, keys: &BTreeSet<String>) -> Result<(), Error> {
        let mut used: BTreeSet<u32> = self.entries.values().copied().collect();
        let mut cursor_w = FIRST_WORKLOAD;
        let mut cursor_c = FIRST_CIDR;
        for key in keys {
            if self.entries.contains_key(key) {
                continue;
            }
            let cidr = key.starts_with("c:");
            let (cursor, end, range) = if cidr {
                (&mut cursor_c, u32::MAX, "cidr")
            } else {
                (&mut cursor_w, FIRST_CIDR - 1, "workload")
            };
            while used.contains(cursor) && *cursor < end {
                *cursor += 1;
            }
            if used.contains(cursor) {
                return Err(Error::IdentitiesExhausted {
                    range,
                    key: key.clone(),
                });
            }
            used.insert(*cursor);
            self.entries.insert(key.clone(), *cursor);
        }
        Ok(())
    }
}

/// The label set that makes a workload identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSet {
    /// Namespace name.
    pub namespace: String,
    /// Namespace labels (with `kubernetes.io/metadata.name`).
    pub namespace_labels: BTreeMap<String, String>,
    /// Workload labels.
    pub labels: BTreeMap<String, String>,
    /// Service account.
    pub service_account: String,
    /// Named ports, sorted.
    pub ports: Vec<NamedPort>,
}

impl LabelSet {
    /// The identity key (`w:` + canonical JSON).
    pub fn key(&self) -> String {
        let ports: Vec<(&str, &str, u16)> = self
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.protocol.as_str(), p.port))
            .collect();
        let body = serde_json::to_string(&(
            &self.namespace_labels,
            &self.labels,
            &self.service_account,
            ports,
        ))
        .unwrap_or_default();
        format!("w:{body}")
    }
}

/// Identity key of a CIDR.
pub fn cidr_key(net: &IpNet) -> String {
    format!("c:{net}")
}

/// Identity key of a composite identity.
pub fn composite_key(net: &IpNet, workload_key: &str) -> String {
    format!("x:{net}|{workload_key}")
}

/// What an identity number stands for (for logs and `trace`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum IdentityInfo {
    /// A reserved number (`ANY`, `HOST`, `WORLD`, `UNMANAGED`).
    Reserved {
        /// Its name.
        name: String,
    },
    /// A workload label set.
    Workload(LabelSet),
    /// A policy CIDR.
    Cidr {
        /// The CIDR.
        cidr: IpNet,
    },
    /// A workload label set seen at an address inside a policy CIDR.
    Composite {
        /// The workload identity of the label set.
        workload: u32,
        /// The most specific policy CIDR containing the address.
        cidr: IpNet,
    },
}

/// The reserved identities and their names.
pub fn reserved() -> [(u32, &'static str); 4] {
    [
        (ANY, "any"),
        (HOST, "host"),
        (WORLD, "world"),
        (UNMANAGED, "unmanaged"),
    ]
}

/// An address as the 16-byte key of the address trie (IPv4 as `::ffff:a.b.c.d`).
pub fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// A CIDR as (16-byte address, prefix length) of the trie.
pub fn net_bytes(net: &IpNet) -> ([u8; 16], u32) {
    match net {
        IpNet::V4(n) => (
            n.network().to_ipv6_mapped().octets(),
            96 + u32::from(n.prefix_len()),
        ),
        IpNet::V6(n) => (n.network().octets(), u32::from(n.prefix_len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_is_deterministic_and_stable() {
        let mut t = AllocationTable::new();
        let keys: BTreeSet<String> = ["w:b", "w:a", "c:10.0.0.0/8"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        t.allocate(&keys).unwrap();
        assert_eq!(t.get("w:a"), Some(FIRST_WORKLOAD));
        assert_eq!(t.get("w:b"), Some(FIRST_WORKLOAD + 1));
        assert_eq!(t.get("c:10.0.0.0/8"), Some(FIRST_CIDR));
        // A new key sorting first still gets the next free number; old keys keep theirs.
        let keys: BTreeSet<String> = ["w:0", "w:b"].iter().map(|s| s.to_string()).collect();
        t.allocate(&keys).unwrap();
        assert_eq!(t.get("w:0"), Some(FIRST_WORKLOAD + 2));
        assert_eq!(t.get("w:b"), Some(FIRST_WORKLOAD + 1));
        // Round trip through JSON.
        let json = serde_json::to_string(&t).unwrap();
        let back: AllocationTable = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn lowest_free_number_is_reused() {
        let mut t: AllocationTable = serde_json::from_str(r#"{"w:a": 256, "w:c": 258}"#).unwrap();
        let keys: BTreeSet<String> = ["w:b", "w:d"].iter().map(|s| s.to_string()).collect();
        t.allocate(&keys).unwrap();
        assert_eq!(t.get("w:b"), Some(257));
        assert_eq!(t.get("w:d"), Some(259));
    }
}
