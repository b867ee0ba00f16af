//! Tests of the harness itself: the expectation notation, the runner's comparison and retries,
//! and the scenario data's invariants.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Result;

use super::*;

fn pod(text: &str) -> PodId {
    PodId::parse(text).unwrap()
}

/// Answers every probe with a fixed table, or with `before` for the first `late` probes.
struct FixedProber {
    table: TruthTable,
    before: TruthTable,
    late: usize,
    probes: usize,
    applied: Vec<Vec<PolicyDoc>>,
}

impl FixedProber {
    fn new(table: TruthTable) -> FixedProber {
        FixedProber {
            table,
            before: table,
            late: 0,
            probes: 0,
            applied: Vec::new(),
        }
    }
}

impl Prober for FixedProber {
    fn apply(&mut self, policies: &[PolicyDoc], _model: &Model) -> Result<()> {
        self.applied.push(policies.to_vec());
        Ok(())
    }

    fn probe_all(
        &mut self,
        _port: u16,
        _protocol: Protocol,
        _family: IpFamily,
    ) -> Result<TruthTable> {
        self.probes += 1;
        Ok(if self.probes <= self.late {
            self.before
        } else {
            self.table
        })
    }
}

const DENY_INGRESS_X: &str = r#"
scenarios:
- name: deny-x
  mirrors: "should support a 'default-deny-ingress' policy"
  origin: upstream-e2e
  kinds: [default-deny-ingress]
  steps:
  - apply: |
      apiVersion: networking.k8s.io/v1
      kind: NetworkPolicy
      metadata: {name: deny-ingress, namespace: x}
      spec: {podSelector: {}, policyTypes: [Ingress]}
    probes:
    - {port: 80, protocol: TCP, default: allow, expect: ["* -> x/*: deny"]}
"#;

fn parse(text: &str) -> Result<Vec<Scenario>> {
    parse_scenarios(text, Path::new("inline.yaml"))
}

fn deny_x_table() -> TruthTable {
    TruthTable::from_fn(|_, to| to.namespace() != "x")
}

#[test]
fn model_matches_the_upstream_model() {
    let model = Model::standard();
    assert_eq!(model.pods.len(), 9);
    assert_eq!(pod("x/a").ipv4().to_string(), "10.200.1.1");
    assert_eq!(pod("z/b").ipv4().to_string(), "10.200.3.2");
    assert_eq!(pod("y/c").ipv6().to_string(), "fd00:200::2:3");
    let names: Vec<&str> = model
        .pod(pod("y/b"))
        .ports
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "serve-80-tcp",
            "serve-81-tcp",
            "serve-80-udp",
            "serve-81-udp",
            "serve-80-sctp",
            "serve-81-sctp"
        ]
    );
    assert_eq!(
        model.pod(pod("y/b")).labels.get("pod").map(String::as_str),
        Some("b")
    );
    let ns = model.namespace("z").unwrap();
    assert_eq!(ns.labels.len(), 1);
    assert_eq!(
        ns.labels.get(NAMESPACE_NAME_LABEL).map(String::as_str),
        Some("z")
    );
    assert_eq!(
        PodId::all()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        "x/a x/b x/c y/a y/b y/c z/a z/b z/c"
    );
}

#[test]
fn rules_apply_in_order_like_upstream_reachability() {
    let rules = Expectation::Rules {
        default: Verdict::Allow,
        rules: vec![
            ExpectRule::parse("* -> x/a: deny").unwrap(),
            ExpectRule::parse("x/b -> x/a: allow").unwrap(),
            ExpectRule::parse("*/c -> z/*: deny").unwrap(),
        ],
    };
    let table = rules.table();
    assert!(!table.get(pod("y/a"), pod("x/a")));
    assert!(!table.get(pod("x/a"), pod("x/a")));
    assert!(table.get(pod("x/b"), pod("x/a")));
    assert!(table.get(pod("x/a"), pod("x/b")));
    assert!(!table.get(pod("y/c"), pod("z/b")));
    assert!(table.get(pod("y/b"), pod("z/b")));
    assert_eq!(table.allowed_count(), 81 - 8 - 9);
}

