//! `enforcer trace`: what the kernel would decide for a connection, offline, from the policy
//! files and the inventory. It compiles exactly as `enforcer run` does and reads the compiled map
//! entries with the kernel's lookup order, so its answer is the kernel's.

use std::fmt::Write as _;
use std::net::IpAddr;

use anyhow::{Result, bail};
use bulkhead_policy::{
    CompiledState, Decision, Endpoint, Flow, Protocol, Reason, SideDecision, Verdict, WorkloadRef,
    evaluate,
};
use serde::Serialize;

/// Parses `ns/name` or an IP address, checking that a named workload exists.
pub fn parse_endpoint(text: &str, state: &CompiledState) -> Result<Endpoint> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(Endpoint::Ip(ip));
    }
    let Some((namespace, name)) = text.split_once('/') else {
        bail!("`{text}` is neither an IP address nor a workload `namespace/name`");
    };
    let workload = WorkloadRef::new(namespace, name);
    if !state.workloads.contains_key(&workload) {
        bail!("workload `{text}` is not in the inventory");
    }
    Ok(Endpoint::Workload(workload))
}

pub fn parse_protocol(text: &str) -> Result<Protocol> {
    Ok(match text.to_ascii_uppercase().as_str() {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        _ => bail!("--protocol: `{text}` is not TCP, UDP or SCTP"),
    })
}

fn verdict_str(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
        Verdict::Audit => "audit",
    }
}

pub fn reason_str(r: Reason) -> &'static str {
    match r {
        Reason::AllowedByRule => "allowed-by-rule",
        Reason::DeniedByRule => "denied-by-rule",
        Reason::DefaultDeny => "default-deny",
        Reason::NotIsolated => "not-isolated",
        Reason::NotManaged => "not-managed",
    }
}

/// The side that decided the overall verdict: the denying (or auditing) side, egress first;
/// for an allow, the ingress side (the destination's policy admitted it).
pub fn deciding_side(decision: &Decision) -> &SideDecision {
    let target = decision.verdict;
    if target != Verdict::Allow {
        if decision.egress.verdict == target {
            return &decision.egress;
        }
        return &decision.ingress;
    }
    let ingress_open = matches!(
        decision.ingress.reason,
        Reason::NotManaged | Reason::NotIsolated
    );
    if ingress_open && decision.egress.reason == Reason::AllowedByRule {
        return &decision.egress;
    }
    &decision.ingress
}

fn endpoint_str(e: &Endpoint) -> String {
    match e {
        Endpoint::Workload(w) => w.to_string(),
        Endpoint::Ip(ip) => ip.to_string(),
    }
}

fn policy_str(side: &SideDecision) -> Option<String> {
    side.rule.as_ref().map(|r| match &r.namespace {
        Some(ns) => format!("{} {ns}/{}", r.kind, r.name),
        None => format!("{} {}", r.kind, r.name),
    })
}

/// The text form of one decision.
pub fn render_text(flow: &Flow, decision: &Decision) -> String {
    let protocol = match flow.protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
        Protocol::Other => "other",
    };
    let mut out = format!(
        "{}: {} -> {} {protocol}/{} at {}\n",
        verdict_str(decision.verdict).to_uppercase(),
        endpoint_str(&flow.src),
        endpoint_str(&flow.dst),
        flow.port,
        flow.at
    );
    for side in [&decision.egress, &decision.ingress] {
        let at = side
            .local
            .as_ref()
            .map_or_else(|| "not managed".to_owned(), |w| w.to_string());
        let ids = match (side.local_identity, side.peer_identity) {
            (Some(l), Some(p)) => format!(" (identity {l}, peer {p})"),
            _ => String::new(),
        };
        let _ = write!(
            out,
            "  {:<7} at {at}{ids}: {} ({})",
            side.direction.as_str(),
            verdict_str(side.verdict),
            reason_str(side.reason)
        );
        if let Some(rule) = &side.rule {
            let _ = write!(out, " by {rule}");
        }
        out.push('\n');
    }
    out
}

#[derive(Serialize)]
struct Pair {
    from: String,
    to: String,
    verdict: &'static str,
    reason: &'static str,
    policy: Option<String>,
    rule: Option<u32>,
}

#[derive(Serialize)]
struct Matrix {
    port: u16,
    protocol: Protocol,
    at: String,
    pairs: Vec<Pair>,
}

