//! The validated, normalized form of every policy kind that the compiler works on. Produced by
//! [`crate::validate`]; NetworkPolicy defaulting (policyTypes, missing protocol = TCP, peers in
//! the policy's own namespace) is already applied here.

use ipnet::IpNet;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::model::ObjectKey;
use crate::rules::{Direction, RuleRef};

/// Evaluation tier; the derive order is the precedence order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Tier {
    Admin,
    /// SegmentationPolicy (`netpol == false`) then NetworkPolicy.
    Namespace,
    Baseline,
}

/// Rule action; the derive order is the tie-break at equal priority (deny first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Action {
    Deny,
    Allow,
    Pass,
}

/// Who a policy applies to.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Subject {
    /// Fixed namespace (namespaced kinds).
    pub namespace: Option<String>,
    /// Namespace selector (cluster kinds); None = all.
    pub namespace_selector: Option<LabelSelector>,
    /// None = all pods.
    pub pod_selector: Option<LabelSelector>,
    /// Empty = any.
    pub service_accounts: Vec<String>,
}

/// One peer.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Peer {
    Workloads {
        /// Fixed namespace (peer without namespaceSelector in a namespaced policy).
        namespace: Option<String>,
        namespace_selector: Option<LabelSelector>,
        pod_selector: Option<LabelSelector>,
        /// (namespace, name).
        service_account: Option<(Option<String>, String)>,
    },
    Cidr {
        net: IpNet,
        except: Vec<IpNet>,
    },
}

/// One port clause.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Port {
    /// Inclusive range of a protocol (all ports of the protocol: 0..=65535).
    Range { protocol: u8, start: u16, end: u16 },
    /// Named port, resolved on the destination workload.
    Named { protocol: u8, name: String },
}

/// One rule.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Rule {
    pub direction: Direction,
    pub action: Action,
    /// None = any peer.
    pub peers: Option<Vec<Peer>>,
    /// None = all ports of all protocols.
    pub ports: Option<Vec<Port>>,
    pub not_before: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub rule: RuleRef,
    pub rule_id: u32,
}

impl Rule {
    /// Whether the rule applies at instant `at` (`notBefore <= at < expiresAt`).
    pub fn active_at(&self, at: Timestamp) -> bool {
        self.not_before.is_none_or(|t| t <= at) && self.expires_at.is_none_or(|t| at < t)
    }
}

/// One policy.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Policy {
    pub key: ObjectKey,
    pub tier: Tier,
    /// A NetworkPolicy (after SegmentationPolicies in the namespace tier, priority unused).
    pub netpol: bool,
    pub audit: bool,
    pub priority: u32,
    pub subject: Subject,
    /// Namespace tier only: whether the policy isolates its subjects (ingress, egress).
    pub isolates: [Option<(RuleRef, u32)>; 2],
    pub rules: Vec<Rule>,
    /// Hash of everything above (set by [`Policy::seal`]), for the compiler's incremental cache.
    pub fingerprint: u64,
}

impl Policy {
    /// Computes the fingerprint.
    pub fn seal(mut self) -> Self {
        use std::hash::{Hash, Hasher};
        self.fingerprint = 0;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        format!("{self:?}").hash(&mut h);
        self.fingerprint = h.finish();
        self
    }
}

/// Index of a direction in `[ingress, egress]` arrays.
pub(crate) fn dir_index(d: Direction) -> usize {
    match d {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}
