//! Unit tests of the semantics, each checked on the compiled evaluator AND the spec oracle:
//! precedence, pass, audit, windows at their boundary instants, service accounts, CIDRs with
//! pod addresses, named ports, ranges, policyTypes defaulting.

mod common;

use bulkhead_policy::{Kind, Protocol, Reason, Verdict};
use common::*;

#[test]
fn lower_priority_number_wins() {
    let set = policies(
        r#"
apiVersion: bulkhead.dev/v1alpha1
kind: SegmentationPolicy
metadata: {name: p, namespace: x}
spec:
  priority: 10
  subject: {podSelector: {matchLabels: {pod: b}}}
  ingress: [{action: Deny, name: deny-all}]
---
apiVersion: bulkhead.dev/v1alpha1
kind: SegmentationPolicy
metadata: {name: q, namespace: x}
spec:
  priority: 5
  subject: {podSelector: {matchLabels: {pod: b}}}
  ingress: [{action: Allow, from: [{podSelector: {matchLabels: {pod: a}}}]}]
"#,
    );
    let d = decide(&set, wl("x", "a"), wl("x", "b"), Protocol::Tcp, 80);
    assert_eq!(
        (d.verdict, d.ingress.reason),
        (Verdict::Allow, Reason::AllowedByRule)
    );
    assert_eq!(d.ingress.rule.unwrap().name, "q");
    let d = decide(&set, wl("y", "c"), wl("x", "b"), Protocol::Tcp, 80);
    assert_eq!(
        (d.verdict, d.ingress.reason),
        (Verdict::Deny, Reason::DeniedByRule)
    );
    assert_eq!(
        d.ingress.rule.unwrap().rule_name.as_deref(),
        Some("deny-all")
    );
}

#[test]
fn deny_beats_allow_at_equal_priority() {
    let set = policies(
        r#"
apiVersion: bulkhead.dev/v1alpha1
kind: SegmentationPolicy
metadata: {name: allow, namespace: x}
spec:
  priority: 7
  ingress: [{action: Allow}]
---
apiVersion: bulkhead.dev/v1alpha1
kind: SegmentationPolicy
metadata: {name: deny, namespace: x}
spec:
  priority: 7
  ingress: [{action: Deny, ports: [{port: 80}]}]
"#,
    );
    let d = decide(&set, wl("y", "c"), wl("x", "a"), Protocol::Tcp, 80);
    assert_eq!(
        (d.verdict, d.ingress.rule.unwrap().name.as_str()),
        (Verdict::Deny, "deny")
    );
    let d = decide(&set, wl("y", "c"), wl("x", "a"), Protocol::Tcp, 81);
    assert_eq!(
        (d.verdict, d.ingress.rule.unwrap().name.as_str()),
        (Verdict::Allow, "allow")
    );
}

#[test]
fn admin_pass_defers_to_namespace_tier_and_baseline_applies_only_when_not_isolated() {
    let set = policies(
        r#"
apiVersion: bulkhead.dev/v1alpha1
kind: ClusterSegmentationPolicy
metadata: {name: admin}
spec:
  priority: 1
  ingress: [{action: Pass, from: [{namespaceSelector: {matchLabels: {team: red}}}]}]
---
apiVersion: bulkhead.dev/v1alpha1
kind: ClusterSegmentationPolicy
metadata: {name: admin-deny}
spec:
  priority: 2
  ingress: [{action: Deny}]
---
apiVersion: bulkhead.dev/v1alpha1
kind: ClusterSegmentationPolicy
metadata: {name: baseline}
spec:
  tier: Baseline
  ingress: [{action: Deny}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]
"#,
    );
    // x/a -> x/b: admin passes, the NetworkPolicy allows.
    let d = decide(&set, wl("x", "a"), wl("x", "b"), Protocol::Tcp, 80);
    assert_eq!(
        (d.verdict, d.ingress.rule.unwrap().kind),
        (Verdict::Allow, Kind::NetworkPolicy)
    );
    // x/b -> x/a: admin passes, x/a is not isolated, baseline denies.
    let d = decide(&set, wl("x", "b"), wl("x", "a"), Protocol::Tcp, 80);
    assert_eq!(
        (d.verdict, d.ingress.rule.unwrap().name.as_str()),
        (Verdict::Deny, "baseline")
    );
    // x/b -> x/b (self): admin passes, np isolates and does not admit b: default deny.
    let d = decide(&set, wl("x", "b"), wl("x", "b"), Protocol::Tcp, 80);
    assert_eq!(d.ingress.reason, Reason::DefaultDeny);
    assert_eq!(d.ingress.rule.unwrap().index, None);
    // y/c -> x/b: the pass does not match; the next admin policy denies.
    let d = decide(&set, wl("y", "c"), wl("x", "b"), Protocol::Tcp, 80);
    assert_eq!(
        (d.ingress.rule.unwrap().name.as_str(), d.ingress.reason),
        ("admin-deny", Reason::DeniedByRule)
    );
}