/// Every ordered pair of inventory workloads (self pairs included), as JSON or a grid.
pub fn render_matrix(
    state: &CompiledState,
    protocol: Protocol,
    port: u16,
    at: jiff::Timestamp,
    json: bool,
) -> Result<String> {
    let workloads: Vec<&WorkloadRef> = state.workloads.keys().collect();
    let mut pairs = Vec::with_capacity(workloads.len() * workloads.len());
    for from in &workloads {
        for to in &workloads {
            let flow = Flow {
                src: Endpoint::Workload((*from).clone()),
                dst: Endpoint::Workload((*to).clone()),
                protocol,
                port,
                at,
            };
            let decision = evaluate(state, &flow);
            let side = deciding_side(&decision);
            pairs.push(Pair {
                from: from.to_string(),
                to: to.to_string(),
                verdict: verdict_str(decision.verdict),
                reason: reason_str(side.reason),
                policy: policy_str(side),
                rule: side.rule.as_ref().and_then(|r| r.index),
            });
        }
    }
    if json {
        let matrix = Matrix {
            port,
            protocol,
            at: at.to_string(),
            pairs,
        };
        return Ok(serde_json::to_string_pretty(&matrix)? + "\n");
    }
    let names: Vec<String> = workloads.iter().map(|w| w.to_string()).collect();
    let width = names.iter().map(String::len).max().unwrap_or(4).max(4);
    let mut out = format!("{:width$}", "");
    for (i, _) in names.iter().enumerate() {
        let _ = write!(out, " {:>3}", i + 1);
    }
    out.push('\n');
    for (row, name) in names.iter().enumerate() {
        let _ = write!(out, "{name:width$}");
        for col in 0..names.len() {
            let cell = match pairs[row * names.len() + col].verdict {
                "allow" => ".",
                "deny" => "X",
                _ => "A",
            };
            let _ = write!(out, " {cell:>3}");
        }
        let _ = writeln!(out, "   {}", row + 1);
    }
    out.push_str("rows: from, columns: to (numbered as the rows); . allow, X deny, A audit\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_policy::{AllocationTable, Compiler, Inventory, PolicySet};

    const INVENTORY: &str = "namespaces: [{name: x}]\nworkloads:\n\
        - {namespace: x, name: a, labels: {pod: a}, ips: [10.200.1.1]}\n\
        - {namespace: x, name: b, labels: {pod: b}, ips: [10.200.1.2]}\n";
    const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
        metadata: {name: b-from-a, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  \
        ingress:\n  - from: [{podSelector: {matchLabels: {pod: a}}}]\n    ports: [{port: 80}]\n";

    fn state() -> CompiledState {
        let policies = PolicySet::from_yaml_str("p.yaml", POLICY).unwrap();
        let inventory = Inventory::from_yaml_str("i.yaml", INVENTORY).unwrap();
        Compiler::new(AllocationTable::default())
            .compile(&policies, &inventory, jiff::Timestamp::now())
            .unwrap()
    }

    #[test]
    fn single_flow_names_the_rule() {
        let state = state();
        let flow = Flow {
            src: parse_endpoint("x/a", &state).unwrap(),
            dst: parse_endpoint("10.200.1.2", &state).unwrap(),
            protocol: Protocol::Tcp,
            port: 80,
            at: jiff::Timestamp::now(),
        };
        let decision = evaluate(&state, &flow);
        let text = render_text(&flow, &decision);
        assert!(
            text.starts_with("ALLOW: x/a -> 10.200.1.2 TCP/80"),
            "{text}"
        );
        assert!(text.contains("allowed-by-rule"), "{text}");
        assert!(text.contains("b-from-a"), "{text}");
        let denied = Flow { port: 81, ..flow };
        let text = render_text(&denied, &evaluate(&state, &denied));
        assert!(text.starts_with("DENY"), "{text}");
        assert!(text.contains("default-deny"), "{text}");
    }

    #[test]
    fn matrix_covers_every_ordered_pair() {
        let state = state();
        let json = render_matrix(&state, Protocol::Tcp, 80, jiff::Timestamp::now(), true).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let pairs = value["pairs"].as_array().unwrap();
        assert_eq!(pairs.len(), 4);
        let b_to_b = pairs
            .iter()
            .find(|p| p["from"] == "x/b" && p["to"] == "x/b")
            .unwrap();
        assert_eq!(b_to_b["verdict"], "deny");
        assert_eq!(b_to_b["reason"], "default-deny");
        assert_eq!(b_to_b["policy"], "NetworkPolicy x/b-from-a");
        let a_to_b = pairs
            .iter()
            .find(|p| p["from"] == "x/a" && p["to"] == "x/b")
            .unwrap();
        assert_eq!(a_to_b["verdict"], "allow");
        assert_eq!(a_to_b["rule"], 0);
        let grid = render_matrix(&state, Protocol::Tcp, 80, jiff::Timestamp::now(), false).unwrap();
        assert!(grid.contains("x/b    .   X   2"), "{grid}");
        assert!(parse_endpoint("x/zz", &state).is_err());
        assert!(parse_protocol("ICMP").is_err());
    }
}
