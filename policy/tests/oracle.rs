//! Property test: the compiled evaluator agrees with the reference evaluator (`spec`) on every
//! flow (verdict, reason and deciding rule of both sides) for random policy sets of all three
//! kinds (priorities, deny, pass, audit, windows, CIDRs with except, named ports, ranges) over
//! random inventories. The generator is driven by one seed so that a failure prints a small,
//! reproducible case.

use std::collections::BTreeMap;
use std::net::IpAddr;

use bulkhead_policy::model::{NamedPort, Namespace, Workload};
use bulkhead_policy::spec::{self, SpecDecision};
use bulkhead_policy::{
    AllocationTable, Compiler, Endpoint, Flow, Incremental, Inventory, PolicySet, Protocol,
    StateDiff, evaluate, load,
};
use jiff::Timestamp;
use proptest::prelude::*;
use serde_json::{Value, json};

/// xorshift64*: tiny deterministic generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())].clone()
    }
}

const TIMES: [&str; 4] = [
    "2026-11-27T10:00:00Z",
    "2026-11-27T12:00:00Z",
    "2026-11-27T14:00:00Z",
    "2026-11-27T16:00:00Z",
];
const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

fn inventory(rng: &mut Rng) -> Inventory {
    let mut inv = Inventory::default();
    for ns in NAMESPACES {
        let mut labels = BTreeMap::new();
        if rng.chance(50) {
            labels.insert("team".to_string(), rng.pick(&["red", "blue"]).to_string());
        }
        inv.namespaces.push(Namespace {
            name: ns.into(),
            labels,
        });
    }
    for (ni, ns) in NAMESPACES.iter().enumerate() {
        for (pi, pod) in PODS.iter().enumerate() {
            if rng.chance(15) {
                continue;
            }
            let mut labels = BTreeMap::from([("pod".to_string(), pod.to_string())]);
            if rng.chance(50) {
                labels.insert("tier".to_string(), rng.pick(&["fe", "be"]).to_string());
            }
            let mut ips: Vec<IpAddr> = vec![format!("10.0.{ni}.{}", pi + 1).parse().unwrap()];
            if rng.chance(40) {
                ips.push(format!("fd00::{ni}:{}", pi + 1).parse().unwrap());
            }
            let mut ports = Vec::new();
            for (port, proto) in [
                (80, "TCP"),
                (81, "TCP"),
                (80, "UDP"),
                (81, "UDP"),
                (80, "SCTP"),
            ] {
                if rng.chance(60) {
                    ports.push(NamedPort {
                        name: format!("serve-{port}-{}", proto.to_lowercase()),
                        port,
                        protocol: proto.into(),
                    });
                }
            }
            if rng.chance(20) {
                // Same name, different number: named ports resolve per destination.
                ports.retain(|p| p.name != "serve-80-tcp");
                ports.push(NamedPort {
                    name: "serve-80-tcp".into(),
                    port: 81,
                    protocol: "TCP".into(),
                });
            }
            inv.workloads.push(Workload {
                namespace: ns.to_string(),
                name: pod.to_string(),
                labels,
                service_account: rng.pick(&["default", "robot"]).to_string(),
                ips,
                ports,
                cgroup: None,
            });
        }
    }
    inv
}

fn selector(rng: &mut Rng, key: &str, values: &[&str]) -> Value {
    match rng.below(7) {
        0 => json!({}),
        1 | 2 => json!({"matchLabels": {key: rng.pick(values)}}),
        3 => {
            json!({"matchExpressions": [{"key": key, "operator": "In", "values": [rng.pick(values), rng.pick(values)]}]})
        }
        4 => {
            json!({"matchExpressions": [{"key": key, "operator": "NotIn", "values": [rng.pick(values)]}]})
        }
        5 => json!({"matchExpressions": [{"key": key, "operator": "Exists"}]}),
        _ => json!({"matchExpressions": [{"key": key, "operator": "DoesNotExist"}]}),
    }
}

fn pod_selector(rng: &mut Rng) -> Value {
    if rng.chance(50) {
        selector(rng, "pod", &PODS)
    } else {
        selector(rng, "tier", &["fe", "be"])
    }
}

fn ns_selector(rng: &mut Rng) -> Value {
    if rng.chance(50) {
        selector(rng, "kubernetes.io/metadata.name", &NAMESPACES)
    } else {
        selector(rng, "team", &["red", "blue"])
    }
}