#[test]
fn audit_mode_reports_without_denying() {
    let set = policies(
        r#"
apiVersion: bulkhead.dev/v1alpha1
kind: SegmentationPolicy
metadata: {name: trial, namespace: x}
spec:
  mode: Audit
  subject: {podSelector: {matchLabels: {pod: a}}}
  ingress: [{action: Allow, from: [{podSelector: {matchLabels: {pod: b}}}]}]
"#,
    );
    let d = decide(&set, wl("y", "c"), wl("x", "a"), Protocol::Tcp, 80);
    assert_eq!(
        (d.verdict, d.ingress.verdict, d.ingress.reason),
        (Verdict::Audit, Verdict::Audit, Reason::DefaultDeny)
    );
    assert_eq!(d.ingress.rule.unwrap().name, "trial");
    let d = decide(&set, wl("x", "b"), wl("x", "a"), Protocol::Tcp, 80);
    assert_eq!(
        (d.verdict, d.ingress.reason),
        (Verdict::Allow, Reason::NotIsolated)
    );
}

#[test]
fn windows_apply_exactly_at_their_boundaries() {
    let set = policies(
        r#"
apiVersion: bulkhead.dev/v1alpha1
kind: SegmentationPolicy
metadata: {name: maint, namespace: x}
spec:
  subject: {podSelector: {matchLabels: {pod: a}}}
  ingress:
    - action: Allow
      from: [{namespaceSelector: {}}]
      notBefore: "2026-11-27T10:00:00Z"
      expiresAt: "2026-11-27T18:00:00Z"
"#,
    );
    let inv = inventory();
    let at = |compiled: &str, flow: &str| {
        decide_at(
            &set,
            &inv,
            wl("y", "c"),
            wl("x", "a"),
            Protocol::Tcp,
            80,
            t(compiled),
            t(flow),
        )
        .verdict
    };
    assert_eq!(
        at(
            "2026-11-27T09:59:59.999999999Z",
            "2026-11-27T09:59:59.999999999Z"
        ),
        Verdict::Deny
    );
    assert_eq!(
        at("2026-11-27T10:00:00Z", "2026-11-27T10:00:00Z"),
        Verdict::Allow
    );
    assert_eq!(
        at(
            "2026-11-27T17:59:59.999999999Z",
            "2026-11-27T17:59:59.999999999Z"
        ),
        Verdict::Allow
    );
    assert_eq!(
        at("2026-11-27T18:00:00Z", "2026-11-27T18:00:00Z"),
        Verdict::Deny
    );
    // The kernel stops honouring the grant at the instant, without a recompile.
    let state = compile(&set, &inv, t(NOON));
    assert_eq!(state.next_change, Some(t("2026-11-27T18:00:00Z")));
    let flow = bulkhead_policy::Flow {
        src: wl("y", "c"),
        dst: wl("x", "a"),
        protocol: Protocol::Tcp,
        port: 80,
        at: t("2026-11-27T18:00:00Z"),
    };
    assert_eq!(
        bulkhead_policy::evaluate(&state, &flow).verdict,
        Verdict::Deny
    );
}

#[test]
fn service_account_selection() {
    let set = policies(
        r#"
apiVersion: bulkhead.dev/v1alpha1
kind: SegmentationPolicy
metadata: {name: sa, namespace: x}
spec:
  subject: {serviceAccounts: [robot]}
  egress: [{action: Allow, to: [{serviceAccount: {name: default, namespace: x}}]}]
"#,
    );
    // Only x/b runs as robot: it is isolated for egress.
    assert_eq!(
        decide(&set, wl("x", "b"), wl("x", "a"), Protocol::Tcp, 80).verdict,
        Verdict::Allow
    );
    let d = decide(&set, wl("x", "b"), wl("y", "c"), Protocol::Tcp, 80);
    assert_eq!(
        (d.verdict, d.egress.reason),
        (Verdict::Deny, Reason::DefaultDeny)
    );
    assert_eq!(
        decide(&set, wl("x", "a"), wl("y", "c"), Protocol::Tcp, 80)
            .egress
            .reason,
        Reason::NotIsolated
    );
}

