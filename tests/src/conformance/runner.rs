//! Replays scenarios against a [`Prober`] and compares every probe's full truth table.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use super::model::{IpFamily, Model, POD_COUNT, Protocol};
use super::scenario::{Action, PolicyDoc, Probe, Scenario};
use super::table::{TruthTable, WrongCell};

/// Something that enforces policies over the model and reports who can reach whom: the offline
/// compiler, or the kernel datapath with nine live workloads.
pub trait Prober {
    /// Makes `policies` (the complete set: anything not listed is deleted) and the labels of
    /// `model` the state in force. Called after every step, before its probes.
    fn apply(&mut self, policies: &[PolicyDoc], model: &Model) -> Result<()>;

    /// Probes every ordered pair of pods, self pairs included, on `port`/`protocol`, connecting
    /// to the destination pod's address of `family`.
    fn probe_all(&mut self, port: u16, protocol: Protocol, family: IpFamily) -> Result<TruthTable>;
}

/// How patiently probes are retried: the oracle is "eventually equal".
#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    /// After a step, keep re-probing a mismatching table until this much time has passed.
    pub settle_timeout: Duration,
    /// Pause between two probes of the same table.
    pub retry_interval: Duration,
}

impl RunOptions {
    /// Probe once, no retry: for a prober whose answer cannot change by waiting (offline).
    pub fn once() -> RunOptions {
        RunOptions {
            settle_timeout: Duration::ZERO,
            retry_interval: Duration::ZERO,
        }
    }

    /// Retry for up to `settle_timeout` (the live datapath converges within seconds).
    pub fn eventually(settle_timeout: Duration) -> RunOptions {
        RunOptions {
            settle_timeout,
            retry_interval: Duration::from_millis(250),
        }
    }
}

/// The desired policy set of a scenario, keyed by namespace and name.
#[derive(Clone, Debug, Default)]
pub struct PolicyStore {
    policies: BTreeMap<(String, String), PolicyDoc>,
}

impl PolicyStore {
    /// Applies one action's effect on policies and labels.
    pub fn apply(&mut self, action: &Action, model: &mut Model) -> Result<()> {
        match action {
            Action::Apply(docs) => {
                for doc in docs {
                    self.policies
                        .insert((doc.namespace.clone(), doc.name.clone()), doc.clone());
                }
            }
            Action::DeletePolicy { namespace, name } => {
                self.policies
                    .remove(&(namespace.clone(), name.clone()))
                    .ok_or_else(|| {
                        anyhow!("delete_policy: there is no policy {namespace}/{name}")
                    })?;
            }
            Action::DeleteAllPolicies => self.policies.clear(),
            Action::LabelPod { pod, change } => model.relabel_pod(*pod, change),
            Action::LabelNamespace { namespace, change } => {
                if !model.relabel_namespace(namespace, change) {
                    return Err(anyhow!("label_namespace: no namespace {namespace}"));
                }
            }
        }
        Ok(())
    }

    /// The policies in force, ordered by namespace and name.
    pub fn policies(&self) -> Vec<PolicyDoc> {
        self.policies.values().cloned().collect()
    }
}

/// A probe whose observed table differs from the expected one.
#[derive(Clone, Debug)]
pub struct Mismatch {
    pub scenario: String,
    pub mirrors: String,
    /// 1-based.
    pub step: usize,
    pub action: String,
    /// The policies in force (`namespace/name`).
    pub policies: Vec<String>,
    pub probe: String,
    pub expected: TruthTable,
    pub observed: TruthTable,
    pub wrong: Vec<WrongCell>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "scenario `{}` (mirrors \"{}\"), step {} ({}), probe {}: {} wrong cell(s)",
            self.scenario,
            self.mirrors,
            self.step,
            self.action,
            self.probe,
            self.wrong.len()
        )?;
        writeln!(f, "policies in force: [{}]", self.policies.join(", "))?;
        writeln!(f, "expected:\n{}", self.expected.render())?;
        writeln!(f, "observed:\n{}", self.observed.render())?;
        writeln!(
            f,
            "comparison (X = wrong):\n{}",
            self.expected.render_comparison(&self.observed)
        )?;
        writeln!(f, "wrong cells:")?;
        for cell in &self.wrong {
            writeln!(f, "  {cell}")?;
        }
        Ok(())
    }
}

/// The outcome of one scenario.
#[derive(Clone, Debug)]
pub struct ScenarioReport {
    pub name: String,
    /// Steps run (all of them unless `error` is set).
    pub steps: usize,
    pub probes: usize,
    pub cells: usize,
    pub mismatches: Vec<Mismatch>,
    /// Set when the prober failed (for example, the policies did not compile); the remaining
    /// steps were not run.
    pub error: Option<String>,
}