#[test]
fn malformed_rules_are_rejected_with_the_rule_named() {
    for bad in [
        "x/a -> x/b",
        "x/a => x/b: deny",
        "q/a -> x/b: deny",
        "x/d -> x/b: deny",
        "x/a -> x/b: maybe",
    ] {
        let err = ExpectRule::parse(bad).unwrap_err();
        assert!(format!("{err:#}").contains(bad), "{err:#}");
    }
}

#[test]
fn grid_round_trips_and_rejects_bad_shapes() {
    let table = TruthTable::from_fn(|from, to| (from.index() + to.index()) % 3 != 0);
    assert_eq!(TruthTable::parse_grid(&table.render()).unwrap(), table);
    let unlabelled: String = table
        .render()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" ") + "\n")
        .collect();
    assert_eq!(TruthTable::parse_grid(&unlabelled).unwrap(), table);
    let eight_rows: String = unlabelled
        .lines()
        .take(8)
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(TruthTable::parse_grid(&eight_rows).is_err());
    assert!(TruthTable::parse_grid(&unlabelled.replacen('X', "x", 1)).is_err());
    let mislabelled = table.render().replacen("x/b", "y/b", 2);
    assert!(TruthTable::parse_grid(&mislabelled).is_err());
}

/// The upstream test prints its expected grid in a comment; the scenario data uses that grid.
/// It must equal the reachability calls the same test makes.
#[test]
fn upstream_grid_equals_upstream_calls_for_client_side_egress_denial() {
    let scenarios = load_all(&scenario_dir()).unwrap();
    let scenario = scenarios
        .iter()
        .find(|s| s.name == "deny-egress-on-client-side")
        .unwrap();
    let probe = &scenario.steps[0].probes[0];
    assert!(matches!(probe.expectation, Expectation::Grid(_)));
    let calls = Expectation::Rules {
        default: Verdict::Allow,
        rules: [
            "x/a -> *: deny",
            "* -> y/a: deny",
            "x/a -> y/a: allow",
            "* -> y/b: deny",
        ]
        .iter()
        .map(|r| ExpectRule::parse(r).unwrap())
        .collect(),
    };
    assert_eq!(probe.expected, calls.table());
}

#[test]
fn runner_reports_each_wrong_cell_by_name() {
    let scenarios = parse(DENY_INGRESS_X).unwrap();
    // The prober lets y/a reach x/b: one cell differs from the expectation.
    let mut observed = deny_x_table();
    observed.set(pod("y/a"), pod("x/b"), true);
    let mut prober = FixedProber::new(observed);
    let summary = run_all(&mut prober, &scenarios, RunOptions::once());
    assert!(!summary.passed());
    assert_eq!(summary.wrong_cells(), 1);
    let mismatch = &summary.reports[0].mismatches[0];
    assert_eq!(
        mismatch.wrong,
        vec![WrongCell {
            from: pod("y/a"),
            to: pod("x/b"),
            expected: false
        }]
    );
    let text = summary.failures();
    assert!(
        text.contains("y/a -> x/b: expected deny, observed allow"),
        "{text}"
    );
    assert!(
        text.contains("step 1 (apply x/deny-ingress), probe TCP/80 IPv4"),
        "{text}"
    );
    assert!(text.contains("comparison"), "{text}");
    assert!(
        text.contains("policies in force: [x/deny-ingress]"),
        "{text}"
    );
    assert!(
        text.lines().all(|l| l == l.trim_end()),
        "no trailing spaces: {text}"
    );
    assert_eq!(
        summary.to_string(),
        "conformance: 1 cases, 1 steps, 81 cells, 1 wrong"
    );
    assert_eq!(prober.applied.len(), 1);
    assert_eq!(prober.applied[0][0].name, "deny-ingress");
}

#[test]
fn runner_passes_an_equal_table() {
    let scenarios = parse(DENY_INGRESS_X).unwrap();
    let summary = run_all(
        &mut FixedProber::new(deny_x_table()),
        &scenarios,
        RunOptions::once(),
    );
    assert!(summary.passed(), "{}", summary.failures());
    assert_eq!(summary.cells(), 81);
}

