//! NetworkPolicy conformance: the upstream Kubernetes e2e cases and cyclonus-style cases as data
//! (`tests/conformance/*.yaml`), the 9-pod model they run on, and a runner that replays each
//! scenario against a [`Prober`] and compares full 9x9 truth tables.
//!
//! A prober is either [`offline::OfflineProber`] (the policy compiler and evaluator) or a live
//! one over the kernel datapath. Using it:
//! ```no_run
//! use bulkhead_tests::conformance::{self, RunOptions};
//! # fn demo(prober: &mut dyn conformance::Prober) -> anyhow::Result<()> {
//! let scenarios = conformance::load_live(&conformance::scenario_dir())?;
//! let summary = conformance::run_all(prober, &scenarios, RunOptions::eventually(std::time::Duration::from_secs(5)));
//! println!("{summary}");
//! assert!(summary.passed(), "{}", summary.failures());
//! # Ok(()) }
//! ```

mod model;
pub mod offline;

mod runner;
mod scenario;
mod table;
#[cfg(test)]
mod tests;

pub use model::{
    ContainerPort, IpFamily, LabelChange, Model, NAMESPACE_NAME_LABEL, NAMESPACES, Namespace,
    POD_COUNT, POD_NAMES, PORTS, Pod, PodId, Protocol, SERVICE_ACCOUNT,
};
pub use runner::{
    Mismatch, PolicyStore, Prober, RunOptions, ScenarioReport, Summary, run_all, run_scenario,
};
pub use scenario::{
    Action, Kind, Origin, PolicyDoc, Probe, Scenario, Step, load_all, load_file, load_live,
    parse_scenarios, scenario_dir,
};
pub use table::{ExpectRule, Expectation, PeerPattern, TruthTable, Verdict, WrongCell};