fn cidr(rng: &mut Rng) -> (String, Vec<String>) {
    let pool: [(&str, &[&str]); 8] = [
        ("10.0.0.0/8", &[]),
        ("10.0.1.0/24", &["10.0.1.2/32"]),
        ("0.0.0.0/0", &["10.0.0.0/16"]),
        ("192.0.2.0/24", &[]),
        ("10.0.2.0/30", &[]),
        ("fd00::/16", &["fd00::1:0/112"]),
        ("2001:db8::/32", &[]),
        ("10.0.0.1/32", &[]),
    ];
    let (c, e) = rng.pick(&pool);
    (c.to_string(), e.iter().map(|s| s.to_string()).collect())
}

fn ports(rng: &mut Rng, netpol: bool) -> Option<Value> {
    if rng.chance(35) {
        return None;
    }
    let pool = [
        json!({"port": 80}),
        json!({"protocol": "UDP", "port": 81}),
        json!({"protocol": "TCP", "port": 80, "endPort": 81}),
        json!({"port": "serve-80-tcp"}),
        json!({"protocol": "UDP", "port": "serve-81-udp"}),
        json!({"protocol": "SCTP"}),
        json!({"protocol": "TCP"}),
        json!({"protocol": "SCTP", "port": "serve-80-sctp"}),
    ];
    let n = 1 + rng.below(2);
    let _ = netpol;
    Some(Value::Array((0..n).map(|_| rng.pick(&pool)).collect()))
}

fn netpol(rng: &mut Rng, name: &str) -> Value {
    let ns = rng.pick(&NAMESPACES);
    let mut spec = serde_json::Map::new();
    spec.insert("podSelector".into(), pod_selector(rng));
    for (dir, peer_field) in [("ingress", "from"), ("egress", "to")] {
        if rng.chance(60) {
            let rules: Vec<Value> = (0..rng.below(3))
                .map(|_| {
                    let mut r = serde_json::Map::new();
                    if rng.chance(70) {
                        let peers: Vec<Value> = (0..1 + rng.below(2))
                            .map(|_| match rng.below(4) {
                                0 => json!({"podSelector": pod_selector(rng)}),
                                1 => json!({"namespaceSelector": ns_selector(rng)}),
                                2 => json!({"podSelector": pod_selector(rng), "namespaceSelector": ns_selector(rng)}),
                                _ => {
                                    let (c, e) = cidr(rng);
                                    json!({"ipBlock": {"cidr": c, "except": e}})
                                }
                            })
                            .collect();
                        r.insert(peer_field.into(), Value::Array(peers));
                    }
                    if let Some(p) = ports(rng, true) {
                        r.insert("ports".into(), p);
                    }
                    Value::Object(r)
                })
                .collect();
            spec.insert(dir.into(), Value::Array(rules));
        }
    }
    if rng.chance(30) {
        let types = rng.pick(&[
            json!(["Ingress"]),
            json!(["Egress"]),
            json!(["Ingress", "Egress"]),
        ]);
        spec.insert("policyTypes".into(), types);
    }
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn crd_rules(rng: &mut Rng, peer_field: &str, cluster: bool, admin: bool) -> Value {
    let rules: Vec<Value> = (0..rng.below(3))
        .map(|i| {
            let mut r = serde_json::Map::new();
            if rng.chance(30) {
                r.insert("name".into(), json!(format!("r{i}")));
            }
            let actions: &[&str] = if admin { &["Allow", "Deny", "Pass"] } else { &["Allow", "Deny"] };
            r.insert("action".into(), json!(rng.pick(actions)));
            if rng.chance(70) {
                let peers: Vec<Value> = (0..1 + rng.below(2))
                    .map(|_| match rng.below(5) {
                        0 => json!({"podSelector": pod_selector(rng)}),
                        1 => json!({"namespaceSelector": ns_selector(rng)}),
                        2 => json!({"podSelector": pod_selector(rng), "serviceAccount": {"name": rng.pick(&["default", "robot"])}}),
                        3 if cluster => json!({"serviceAccount": {"name": "robot", "namespace": rng.pick(&NAMESPACES)}}),
                        _ => {
                            let (c, e) = cidr(rng);
                            json!({"cidr": c, "except": e})
                        }
                    })
                    .collect();
                r.insert(peer_field.into(), Value::Array(peers));
            }
            if let Some(p) = ports(rng, false) {
                r.insert("ports".into(), p);
            }
            if rng.chance(25) {
                let a = rng.below(TIMES.len() - 1);
                r.insert("notBefore".into(), json!(TIMES[a]));
                if rng.chance(50) {
                    r.insert("expiresAt".into(), json!(TIMES[a + 1 + rng.below(TIMES.len() - 1 - a)]));
                }
            } else if rng.chance(15) {
                r.insert("expiresAt".into(), json!(rng.pick(&TIMES)));
            }
            Value::Object(r)
        })
        .collect();
    Value::Array(rules)
}

fn crd(rng: &mut Rng, name: &str, cluster: bool) -> Value {
    let tier = if cluster {
        rng.pick(&["Admin", "Baseline"])
    } else {
        ""
    };
    let mut spec = serde_json::Map::new();
    spec.insert("priority".into(), json!(rng.pick(&[1, 5, 5, 10])));
    if rng.chance(20) {
        spec.insert("mode".into(), json!("Audit"));
    }
    let mut subject = serde_json::Map::new();
    if rng.chance(70) {
        subject.insert("podSelector".into(), pod_selector(rng));
    }
    if cluster && rng.chance(50) {
        subject.insert("namespaceSelector".into(), ns_selector(rng));
    }
    if rng.chance(20) {
        subject.insert("serviceAccounts".into(), json!(["robot"]));
    }
    spec.insert("subject".into(), Value::Object(subject));
    for (dir, peer_field) in [("ingress", "from"), ("egress", "to")] {
        if rng.chance(60) {
            spec.insert(
                dir.into(),
                crd_rules(rng, peer_field, cluster, tier == "Admin"),
            );
        }
    }
    if cluster {
        spec.insert("tier".into(), json!(tier));
        json!({"apiVersion": "bulkhead.dev/v1alpha1", "kind": "ClusterSegmentationPolicy", "metadata": {"name": name}, "spec": spec})
    } else {
        let ns = rng.pick(&NAMESPACES);
        json!({"apiVersion": "bulkhead.dev/v1alpha1", "kind": "SegmentationPolicy", "metadata": {"name": name, "namespace": ns}, "spec": spec})
    }
}

fn policies(rng: &mut Rng) -> String {
    let n = rng.below(6);
    let docs: Vec<String> = (0..n)
        .map(|i| {
            let name = format!("p{i}");
            let v = match rng.below(3) {
                0 => netpol(rng, &name),
                1 => crd(rng, &name, false),
                _ => crd(rng, &name, true),
            };
            serde_json::to_string(&v).unwrap()
        })
        .collect();
    docs.join("\n---\n")
}

fn endpoints(inv: &Inventory) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = inv
        .workloads
        .iter()
        .map(|w| Endpoint::Workload(w.reference()))
        .collect();
    for ip in [
        "192.0.2.7",
        "10.0.1.2",
        "10.9.9.9",
        "2001:db8::1",
        "fd00::1:2",
    ] {
        out.push(Endpoint::Ip(ip.parse().unwrap()));
    }
    if let Some(w) = inv.workloads.last() {
        out.push(Endpoint::Ip(w.ips[0]));
    }
    out
}

