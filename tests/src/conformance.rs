//! NetworkPolicy conformance: the upstream Kubernetes e2e cases and cyclonus-style cases as data
//! (`tests/conformance/*.yaml`, format in [`scenario`]), the 9-pod model they run on, and a
//! runner that replays each scenario against a [`Prober`] and compares full 9x9 truth tables,
//! printing upstream-style expected / observed / comparison grids and the wrong cells.
//!
//! A prober is either [`offline::OfflineProber`] (the policy compiler and evaluator) or a live
//! one over the kernel datapath. A live prober:
//! - runs the nine pods of [`Model::standard`] as workloads with the addresses of
//!   [`PodId::ipv4`] (`10.200.<ns>.<pod>`, which the ipBlock cases name) and servers on TCP and
//!   UDP ports 80 and 81;
//! - in [`Prober::apply`], makes the given policies (the complete set) and the model's labels
//!   the enforced state; [`offline::inventory`] turns the model into the policy library's
//!   inventory (add the cgroup paths);
//! - in [`Prober::probe_all`], connects from every pod to every pod (itself included) and reports
//!   who got through.
//!
//! The live subset is the scenarios tagged `live: true` (TCP and UDP over IPv4 only, checked at
//! load), run with retries because enforcement converges within seconds:
//! ```no_run
//! use bulkhead_tests::conformance::{self, RunOptions};
//! # fn demo(prober: &mut dyn conformance::Prober) -> anyhow::Result<()> {
//! let scenarios = conformance::load_live(&conformance::scenario_dir())?;
//! let options = RunOptions::eventually(std::time::Duration::from_secs(5));
//! let summary = conformance::run_all(prober, &scenarios, options);
//! println!("{summary}");
//! assert!(summary.passed(), "{}", summary.failures());
//! # Ok(()) }
//! ```

mod model;
pub mod offline;
mod runner;
pub mod scenario;
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
