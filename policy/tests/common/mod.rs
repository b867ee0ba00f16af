//! Shared helpers of the integration tests: a small inventory, policy parsing, and a `decide`
//! that asserts the compiled evaluator and the spec oracle agree before returning the decision.

#![allow(dead_code, reason = "each test binary uses a subset")]

use bulkhead_policy::spec::{self, SpecDecision};
use bulkhead_policy::{
    AllocationTable, CompiledState, Compiler, Decision, Endpoint, Flow, Inventory, PolicySet,
    Protocol, WorkloadRef, evaluate,
};
use jiff::Timestamp;

pub const INVENTORY: &str = r#"
namespaces:
  - {name: x, labels: {team: red}}
  - {name: y}
workloads:
  - namespace: x
    name: a
    labels: {pod: a, tier: fe}
    ips: [10.0.0.1, "fd00::1"]
    ports:
      - {name: http, port: 8080, protocol: TCP}
      - {name: dns, port: 53, protocol: UDP}
  - namespace: x
    name: b
    labels: {pod: b, tier: be}
    serviceAccount: robot
    ips: [10.0.0.2]
    ports:
      - {name: http, port: 9090, protocol: TCP}
  - namespace: y
    name: c
    labels: {pod: c}
    ips: [10.0.1.3]
"#;

pub fn inventory() -> Inventory {
    Inventory::from_yaml_str("inventory.yaml", INVENTORY).unwrap()
}

pub fn policies(yaml: &str) -> PolicySet {
    PolicySet::from_yaml_str("test.yaml", yaml).unwrap()
}

pub fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

pub const NOON: &str = "2026-11-27T12:00:00Z";

pub fn wl(ns: &str, name: &str) -> Endpoint {
    Endpoint::Workload(WorkloadRef::new(ns, name))
}

pub fn ip(s: &str) -> Endpoint {
    Endpoint::Ip(s.parse().unwrap())
}

pub fn compile(set: &PolicySet, inv: &Inventory, at: Timestamp) -> CompiledState {
    Compiler::new(AllocationTable::new())
        .compile(set, inv, at)
        .unwrap()
}

/// Decides a flow with both evaluators (compiled at `compiled_at`, flow at `at`), asserts they
/// agree, returns the compiled decision.
#[expect(
    clippy::too_many_arguments,
    reason = "a flow spelled out plus two instants"
)]
pub fn decide_at(
    set: &PolicySet,
    inv: &Inventory,
    src: Endpoint,
    dst: Endpoint,
    proto: Protocol,
    port: u16,
    compiled_at: Timestamp,
    at: Timestamp,
) -> Decision {
    let state = compile(set, inv, compiled_at);
    let flow = Flow {
        src,
        dst,
        protocol: proto,
        port,
        at,
    };
    let got = evaluate(&state, &flow);
    let want = spec::evaluate(set, inv, &flow);
    assert_eq!(
        SpecDecision::from(&got),
        want,
        "compiled and spec disagree on {flow:?}"
    );
    got
}

pub fn decide(
    set: &PolicySet,
    src: Endpoint,
    dst: Endpoint,
    proto: Protocol,
    port: u16,
) -> Decision {
    decide_at(set, &inventory(), src, dst, proto, port, t(NOON), t(NOON))
}
