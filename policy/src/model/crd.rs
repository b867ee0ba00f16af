//! The `bulkhead.dev/v1alpha1` custom resources: [`SegmentationPolicy`] (namespaced) and
//! [`ClusterSegmentationPolicy`] (cluster-scoped), in the spirit of AdminNetworkPolicy and Cilium.
//!
//! Every field is documented in `docs/policy.md`. Values that need a precise error message
//! (CIDRs, timestamps) are kept as strings here and checked by [`crate::validate`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Whether a policy's decisions are enforced or only reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Mode {
    /// Decisions are enforced (default).
    #[default]
    Enforce,
    /// Traffic this policy would deny flows, and is logged with verdict `AUDIT`.
    Audit,
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Action {
    /// Admit the traffic.
    Allow,
    /// Refuse the traffic.
    Deny,
    /// Cluster `Admin` tier only: stop evaluating the admin tier and continue with the
    /// namespace tier (SegmentationPolicy and NetworkPolicy).
    Pass,
}

/// Tier of a [`ClusterSegmentationPolicy`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Tier {
    /// Evaluated before every namespace policy (default).
    #[default]
    Admin,
    /// Evaluated after the namespace tier, only for workloads no namespace policy isolates.
    Baseline,
}

/// A service account reference in a peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountRef {
    /// Service account name.
    pub name: String,
    /// Its namespace; omitted: the namespaces the rest of the peer selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// One peer of a rule: either workloads (`podSelector`/`namespaceSelector`/`serviceAccount`,
/// all given fields ANDed) or addresses (`cidr` with optional `except`), never both.
///
/// ```yaml
/// - podSelector: {matchLabels: {app: frontend}}
///   namespaceSelector: {matchLabels: {team: shop}}
/// - cidr: 203.0.113.0/24
///   except: [203.0.113.128/25]
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    /// Pods by label. Without `namespaceSelector`: in the policy's own namespace
    /// (cluster policies: in every namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces by label; with `podSelector`, both must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Only workloads running as this service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountRef>,
    /// An address block (`10.0.0.0/8`, `2001:db8::/32`); matches pod addresses too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// Blocks inside `cidr` that are not selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<Vec<String>>,
}

/// A port, a port range or a named port.
///
/// ```yaml
/// - {protocol: TCP, port: 8080, endPort: 8090}
/// - {protocol: UDP, port: dns}
/// - {protocol: SCTP}            # every SCTP port
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSpec {
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// A number (1..=65535) or a name resolved on the destination workload's ports of this
    /// protocol. Omitted: every port of the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    /// Last port of a range starting at the numeric `port` (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,
}

/// One ingress or egress rule.
///
/// ```yaml
/// - name: from-frontend
///   action: Allow
///   from: [{podSelector: {matchLabels: {app: frontend}}}]
///   ports: [{protocol: TCP, port: 8080}]
///   expiresAt: "2026-11-27T18:00:00Z"
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Optional name, shown in verdict logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Allow`, `Deny`, or (cluster `Admin` tier only) `Pass`.
    pub action: Action,
    /// Ingress peers (OR). Omitted: any peer, including non-workload addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<Peer>>,
    /// Egress peers (OR). Omitted: any peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<Peer>>,
    /// Destination ports (OR). Omitted or empty: every port of every protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PortSpec>>,
    /// RFC 3339 instant from which the rule applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// RFC 3339 instant at which the rule stops applying (exclusive); after `notBefore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// The workloads a namespaced policy applies to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subject {
    /// Pods of the policy's namespace; omitted or `{}`: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Only pods running as one of these service accounts; omitted or empty: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<Vec<String>>,
}

/// The workloads a cluster policy applies to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSubject {
    /// Namespaces by label; omitted or `{}`: all namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Pods by label; omitted or `{}`: all pods of the selected namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Only pods running as a service account of one of these names; omitted or empty: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<Vec<String>>,
}

/// Namespaced segmentation policy.
///
/// ```yaml
/// apiVersion: bulkhead.dev/v1alpha1
/// kind: SegmentationPolicy
/// metadata: {name: web, namespace: shop}
/// spec:
///   priority: 100
///   subject: {podSelector: {matchLabels: {app: web}}}
///   ingress:
///     - action: Allow
///       from: [{podSelector: {matchLabels: {app: frontend}}}]
///       ports: [{port: 8080}]
/// ```
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "bulkhead.dev",
    version = "v1alpha1",
    kind = "SegmentationPolicy",
    namespaced,
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SegmentationPolicySpec {
    /// `Enforce` (default) or `Audit`.
    #[serde(default)]
    pub mode: Mode,
    /// 0..=1000, lower is evaluated first; default 500.
    #[serde(default = "default_priority")]
    pub priority: i32,
    /// The workloads of this namespace the policy applies to.
    #[serde(default)]
    pub subject: Subject,
    /// Ingress rules; present (even `[]`) isolates the subjects for ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<Rule>>,
    /// Egress rules; present (even `[]`) isolates the subjects for egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<Rule>>,
}

/// Cluster-scoped segmentation policy, in tier `Admin` (before namespace policies, may `Pass`)
/// or `Baseline` (after them, for non-isolated workloads only).
///
/// ```yaml
/// apiVersion: bulkhead.dev/v1alpha1
/// kind: ClusterSegmentationPolicy
/// metadata: {name: no-metadata-service}
/// spec:
///   tier: Admin
///   priority: 10
///   subject: {namespaceSelector: {}}
///   egress:
///     - action: Deny
///       to: [{cidr: 169.254.169.254/32}]
/// ```
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "bulkhead.dev",
    version = "v1alpha1",
    kind = "ClusterSegmentationPolicy",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSegmentationPolicySpec {
    /// `Admin` (default) or `Baseline`.
    #[serde(default)]
    pub tier: Tier,
    /// `Enforce` (default) or `Audit`.
    #[serde(default)]
    pub mode: Mode,
    /// 0..=1000, lower is evaluated first; default 500.
    #[serde(default = "default_priority")]
    pub priority: i32,
    /// The workloads the policy applies to.
    #[serde(default)]
    pub subject: ClusterSubject,
    /// Ingress rules (cluster policies never isolate: unmatched traffic falls through).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<Rule>>,
    /// Egress rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<Rule>>,
}

fn default_priority() -> i32 {
    500
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    #[test]
    fn crds_generate_with_scope_and_schema() {
        let sp = SegmentationPolicy::crd();
        assert_eq!(
            sp.metadata.name.as_deref(),
            Some("segmentationpolicies.bulkhead.dev")
        );
        assert_eq!(sp.spec.scope, "Namespaced");
        let csp = ClusterSegmentationPolicy::crd();
        assert_eq!(
            csp.metadata.name.as_deref(),
            Some("clustersegmentationpolicies.bulkhead.dev")
        );
        assert_eq!(csp.spec.scope, "Cluster");
        let schema = serde_json::to_string(&csp.spec.versions[0].schema).unwrap();
        for field in [
            "tier",
            "priority",
            "namespaceSelector",
            "notBefore",
            "expiresAt",
            "endPort",
            "except",
        ] {
            assert!(schema.contains(field), "schema lacks {field}");
        }
    }

    #[test]
    fn defaults_apply() {
        let spec: SegmentationPolicySpec = serde_yaml_ng::from_str("ingress: []").unwrap();
        assert_eq!((spec.mode, spec.priority), (Mode::Enforce, 500));
        let spec: ClusterSegmentationPolicySpec = serde_yaml_ng::from_str("{}").unwrap();
        assert_eq!(spec.tier, Tier::Admin);
    }
}