#[test]
fn eventually_retries_until_the_table_converges() {
    let scenarios = parse(DENY_INGRESS_X).unwrap();
    let mut late = FixedProber::new(deny_x_table());
    late.before = TruthTable::filled(true);
    late.late = 2;
    let options = RunOptions {
        settle_timeout: std::time::Duration::from_secs(5),
        retry_interval: std::time::Duration::from_millis(1),
    };
    let summary = run_all(&mut late, &scenarios, options);
    assert!(summary.passed(), "{}", summary.failures());
    assert_eq!(late.probes, 3);

    let mut late_once = FixedProber::new(deny_x_table());
    late_once.before = TruthTable::filled(true);
    late_once.late = 2;
    let summary = run_all(&mut late_once, &scenarios, RunOptions::once());
    assert_eq!(summary.wrong_cells(), 27);
}

#[test]
fn prober_errors_stop_the_scenario_and_fail_the_run() {
    struct Broken;
    impl Prober for Broken {
        fn apply(&mut self, _: &[PolicyDoc], _: &Model) -> Result<()> {
            anyhow::bail!("policy rejected")
        }
        fn probe_all(&mut self, _: u16, _: Protocol, _: IpFamily) -> Result<TruthTable> {
            unreachable!("apply failed")
        }
    }
    let summary = run_all(
        &mut Broken,
        &parse(DENY_INGRESS_X).unwrap(),
        RunOptions::once(),
    );
    assert!(!summary.passed());
    assert_eq!(summary.errors(), 1);
    assert!(summary.failures().contains("policy rejected"));
    assert!(summary.to_string().ends_with("1 cases failed to run"));
}

#[test]
fn policy_store_replaces_by_name_and_deletes() {
    let scenarios = parse(DENY_INGRESS_X).unwrap();
    let Action::Apply(docs) = &scenarios[0].steps[0].action else {
        panic!("not an apply")
    };
    let mut model = Model::standard();
    let mut store = PolicyStore::default();
    store
        .apply(&scenarios[0].steps[0].action, &mut model)
        .unwrap();
    let mut replaced = docs[0].clone();
    replaced.yaml.push_str("# replaced\n");
    store
        .apply(&Action::Apply(vec![replaced.clone()]), &mut model)
        .unwrap();
    assert_eq!(store.policies(), vec![replaced]);
    let delete = Action::DeletePolicy {
        namespace: "x".into(),
        name: "deny-ingress".into(),
    };
    store.apply(&delete, &mut model).unwrap();
    assert!(store.policies().is_empty());
    assert!(store.apply(&delete, &mut model).is_err());
    let relabel = Action::LabelPod {
        pod: pod("x/b"),
        change: LabelChange {
            set: [("pod2".to_owned(), "updated".to_owned())].into(),
            remove: vec!["pod".into()],
        },
    };
    store.apply(&relabel, &mut model).unwrap();
    assert_eq!(model.pod(pod("x/b")).labels.len(), 1);
    assert_eq!(model.pod(pod("x/b")).labels["pod2"], "updated");
}

#[test]
fn invalid_scenarios_are_rejected() {
    let cases = [
        ("two actions", DENY_INGRESS_X.replace("  - apply: |", "  - delete_all_policies: true\n    apply: |")),
        ("no probe", DENY_INGRESS_X.replace("    probes:\n    - {port: 80, protocol: TCP, default: allow, expect: [\"* -> x/*: deny\"]}\n", "")),
        ("port 82", DENY_INGRESS_X.replace("port: 80", "port: 82")),
        ("unknown field", DENY_INGRESS_X.replace("  kinds:", "  colour: red\n  kinds:")),
        ("unknown kind", DENY_INGRESS_X.replace("[default-deny-ingress]", "[default-deny]")),
        ("live SCTP", DENY_INGRESS_X.replace("protocol: TCP", "protocol: SCTP").replace("  kinds:", "  live: true\n  kinds:")),
        ("no namespace", DENY_INGRESS_X.replace(", namespace: x}", "}")),
        ("grid and default", DENY_INGRESS_X.replace("default: allow,", "default: allow, grid: \"X\",")),
    ];
    for (what, text) in cases {
        assert_ne!(text, DENY_INGRESS_X, "{what}: the mutation did not apply");
        assert!(parse(&text).is_err(), "{what}: accepted");
    }
    let twice = format!(
        "{DENY_INGRESS_X}{}",
        DENY_INGRESS_X.replace("scenarios:\n", "")
    );
    assert!(
        parse(&twice).is_ok(),
        "duplicates are checked across files by load_all"
    );
}