fn check(seed: u64) -> Result<(), TestCaseError> {
    let mut rng = Rng(seed | 1);
    let inv = inventory(&mut rng);
    let text = policies(&mut rng);
    let objects = load::parse_documents("gen.yaml", &text)
        .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
    let set = PolicySet::from_objects(objects.into_iter().map(|o| ("gen.yaml".to_string(), o)))
        .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
    let at: Timestamp = rng.pick(&TIMES).parse().unwrap();
    // A related earlier state (one policy missing, one workload relabelled, another instant), so
    // that the checked compile is an incremental one.
    let mut compiler = Compiler::new(AllocationTable::new());
    let mut set0 = set.clone();
    if let Some(k) = set
        .objects()
        .map(|(k, _)| k.clone())
        .nth(rng.below(set.len().max(1)))
    {
        set0.remove(&k);
    }
    let mut inv0 = inv.clone();
    if !inv0.workloads.is_empty() {
        let i = rng.below(inv0.workloads.len());
        inv0.workloads[i].labels.insert("tier".into(), "fe".into());
    }
    compiler
        .compile(&set0, &inv0, rng.pick(&TIMES).parse().unwrap())
        .unwrap();
    let state = compiler.compile(&set, &inv, at).unwrap();
    let fresh = Compiler::new(compiler.table().clone())
        .compile(&set, &inv, at)
        .unwrap();
    prop_assert!(
        fresh == state,
        "incremental compile differs from a fresh one; seed {}",
        seed
    );
    // The state holds until the next window boundary: check flows at `at` and just before the
    // next possible boundary (instants are 2 h apart) against the oracle at those instants.
    let later = at + jiff::SignedDuration::from_secs(2 * 3600 - 1);
    if let Some(next) = state.next_change {
        prop_assert!(
            next > at
                && TIMES
                    .iter()
                    .any(|t| t.parse::<Timestamp>().unwrap() == next)
        );
    }
    let eps = endpoints(&inv);
    for src in &eps {
        for dst in &eps {
            for protocol in [
                Protocol::Tcp,
                Protocol::Udp,
                Protocol::Sctp,
                Protocol::Other,
            ] {
                for port in [80u16, 81, 82] {
                    let flow = Flow {
                        src: src.clone(),
                        dst: dst.clone(),
                        protocol,
                        port,
                        at: if port == 81 { later } else { at },
                    };
                    let got = SpecDecision::from(&evaluate(&state, &flow));
                    let want = spec::evaluate(&set, &inv, &flow);
                    prop_assert_eq!(
                        &got,
                        &want,
                        "seed {} flow {:?}\npolicies:\n{}\ninventory: {:?}",
                        seed,
                        flow,
                        text,
                        inv
                    );
                }
            }
        }
    }
    Ok(())
}