#[test]
fn cidr_longest_prefix_and_except_cover_pod_addresses() {
    let set = policies(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
    - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.1.0/24]}}]
---
apiVersion: bulkhead.dev/v1alpha1
kind: SegmentationPolicy
metadata: {name: deny-b, namespace: x}
spec:
  subject: {podSelector: {matchLabels: {pod: a}}}
  egress: [{action: Deny, to: [{cidr: 10.0.0.2/32}]}]
"#,
    );
    // x/b (10.0.0.2) is inside 10.0.0.0/8 but the more specific /32 denies it.
    let d = decide(&set, wl("x", "a"), wl("x", "b"), Protocol::Tcp, 80);
    assert_eq!(
        (d.verdict, d.egress.rule.unwrap().name.as_str()),
        (Verdict::Deny, "deny-b")
    );
    // y/c (10.0.1.3) is in the except: default deny.
    assert_eq!(
        decide(&set, wl("x", "a"), wl("y", "c"), Protocol::Tcp, 80)
            .egress
            .reason,
        Reason::DefaultDeny
    );
    // An outside address inside the CIDR is allowed; one outside is denied.
    assert_eq!(
        decide(&set, wl("x", "a"), ip("10.200.0.1"), Protocol::Tcp, 80)
            .egress
            .reason,
        Reason::AllowedByRule
    );
    assert_eq!(
        decide(&set, wl("x", "a"), ip("192.0.2.1"), Protocol::Tcp, 80)
            .egress
            .reason,
        Reason::DefaultDeny
    );
    // The address of a workload is that workload.
    assert_eq!(
        decide(&set, wl("x", "a"), ip("10.0.0.2"), Protocol::Tcp, 80).verdict,
        Verdict::Deny
    );
    // An IPv4-mapped IPv6 address is the IPv4 address.
    assert_eq!(
        decide(&set, wl("x", "a"), ip("::ffff:10.0.0.2"), Protocol::Tcp, 80).verdict,
        Verdict::Deny
    );
    assert_eq!(
        decide(
            &set,
            wl("x", "a"),
            ip("::ffff:10.200.0.1"),
            Protocol::Tcp,
            80
        )
        .egress
        .reason,
        Reason::AllowedByRule
    );
    // An IPv6 destination is not inside an IPv4 CIDR.
    assert_eq!(
        decide(&set, wl("x", "a"), ip("fd00::9"), Protocol::Tcp, 80)
            .egress
            .reason,
        Reason::DefaultDeny
    );
}

#[test]
fn named_ports_resolve_per_destination_and_protocol() {
    let set = policies(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{ports: [{port: http}]}]
  egress: [{ports: [{port: http}, {protocol: UDP, port: dns}]}]
"#,
    );
    // Ingress at x/a: http = 8080/TCP; at x/b: 9090/TCP.
    assert_eq!(
        decide(&set, ip("192.0.2.1"), wl("x", "a"), Protocol::Tcp, 8080)
            .ingress
            .reason,
        Reason::AllowedByRule
    );
    assert_eq!(
        decide(&set, ip("192.0.2.1"), wl("x", "a"), Protocol::Tcp, 9090)
            .ingress
            .reason,
        Reason::DefaultDeny
    );
    assert_eq!(
        decide(&set, ip("192.0.2.1"), wl("x", "b"), Protocol::Tcp, 9090)
            .ingress
            .reason,
        Reason::AllowedByRule
    );
    assert_eq!(
        decide(&set, ip("192.0.2.1"), wl("x", "a"), Protocol::Udp, 8080)
            .ingress
            .reason,
        Reason::DefaultDeny
    );
    // Egress from x/b: named ports resolve on the destination.
    assert_eq!(
        decide(&set, wl("x", "b"), wl("x", "a"), Protocol::Tcp, 8080)
            .egress
            .reason,
        Reason::AllowedByRule
    );
    assert_eq!(
        decide(&set, wl("x", "b"), wl("x", "a"), Protocol::Udp, 53)
            .egress
            .reason,
        Reason::AllowedByRule
    );
    assert_eq!(
        decide(&set, wl("x", "b"), wl("x", "a"), Protocol::Tcp, 53)
            .egress
            .reason,
        Reason::DefaultDeny
    );
    assert_eq!(
        decide(&set, wl("x", "a"), wl("y", "c"), Protocol::Tcp, 8080)
            .egress
            .reason,
        Reason::DefaultDeny
    );
    // An address outside the inventory has no named ports.
    assert_eq!(
        decide(&set, wl("x", "a"), ip("192.0.2.1"), Protocol::Tcp, 8080)
            .egress
            .reason,
        Reason::DefaultDeny
    );
}