#[test]
fn scenario_data_holds_every_upstream_case_and_every_kind() {
    let scenarios = load_all(&scenario_dir()).unwrap();
    let count = |origin: Origin| scenarios.iter().filter(|s| s.origin == origin).count();
    assert_eq!(count(Origin::UpstreamE2e), 42);
    assert_eq!(count(Origin::UpstreamE2eUdp), 3);
    assert_eq!(count(Origin::UpstreamE2eSctp), 3);
    assert!(count(Origin::Cyclonus) >= 10);
    let titles: BTreeSet<&str> = scenarios
        .iter()
        .filter(|s| s.origin == Origin::UpstreamE2e)
        .map(|s| s.mirrors.as_str())
        .collect();
    assert_eq!(titles.len(), 42, "each upstream TCP case is mirrored once");
    for origin in [Origin::UpstreamE2eUdp, Origin::UpstreamE2eSctp] {
        let protocol = if origin == Origin::UpstreamE2eUdp {
            Protocol::UDP
        } else {
            Protocol::SCTP
        };
        for s in scenarios.iter().filter(|s| s.origin == origin) {
            assert!(
                s.steps
                    .iter()
                    .flat_map(|st| &st.probes)
                    .all(|p| p.protocol == protocol),
                "{}",
                s.name
            );
        }
    }
    let covered: BTreeSet<Kind> = scenarios
        .iter()
        .flat_map(|s| s.kinds.iter().copied())
        .collect();
    let missing: Vec<Kind> = Kind::ALL
        .iter()
        .copied()
        .filter(|k| !covered.contains(k))
        .collect();
    assert!(missing.is_empty(), "kinds without a scenario: {missing:?}");
}

#[test]
fn live_subset_is_small_tcp_udp_and_covers_the_main_kinds() {
    let live = load_live(&scenario_dir()).unwrap();
    assert!(
        (10..=16).contains(&live.len()),
        "{} live scenarios",
        live.len()
    );
    for s in &live {
        for p in s.steps.iter().flat_map(|st| &st.probes) {
            assert!(
                matches!(p.protocol, Protocol::TCP | Protocol::UDP) && p.family == IpFamily::IPv4,
                "{}",
                s.name
            );
        }
    }
    let covered: BTreeSet<Kind> = live.iter().flat_map(|s| s.kinds.iter().copied()).collect();
    let required = [
        Kind::DefaultDenyIngress,
        Kind::DefaultDenyEgress,
        Kind::AllowAll,
        Kind::PodSelector,
        Kind::NamespaceSelector,
        Kind::AndPeer,
        Kind::OrPeers,
        Kind::MatchNotIn,
        Kind::NumberedPort,
        Kind::NamedPort,
        Kind::NamedPortWrongProtocol,
        Kind::EndPort,
        Kind::IpBlock,
        Kind::IpBlockExcept,
        Kind::MultiplePolicies,
        Kind::PolicyUpdate,
        Kind::PolicyDelete,
        Kind::DeleteAll,
        Kind::PodRelabel,
        Kind::NamespaceRelabel,
        Kind::IngressAndEgress,
        Kind::EgressPorts,
        Kind::Udp,
    ];
    let missing: Vec<Kind> = required
        .iter()
        .copied()
        .filter(|k| !covered.contains(k))
        .collect();
    assert!(
        missing.is_empty(),
        "kinds without a live scenario: {missing:?}"
    );
}