/// Number of random cases: 256, or `ORACLE_CASES` for deeper runs.
fn cases() -> u32 {
    std::env::var("ORACLE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]
    #[test]
    fn compiled_evaluator_matches_spec(seed in any::<u64>()) {
        check(seed)?;
    }
}

/// One random change for [`incremental_check`]: a policy applied (new or replacing one by
/// name), a policy removed, a workload relabelled, added, changed or removed, a namespace
/// relabelled, a move in time, or an invalid policy (refused, nothing changes).
fn random_change(
    rng: &mut Rng,
    inc: &mut Incremental,
    serial: &mut usize,
) -> Result<StateDiff, String> {
    let inv = inc.inventory().clone();
    let pick_workload = |rng: &mut Rng| {
        (!inv.workloads.is_empty()).then(|| inv.workloads[rng.below(inv.workloads.len())].clone())
    };
    let labels = |rng: &mut Rng| {
        let mut l = BTreeMap::from([("pod".to_string(), rng.pick(&PODS).to_string())]);
        if rng.chance(50) {
            l.insert("tier".to_string(), rng.pick(&["fe", "be"]).to_string());
        }
        l
    };
    let r = match rng.below(10) {
        0 | 1 => {
            let name = format!("p{}", rng.below(7));
            let v = match rng.below(3) {
                0 => netpol(rng, &name),
                1 => crd(rng, &name, false),
                _ => crd(rng, &name, true),
            };
            let text = serde_json::to_string(&v).unwrap();
            let o = load::parse_documents("change.yaml", &text).map_err(|e| e.to_string())?;
            inc.apply_policy("change.yaml", o.into_iter().next().unwrap())
        }
        2 => {
            let keys: Vec<_> = inc.policies().objects().map(|(k, _)| k.clone()).collect();
            if keys.is_empty() {
                return Ok(StateDiff::default());
            }
            inc.remove_policy(&keys[rng.below(keys.len())])
        }
        3 | 4 => match pick_workload(rng) {
            Some(w) => inc.set_workload_labels(&w.reference(), labels(rng)),
            None => return Ok(StateDiff::default()),
        },
        5 => {
            // A new workload (addresses outside every generated CIDR, or inside some).
            *serial += 1;
            let ns = rng.pick(&NAMESPACES);
            let ip: IpAddr = if rng.chance(70) {
                format!("fd01::{serial}").parse().unwrap()
            } else {
                format!("10.0.9.{serial}").parse().unwrap()
            };
            let w = Workload {
                namespace: ns.into(),
                name: format!("n{serial}"),
                labels: labels(rng),
                service_account: rng.pick(&["default", "robot"]).to_string(),
                ips: vec![ip],
                ports: if rng.chance(50) {
                    vec![NamedPort {
                        name: "serve-80-tcp".into(),
                        port: 80,
                        protocol: "TCP".into(),
                    }]
                } else {
                    Vec::new()
                },
                cgroup: Some(format!("/sys/fs/cgroup/n{serial}")),
            };
            inc.upsert_workload("change.yaml", w)
        }
        6 => match pick_workload(rng) {
            Some(mut w) => {
                // Changed service account, ports or addresses.
                match rng.below(3) {
                    0 => w.service_account = rng.pick(&["default", "robot", "other"]).to_string(),
                    1 => w.ports.truncate(rng.below(w.ports.len() + 1)),
                    _ => {
                        *serial += 1;
                        w.ips = vec![format!("fd02::{serial}").parse().unwrap()];
                    }
                }
                inc.upsert_workload("change.yaml", w)
            }
            None => return Ok(StateDiff::default()),
        },
        7 => match pick_workload(rng) {
            Some(w) => inc.remove_workload(&w.reference()),
            None => return Ok(StateDiff::default()),
        },
        8 => {
            if rng.chance(50) {
                let mut l = BTreeMap::new();
                if rng.chance(70) {
                    l.insert("team".to_string(), rng.pick(&["red", "blue"]).to_string());
                }
                inc.set_namespace_labels(rng.pick(&NAMESPACES), l)
            } else {
                inc.set_time(rng.pick(&TIMES).parse().unwrap())
            }
        }
        _ => {
            // Invalid: refused whole, nothing changes.
            let before = inc.state().clone();
            let bad = load::parse_documents(
                "bad.yaml",
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p0, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 90, endPort: 80}]}]}\n",
            )
            .unwrap();
            let e = inc
                .apply_policy("bad.yaml", bad.into_iter().next().unwrap())
                .expect_err("invalid policy accepted");
            assert!(
                e.to_string()
                    .contains("bad.yaml: NetworkPolicy x/p0: spec.ingress[0]"),
                "{e}"
            );
            let taken = inc
                .upsert_workload(
                    "bad.yaml",
                    Workload {
                        namespace: "x".into(),
                        name: "dup".into(),
                        labels: BTreeMap::new(),
                        service_account: "default".into(),
                        ips: inv
                            .workloads
                            .first()
                            .map(|w| w.ips.clone())
                            .unwrap_or_default(),
                        ports: Vec::new(),
                        cgroup: None,
                    },
                )
                .is_err();
            assert!(taken || inv.workloads.is_empty());
            assert!(*inc.state() == before, "a refused change altered the state");
            return Ok(StateDiff::default());
        }
    };
    r.map_err(|e| e.to_string())
}