#[test]
fn end_port_ranges_are_inclusive() {
    let set = policies(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: y}
spec:
  podSelector: {}
  ingress: [{ports: [{protocol: SCTP, port: 8080, endPort: 8090}]}]
"#,
    );
    let r = |port| {
        decide(&set, wl("x", "a"), wl("y", "c"), Protocol::Sctp, port)
            .ingress
            .reason
    };
    assert_eq!(
        (r(8079), r(8080), r(8085), r(8090), r(8091)),
        (
            Reason::DefaultDeny,
            Reason::AllowedByRule,
            Reason::AllowedByRule,
            Reason::AllowedByRule,
            Reason::DefaultDeny
        )
    );
    assert_eq!(
        decide(&set, wl("x", "a"), wl("y", "c"), Protocol::Tcp, 8080)
            .ingress
            .reason,
        Reason::DefaultDeny
    );
    assert_eq!(
        decide(&set, wl("x", "a"), wl("y", "c"), Protocol::Other, 0)
            .ingress
            .reason,
        Reason::DefaultDeny
    );
}

#[test]
fn policy_types_defaulting() {
    // Upstream SetDefaults_NetworkPolicy: policyTypes absent means Ingress, plus Egress only
    // when the egress list is non-empty (`len(spec.Egress) != 0`). So no egress and `egress: []`
    // isolate ingress only; `egress: [{}]` isolates both (and its one rule allows every flow).
    let set = policies(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ing, namespace: x}
spec: {podSelector: {matchLabels: {pod: a}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: empty, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  egress: []
"#,
    );
    for pod in ["a", "b"] {
        let d = decide(&set, wl("x", pod), wl("y", "c"), Protocol::Tcp, 80);
        assert_eq!(d.egress.reason, Reason::NotIsolated, "egress of x/{pod}");
        assert_eq!(
            decide(&set, wl("y", "c"), wl("x", pod), Protocol::Tcp, 80)
                .ingress
                .reason,
            Reason::DefaultDeny,
            "ingress of x/{pod}"
        );
    }
    let set = policies(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: both, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  egress: [{}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress: [{ports: [{port: 53, protocol: UDP}]}]
"#,
    );
    let d = decide(&set, wl("x", "b"), wl("y", "c"), Protocol::Udp, 53);
    assert_eq!(
        (d.egress.reason, d.egress.rule.unwrap().name.as_str()),
        (Reason::AllowedByRule, "both")
    );
    let d = decide(&set, wl("x", "a"), wl("y", "c"), Protocol::Tcp, 80);
    assert_eq!(
        (d.egress.reason, d.egress.rule.unwrap().name.as_str()),
        (Reason::DefaultDeny, "dns")
    );
    assert_eq!(
        decide(&set, wl("y", "c"), wl("x", "b"), Protocol::Tcp, 80)
            .ingress
            .reason,
        Reason::DefaultDeny
    );
    // Egress-only policyTypes ignore ingress rules and do not isolate ingress.
    let set = policies(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: eg, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  ingress: [{ports: [{port: 1}]}]
"#,
    );
    assert_eq!(
        decide(&set, wl("y", "c"), wl("x", "a"), Protocol::Tcp, 80)
            .ingress
            .reason,
        Reason::NotIsolated
    );
    assert_eq!(
        decide(&set, wl("x", "a"), wl("y", "c"), Protocol::Tcp, 80)
            .egress
            .reason,
        Reason::DefaultDeny
    );
}

#[test]
fn pass_loses_to_deny_at_equal_priority() {
    let set = policies(
        r#"
apiVersion: bulkhead.dev/v1alpha1
kind: ClusterSegmentationPolicy
metadata: {name: admin}
spec:
  priority: 1
  ingress: [{action: Pass}, {action: Deny, ports: [{port: 22}]}]
"#,
    );
    assert_eq!(
        decide(&set, wl("y", "c"), wl("x", "a"), Protocol::Tcp, 22).verdict,
        Verdict::Deny
    );
    assert_eq!(
        decide(&set, wl("y", "c"), wl("x", "a"), Protocol::Tcp, 80)
            .ingress
            .reason,
        Reason::NotIsolated
    );
}
