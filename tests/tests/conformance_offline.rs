//! Runs every conformance scenario (`tests/conformance/*.yaml`) through the policy library, the
//! shipped path (compile, then evaluate the map entries) and the reference evaluator, and fails on
//! any cell that differs from the upstream expectation.

use bulkhead_tests::conformance::offline::{Engine, OfflineProber};
use bulkhead_tests::conformance::{
    self, Action, ExpectRule, Expectation, PodId, RunOptions, Scenario, Summary, TruthTable,
    WrongCell,
};

fn scenarios() -> Vec<Scenario> {
    conformance::load_all(&conformance::scenario_dir()).expect("scenario files load")
}

fn run(engine: Engine, scenarios: &[Scenario]) -> Summary {
    conformance::run_all(
        &mut OfflineProber::new(engine),
        scenarios,
        RunOptions::once(),
    )
}

#[test]
fn compiled_policies_match_every_scenario() {
    let summary = run(Engine::Compiled, &scenarios());
    println!("{summary}");
    assert!(summary.passed(), "{summary}\n\n{}", summary.failures());
}

#[test]
fn reference_evaluator_matches_every_scenario() {
    let summary = run(Engine::Reference, &scenarios());
    println!("reference evaluator: {summary}");
    assert!(
        summary.passed(),
        "reference evaluator: {summary}\n\n{}",
        summary.failures()
    );
}

/// The harness must not pass silently: a scenario whose expectation is wrong in one cell is
/// reported as a mismatch naming that cell, with the compiler answering.
#[test]
fn a_wrong_expectation_is_reported_with_its_cell() {
    let mut scenario = scenarios()
        .into_iter()
        .find(|s| s.name == "default-deny-ingress")
        .expect("scenario");
    let (from, to) = (PodId::parse("y/a").unwrap(), PodId::parse("x/a").unwrap());
    let probe = &mut scenario.steps[0].probes[0];
    // Claim y/a reaches x/a although x denies all ingress.
    let Expectation::Rules { rules, .. } = &mut probe.expectation else {
        panic!("rules expected")
    };
    rules.push(ExpectRule::parse("y/a -> x/a: allow").unwrap());
    probe.expected = probe.expectation.table();

    let summary = run(Engine::Compiled, std::slice::from_ref(&scenario));
    assert!(!summary.passed());
    assert_eq!(summary.wrong_cells(), 1, "{}", summary.failures());
    let mismatch = &summary.reports[0].mismatches[0];
    assert_eq!(
        mismatch.wrong,
        vec![WrongCell {
            from,
            to,
            expected: true
        }]
    );
    assert!(
        summary
            .failures()
            .contains("y/a -> x/a: expected allow, observed deny"),
        "{}",
        summary.failures()
    );
}

/// And the other way: a table the prober cannot produce (everything allowed under a deny-all
/// policy) fails in every denied cell.
#[test]
fn an_all_allow_expectation_fails_under_deny_all() {
    let mut scenario = scenarios()
        .into_iter()
        .find(|s| s.name == "default-deny-all")
        .expect("scenario");
    let probe = &mut scenario.steps[0].probes[0];
    probe.expected = TruthTable::filled(true);
    let summary = run(Engine::Compiled, std::slice::from_ref(&scenario));
    // x's 3 pods deny egress to all 9, and all 9 are denied ingress to x's 3: 27 + 27 - 9.
    assert_eq!(summary.wrong_cells(), 45, "{}", summary.failures());
}

/// Relabelling steps reach the prober: without the label change, `updated-pod` would keep x/b out.
#[test]
fn label_steps_change_the_answer() {
    let scenario = scenarios()
        .into_iter()
        .find(|s| s.name == "updated-pod")
        .expect("scenario");
    assert!(matches!(scenario.steps[1].action, Action::LabelPod { .. }));
    let summary = run(Engine::Compiled, std::slice::from_ref(&scenario));
    assert!(summary.passed(), "{}", summary.failures());
    let (b, a) = (PodId::parse("x/b").unwrap(), PodId::parse("x/a").unwrap());
    assert!(!scenario.steps[0].probes[0].expected.get(b, a));
    assert!(scenario.steps[1].probes[0].expected.get(b, a));
}
