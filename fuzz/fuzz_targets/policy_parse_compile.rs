//! Fuzzes the whole offline path: YAML parsing of policy documents and of an inventory,
//! validation, compilation and evaluation. No input may panic: bad input must come back as an
//! error. Input: policy YAML, optionally followed by a line `#inventory` and inventory YAML
//! (without it, the upstream conformance model's inventory is used).
#![no_main]

use bulkhead_policy::{
    AllocationTable, Compiler, Endpoint, Flow, Inventory, PolicySet, Protocol, evaluate,
};
use libfuzzer_sys::fuzz_target;

const MODEL: &str = "namespaces: [{name: x}, {name: y}]\nworkloads:\n\
  - {namespace: x, name: a, labels: {pod: a}, ips: [10.200.1.1, 'fd00:200::1:1'], ports: [{name: serve-80-tcp, port: 80, protocol: TCP}]}\n\
  - {namespace: y, name: b, labels: {pod: b}, ips: [10.200.2.2], ports: [{name: serve-81-udp, port: 81, protocol: UDP}]}\n";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (policy_text, inventory_text) = match text.split_once("\n#inventory\n") {
        Some((p, i)) => (p, i),
        None => (text, MODEL),
    };
    let Ok(policies) = PolicySet::from_yaml_str("fuzz.yaml", policy_text) else { return };
    let Ok(inventory) = Inventory::from_yaml_str("inventory.yaml", inventory_text) else { return };
    let at = jiff::Timestamp::from_second(1_800_000_000).unwrap();
    let Ok(state) = Compiler::new(AllocationTable::default()).compile(&policies, &inventory, at) else {
        return;
    };
    let workloads: Vec<_> = state.workloads.keys().take(4).cloned().collect();
    for src in &workloads {
        for dst in &workloads {
            for (protocol, port) in [(Protocol::Tcp, 80), (Protocol::Udp, 81), (Protocol::Sctp, 80)] {
                let flow = Flow {
                    src: Endpoint::Workload(src.clone()),
                    dst: Endpoint::Workload(dst.clone()),
                    protocol,
                    port,
                    at,
                };
                let _ = evaluate(&state, &flow);
            }
        }
        let flow = Flow {
            src: Endpoint::Ip("203.0.113.9".parse().unwrap()),
            dst: Endpoint::Workload(src.clone()),
            protocol: Protocol::Tcp,
            port: 80,
            at,
        };
        let _ = evaluate(&state, &flow);
    }
});
