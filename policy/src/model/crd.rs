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
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.podSelector) || has(self.namespaceSelector) || has(self.serviceAccount) || has(self.cidr)", "message": "a peer needs podSelector, namespaceSelector, serviceAccount or cidr"},
    {"rule": "!has(self.cidr) || !(has(self.podSelector) || has(self.namespaceSelector) || has(self.serviceAccount))", "message": "cidr cannot be combined with podSelector, namespaceSelector or serviceAccount"},
    {"rule": "!has(self.except) || has(self.cidr)", "message": "except needs cidr"},
]))]
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
    #[schemars(extend("format" = "cidr"))]
    pub cidr: Option<String>,
    /// Blocks inside `cidr` that are not selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("items" = {"type": "string", "format": "cidr"}))]
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
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.port) || (type(self.port) == string ? size(string(self.port)) > 0 : (int(self.port) >= 1 && int(self.port) <= 65535))", "message": "port must be 1..=65535 or a non-empty name"},
    {"rule": "!has(self.endPort) || (has(self.port) && type(self.port) == int && self.endPort >= int(self.port))", "message": "endPort needs a numeric port and must not be below it"},
]))]
pub struct PortSpec {
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["TCP", "UDP", "SCTP"]))]
    pub protocol: Option<String>,
    /// A number (1..=65535) or a name resolved on the destination workload's ports of this
    /// protocol. Omitted: every port of the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    /// Last port of a range starting at the numeric `port` (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
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
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.notBefore) || !has(self.expiresAt) || self.expiresAt > self.notBefore", "message": "expiresAt must be after notBefore"},
]))]
pub struct Rule {
    /// Optional name, shown in verdict logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Allow`, `Deny`, or (cluster `Admin` tier only) `Pass`.
    pub action: Action,
    /// Ingress peers (OR). Omitted: any peer, including non-workload addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub from: Option<Vec<Peer>>,
    /// Egress peers (OR). Omitted: any peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub to: Option<Vec<Peer>>,
    /// Destination ports (OR). Omitted or empty: every port of every protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub ports: Option<Vec<PortSpec>>,
    /// RFC 3339 instant from which the rule applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub not_before: Option<String>,
    /// RFC 3339 instant at which the rule stops applying (exclusive); after `notBefore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
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
    derive = "PartialEq",
    doc = "Namespaced Bulkhead segmentation policy (see docs/policy.md)",
    status = "super::status::PolicyStatus",
    shortname = "segpol",
    category = "bulkhead",
    printcolumn = r#"{"name": "Mode", "type": "string", "jsonPath": ".spec.mode"}"#,
    printcolumn = r#"{"name": "Priority", "type": "integer", "jsonPath": ".spec.priority"}"#,
    printcolumn = r#"{"name": "Valid", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Valid\")].status"}"#,
    printcolumn = r#"{"name": "Realized", "type": "integer", "description": "nodes enforcing the current generation", "jsonPath": ".status.realizedNodes"}"#,
    printcolumn = r#"{"name": "Desired", "type": "integer", "description": "nodes that must enforce the policy", "jsonPath": ".status.desiredNodes"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.ingress) || self.ingress.all(r, !has(r.to))", "message": "an ingress rule has from, not to"},
    {"rule": "!has(self.egress) || self.egress.all(r, !has(r.from))", "message": "an egress rule has to, not from"},
    {"rule": "(!has(self.ingress) || self.ingress.all(r, r.action != 'Pass')) && (!has(self.egress) || self.egress.all(r, r.action != 'Pass'))", "message": "Pass is only allowed in a ClusterSegmentationPolicy of tier Admin"},
]))]
pub struct SegmentationPolicySpec {
    /// `Enforce` (default) or `Audit`.
    #[serde(default)]
    pub mode: Mode,
    /// 0..=1000, lower is evaluated first; default 500.
    #[serde(default = "default_priority")]
    #[schemars(range(min = 0, max = 1000))]
    pub priority: i32,
    /// The workloads of this namespace the policy applies to.
    #[serde(default)]
    pub subject: Subject,
    /// Ingress rules; present (even `[]`) isolates the subjects for ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub ingress: Option<Vec<Rule>>,
    /// Egress rules; present (even `[]`) isolates the subjects for egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
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
    derive = "PartialEq",
    doc = "Cluster-scoped Bulkhead segmentation policy (see docs/policy.md)",
    status = "super::status::PolicyStatus",
    shortname = "csegpol",
    category = "bulkhead",
    printcolumn = r#"{"name": "Tier", "type": "string", "jsonPath": ".spec.tier"}"#,
    printcolumn = r#"{"name": "Mode", "type": "string", "jsonPath": ".spec.mode"}"#,
    printcolumn = r#"{"name": "Priority", "type": "integer", "jsonPath": ".spec.priority"}"#,
    printcolumn = r#"{"name": "Valid", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Valid\")].status"}"#,
    printcolumn = r#"{"name": "Realized", "type": "integer", "description": "nodes enforcing the current generation", "jsonPath": ".status.realizedNodes"}"#,
    printcolumn = r#"{"name": "Desired", "type": "integer", "description": "nodes that must enforce the policy", "jsonPath": ".status.desiredNodes"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.ingress) || self.ingress.all(r, !has(r.to))", "message": "an ingress rule has from, not to"},
    {"rule": "!has(self.egress) || self.egress.all(r, !has(r.from))", "message": "an egress rule has to, not from"},
    {"rule": "self.tier == 'Admin' || ((!has(self.ingress) || self.ingress.all(r, r.action != 'Pass')) && (!has(self.egress) || self.egress.all(r, r.action != 'Pass')))", "message": "Pass is only allowed in the Admin tier"},
]))]
pub struct ClusterSegmentationPolicySpec {
    /// `Admin` (default) or `Baseline`.
    #[serde(default)]
    pub tier: Tier,
    /// `Enforce` (default) or `Audit`.
    #[serde(default)]
    pub mode: Mode,
    /// 0..=1000, lower is evaluated first; default 500.
    #[serde(default = "default_priority")]
    #[schemars(range(min = 0, max = 1000))]
    pub priority: i32,
    /// The workloads the policy applies to.
    #[serde(default)]
    pub subject: ClusterSubject,
    /// Ingress rules (cluster policies never isolate: unmatched traffic falls through).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub ingress: Option<Vec<Rule>>,
    /// Egress rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
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