/// Random sequences of changes applied incrementally equal a fresh compile of the final inputs
/// (every map, and each returned diff equals the diff of the fresh states); the final state
/// agrees with the reference evaluator.
fn incremental_check(seed: u64) -> Result<(), TestCaseError> {
    let mut rng = Rng(seed | 1);
    let inv = inventory(&mut rng);
    let text = policies(&mut rng);
    let objects = load::parse_documents("gen.yaml", &text).unwrap();
    let set =
        PolicySet::from_objects(objects.into_iter().map(|o| ("gen.yaml".to_string(), o))).unwrap();
    let at: Timestamp = rng.pick(&TIMES).parse().unwrap();
    let mut inc = Incremental::new(Compiler::new(AllocationTable::new()), set, inv, at).unwrap();
    let mut serial = 0;
    for step in 0..12 {
        let before = inc.state().clone();
        let diff = random_change(&mut rng, &mut inc, &mut serial)
            .map_err(|e| TestCaseError::fail(format!("seed {seed} step {step}: {e}")))?;
        let fresh = Compiler::new(inc.table().clone())
            .compile(inc.policies(), inc.inventory(), inc.at())
            .unwrap();
        prop_assert!(
            fresh == *inc.state(),
            "seed {} step {}: incremental state differs from a fresh compile",
            seed,
            step
        );
        prop_assert!(
            diff == fresh.diff(&before),
            "seed {} step {}: returned diff differs",
            seed,
            step
        );
    }
    let (state, set, inv) = (inc.state(), inc.policies(), inc.inventory());
    let eps = endpoints(inv);
    for src in &eps {
        for dst in &eps {
            for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Other] {
                for port in [80u16, 81] {
                    let flow = Flow {
                        src: src.clone(),
                        dst: dst.clone(),
                        protocol,
                        port,
                        at: inc.at(),
                    };
                    let got = SpecDecision::from(&evaluate(state, &flow));
                    let want = spec::evaluate(set, inv, &flow);
                    prop_assert_eq!(&got, &want, "seed {} flow {:?}", seed, flow);
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases() / 2, ..ProptestConfig::default() })]
    #[test]
    fn incremental_changes_match_fresh_compile(seed in any::<u64>()) {
        incremental_check(seed)?;
    }
}