impl ScenarioReport {
    pub fn wrong_cells(&self) -> usize {
        self.mismatches.iter().map(|m| m.wrong.len()).sum()
    }

    pub fn passed(&self) -> bool {
        self.mismatches.is_empty() && self.error.is_none()
    }
}

/// Replays one scenario from the standard model with no policies.
pub fn run_scenario(
    prober: &mut dyn Prober,
    scenario: &Scenario,
    options: RunOptions,
) -> ScenarioReport {
    let mut report = ScenarioReport {
        name: scenario.name.clone(),
        steps: 0,
        probes: 0,
        cells: 0,
        mismatches: Vec::new(),
        error: None,
    };
    let mut model = Model::standard();
    let mut store = PolicyStore::default();
    for (index, step) in scenario.steps.iter().enumerate() {
        let step_no = index + 1;
        let applied = store
            .apply(&step.action, &mut model)
            .and_then(|()| prober.apply(&store.policies(), &model))
            .with_context(|| format!("step {step_no} ({})", step.action));
        if let Err(e) = applied {
            report.error = Some(format!("{e:#}"));
            return report;
        }
        report.steps += 1;
        for probe in &step.probes {
            match probe_until_equal(prober, probe, options) {
                Ok(observed) => {
                    report.probes += 1;
                    report.cells += POD_COUNT * POD_COUNT;
                    let wrong = probe.expected.wrong_cells(&observed);
                    if !wrong.is_empty() {
                        report.mismatches.push(Mismatch {
                            scenario: scenario.name.clone(),
                            mirrors: scenario.mirrors.clone(),
                            step: step_no,
                            action: step.action.to_string(),
                            policies: store
                                .policies()
                                .iter()
                                .map(|p| format!("{}/{}", p.namespace, p.name))
                                .collect(),
                            probe: probe.describe(),
                            expected: probe.expected,
                            observed,
                            wrong,
                        });
                    }
                }
                Err(e) => {
                    report.error = Some(format!(
                        "step {step_no} ({}), probe {}: {e:#}",
                        step.action,
                        probe.describe()
                    ));
                    return report;
                }
            }
        }
    }
    report
}

fn probe_until_equal(
    prober: &mut dyn Prober,
    probe: &Probe,
    options: RunOptions,
) -> Result<TruthTable> {
    let deadline = Instant::now() + options.settle_timeout;
    loop {
        let observed = prober.probe_all(probe.port, probe.protocol, probe.family)?;
        if observed == probe.expected || Instant::now() >= deadline {
            return Ok(observed);
        }
        std::thread::sleep(options.retry_interval);
    }
}

/// The outcome of a run over many scenarios.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub reports: Vec<ScenarioReport>,
}

impl Summary {
    pub fn cases(&self) -> usize {
        self.reports.len()
    }

    pub fn steps(&self) -> usize {
        self.reports.iter().map(|r| r.steps).sum()
    }

    pub fn probes(&self) -> usize {
        self.reports.iter().map(|r| r.probes).sum()
    }

    pub fn cells(&self) -> usize {
        self.reports.iter().map(|r| r.cells).sum()
    }

    pub fn wrong_cells(&self) -> usize {
        self.reports.iter().map(ScenarioReport::wrong_cells).sum()
    }

    pub fn errors(&self) -> usize {
        self.reports.iter().filter(|r| r.error.is_some()).count()
    }

    pub fn passed(&self) -> bool {
        self.reports.iter().all(ScenarioReport::passed)
    }

    /// Every mismatch and error, readable; empty when the run passed.
    pub fn failures(&self) -> String {
        let mut out = String::new();
        for report in &self.reports {
            if let Some(error) = &report.error {
                out.push_str(&format!("scenario `{}` failed: {error}\n\n", report.name));
            }
            for mismatch in &report.mismatches {
                out.push_str(&format!("{mismatch}\n"));
            }
        }
        out
    }
}

/// `conformance: 63 cases, 90 steps, 10611 cells, 0 wrong` (and the errors, if any).
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "conformance: {} cases, {} steps, {} cells, {} wrong",
            self.cases(),
            self.steps(),
            self.cells(),
            self.wrong_cells()
        )?;
        if self.errors() > 0 {
            write!(f, ", {} cases failed to run", self.errors())?;
        }
        Ok(())
    }
}

/// Runs every scenario, one after the other, each from a clean state.
pub fn run_all(prober: &mut dyn Prober, scenarios: &[Scenario], options: RunOptions) -> Summary {
    Summary {
        reports: scenarios
            .iter()
            .map(|s| run_scenario(prober, s, options))
            .collect(),
    }
}
