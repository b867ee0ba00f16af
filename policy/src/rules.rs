//! Rule attribution: [`Direction`], [`RuleRef`] and the deterministic [`rule_id`] that the kernel
//! writes into verdict events, so a restarted enforcer attributes its predecessor's events.

use serde::{Deserialize, Serialize};

use crate::model::Kind;

/// Traffic direction seen from the local workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// Traffic towards the local workload (decided at the destination).
    Ingress,
    /// Traffic from the local workload (decided at the source).
    Egress,
}

impl Direction {
    /// `enforcer_common::DIR_*`.
    pub fn to_raw(self) -> u8 {
        match self {
            Direction::Ingress => enforcer_common::DIR_INGRESS,
            Direction::Egress => enforcer_common::DIR_EGRESS,
        }
    }

    /// Lower-case name (`ingress`/`egress`), as used in field paths and rule ids.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// A rule, or (with `index: None`) a policy as a whole, for default-deny attribution.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleRef {
    /// Policy kind.
    pub kind: Kind,
    /// Policy namespace (None for cluster policies).
    pub namespace: Option<String>,
    /// Policy name.
    pub name: String,
    /// Rule direction.
    pub direction: Direction,
    /// Index in `spec.ingress`/`spec.egress`; None: the policy itself (it isolates).
    pub index: Option<u32>,
    /// The rule's `name`, if it has one.
    pub rule_name: Option<String>,
}

impl RuleRef {
    /// The rule id of this reference (see [`rule_id`]).
    pub fn id(&self) -> u32 {
        rule_id(
            self.kind,
            self.namespace.as_deref(),
            &self.name,
            self.direction,
            self.index,
        )
    }
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name)?,
            None => write!(f, "{} {}", self.kind, self.name)?,
        }
        match self.index {
            Some(i) => write!(f, " {}[{i}]", self.direction.as_str())?,
            None => write!(f, " {} (isolation)", self.direction.as_str())?,
        }
        if let Some(n) = &self.rule_name {
            write!(f, " {n:?}")?;
        }
        Ok(())
    }
}

/// Deterministic rule id: 32-bit FNV-1a of `kind/namespace/name/direction/index` (index `-` for
/// the policy itself), never 0 (`RULE_NONE`). Collisions are detected by the compiler.
pub fn rule_id(
    kind: Kind,
    namespace: Option<&str>,
    name: &str,
    direction: Direction,
    index: Option<u32>,
) -> u32 {
    let index = index.map_or_else(|| "-".to_owned(), |i| i.to_string());
    let text = format!(
        "{}/{}/{}/{}/{}",
        kind.as_str(),
        namespace.unwrap_or(""),
        name,
        direction.as_str(),
        index
    );
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    if h == enforcer_common::RULE_NONE {
        1
    } else {
        h
    }
}
