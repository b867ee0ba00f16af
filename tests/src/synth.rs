//! A synthetic cluster for benchmarks: namespaces, workloads and policies generated
//! deterministically as YAML, so the benchmark measures the same input on every run.
//!
//! Shape (documented in the README next to the numbers): every namespace has `workloads_per_ns`
//! workloads with five distinct label sets (`app-0` .. `app-4`, replicas share labels), two
//! namespace-scoped policies (a `NetworkPolicy` for the web tier with a same-namespace and a
//! cross-namespace peer, and an egress policy with a port range and a CIDR with `except`; every
//! tenth namespace uses a `SegmentationPolicy` with a deny rule in audit mode instead), and a
//! handful of cluster-wide policies.

use std::fmt::Write as _;

/// Size of the synthetic cluster.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub namespaces: usize,
    pub workloads_per_ns: usize,
}

impl Shape {
    /// The benchmark: 10,000 workloads in 1,000 namespaces, 2,000 namespaced policies.
    pub const LARGE: Shape = Shape {
        namespaces: 1000,
        workloads_per_ns: 10,
    };
}

pub fn namespace(i: usize) -> String {
    format!("ns-{i:04}")
}

/// The inventory as YAML.
pub fn inventory_yaml(shape: Shape) -> String {
    let mut out = String::from("namespaces:\n");
    for i in 0..shape.namespaces {
        let env = if i.is_multiple_of(2) {
            "prod"
        } else {
            "staging"
        };
        let _ = writeln!(
            out,
            "  - name: {}\n    labels: {{team: team-{}, env: {env}}}",
            namespace(i),
            i % 20
        );
    }
    out.push_str("workloads:\n");
    for i in 0..shape.namespaces {
        for j in 0..shape.workloads_per_ns {
            let app = j % 5;
            let _ = writeln!(
                out,
                "  - namespace: {ns}\n    name: w-{j}\n    labels: {{app: app-{app}}}\n    \
                 serviceAccount: app-{app}\n    ips: [10.{a}.{b}.{c}]\n    ports:\n      \
                 - {{name: http, port: 8080, protocol: TCP}}\n      \
                 - {{name: metrics, port: 9090, protocol: TCP}}\n      \
                 - {{name: dns, port: 53, protocol: UDP}}",
                ns = namespace(i),
                a = i / 256,
                b = i % 256,
                c = j + 1,
            );
        }
    }
    out
}

/// The namespaced policy pair of namespace `i`, as YAML documents. `variant` changes the web
/// policy's port so an edit can be benchmarked.
pub fn namespace_policies_yaml(i: usize, variant: u16) -> String {
    let ns = namespace(i);
    let team = (i + 1) % 20;
    let web_port = 8080 + variant;
    let mut out = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: allow-web, namespace: {ns}}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: app-0}}}}\n  policyTypes: [Ingress]\n  ingress:\n  \
         - from:\n    - podSelector: {{matchLabels: {{app: app-1}}}}\n    ports:\n    - {{protocol: TCP, port: {web_port}}}\n  \
         - from:\n    - namespaceSelector: {{matchLabels: {{team: team-{team}}}}}\n      podSelector: {{matchLabels: {{app: app-2}}}}\n    \
         ports:\n    - {{protocol: TCP, port: http}}\n---\n"
    );
    if i.is_multiple_of(10) {
        let _ = write!(
            out,
            "apiVersion: bulkhead.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {{name: db, namespace: {ns}}}\n\
             spec:\n  mode: Audit\n  priority: 100\n  subject:\n    podSelector: {{matchLabels: {{app: app-3}}}}\n  \
             egress:\n  - action: Deny\n    to:\n    - cidr: 198.51.{a}.{b}/32\n  \
             - action: Allow\n    to:\n    - podSelector: {{matchLabels: {{app: app-4}}}}\n    ports:\n    \
             - {{protocol: TCP, port: 5432, endPort: 5440}}\n---\n",
            a = i / 256,
            b = i % 256,
        );
    } else {
        let _ = write!(
            out,
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: db-egress, namespace: {ns}}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: app-3}}}}\n  policyTypes: [Egress]\n  egress:\n  \
             - to:\n    - podSelector: {{matchLabels: {{app: app-4}}}}\n    ports:\n    \
             - {{protocol: TCP, port: 5432, endPort: 5440}}\n  \
             - to:\n    - ipBlock: {{cidr: 198.51.{a}.0/24, except: [198.51.{a}.{b}/32]}}\n---\n",
            a = i / 256,
            b = i % 256,
        );
    }
    out
}

/// Cluster-wide policies: narrow peers (one namespace, one CIDR), as real clusters use them.
pub fn cluster_policies_yaml() -> String {
    "apiVersion: bulkhead.dev/v1alpha1\nkind: ClusterSegmentationPolicy\nmetadata: {name: deny-metadata}\n\
     spec:\n  tier: Admin\n  priority: 10\n  subject: {namespaceSelector: {}}\n  egress:\n  \
     - action: Deny\n    to:\n    - cidr: 169.254.169.254/32\n---\n\
     apiVersion: bulkhead.dev/v1alpha1\nkind: ClusterSegmentationPolicy\nmetadata: {name: allow-dns}\n\
     spec:\n  tier: Admin\n  priority: 20\n  subject: {namespaceSelector: {}}\n  egress:\n  \
     - action: Allow\n    to:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ns-0000}}\n      \
     podSelector: {matchLabels: {app: app-4}}\n    ports:\n    - {protocol: UDP, port: 53}\n---\n\
     apiVersion: bulkhead.dev/v1alpha1\nkind: ClusterSegmentationPolicy\nmetadata: {name: baseline-world}\n\
     spec:\n  tier: Baseline\n  priority: 10\n  subject: {namespaceSelector: {matchLabels: {env: prod}}}\n  ingress:\n  \
     - action: Deny\n    from:\n    - cidr: 203.0.113.0/24\n---\n"
        .to_owned()
}

/// Every policy of the shape, as one multi-document YAML text.
pub fn policies_yaml(shape: Shape) -> String {
    let mut out = cluster_policies_yaml();
    for i in 0..shape.namespaces {
        out.push_str(&namespace_policies_yaml(i, 0));
    }
    out
}
