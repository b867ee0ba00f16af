//! The live NetworkPolicy conformance run: the scenarios tagged `live: true` replayed through the
//! real kernel datapath. Nine workloads (`x/a` .. `z/c`, each its own network namespace and
//! cgroup, with the model's addresses) serve TCP and UDP on ports 80 and 81; every step's
//! policies go through the shipped path (compile with one long-lived `Compiler`, then
//! `agent::desired::translate`, then `Datapath::apply`), and every probe connects all 81 ordered
//! pairs for real. The observed tables must equal the expected ones.
//!
//! Needs root and BPF; elsewhere it skips with a message (or fails when
//! `BULKHEAD_REQUIRE_KERNEL_TESTS=1`), like the datapath tests.

#[allow(
    dead_code,
    reason = "the datapath tests' fixture: only skip() and the pins are used"
)]
#[path = "datapath/common.rs"]
mod common;

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bulkhead_policy::{AllocationTable, Compiler};
use bulkhead_tests::conformance::offline::{self, Engine, OfflineProber};
use bulkhead_tests::conformance::{
    self, IpFamily, Model, PORTS, PodId, PolicyDoc, PolicyStore, Prober, Protocol, RunOptions,
    Summary, TruthTable,
};
use bulkhead_tests::netns::{TestNet, ip};
use bulkhead_tests::workload::{ProbeResult, Proto, Server, Workload};
use common::{PinGuard, bpffs_root, skip};
use enforcer::agent::desired;
use enforcer::datapath::{self, Datapath};

/// How long one probe waits for its echo: a denied pair costs this much, an allowed one
/// about a millisecond on the test bridge.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a step may take to show its expected table (enforcement is synchronous with
/// `apply`; the margin covers a probe lost to load).
const SETTLE: Duration = Duration::from_secs(5);

/// A [`Prober`] over the kernel datapath and nine live workloads. Field order is drop order:
/// servers, then the datapath (handle, then pins: detached even on panic), then the network.
struct LiveProber {
    _servers: Vec<Server>,
    datapath: Datapath,
    _pins: PinGuard,
    /// In truth-table order: `workloads[pod.index()]`.
    workloads: Vec<Workload>,
    net: TestNet,
    cgroup_root: PathBuf,
    /// One compiler for the whole run, as the agent keeps one: identities stay stable.
    compiler: Compiler,
    /// Tables probed so far (more than the scenarios' probes when some needed a retry).
    rounds: usize,
}

impl LiveProber {
    /// Builds the network, starts the servers, installs the datapath under the network's parent
    /// cgroup, and checks that every pair connects before any policy.
    fn new(name: &str) -> Result<LiveProber> {
        let mut net = TestNet::new(name).context("test network")?;
        let mut workloads = Vec::new();
        for pod in PodId::all() {
            let workload = net
                .add_workload(
                    &format!("{}-{}", pod.namespace(), pod.name()),
                    pod.ipv4(),
                    pod.ipv6(),
                )
                .with_context(|| format!("workload {pod}"))?;
            add_model_route(&workload)?;
            workloads.push(workload);
        }
        let mut servers = Vec::new();
        for workload in &workloads {
            for proto in [Proto::Tcp, Proto::Udp] {
                servers.push(
                    workload
                        .serve(&PORTS, proto)
                        .with_context(|| format!("{proto:?} server on {}", workload.name))?,
                );
            }
        }
        let root = bpffs_root(&net);
        let pins = PinGuard(root.clone());
        let datapath =
            Datapath::install_or_adopt(&root, net.cgroup_parent()).context("installing")?;
        let mut prober = LiveProber {
            _servers: servers,
            datapath,
            _pins: pins,
            workloads,
            net,
            cgroup_root: datapath::find_cgroup2_mount()?,
            compiler: Compiler::new(AllocationTable::new()),
            rounds: 0,
        };
        prober.apply(&[], &Model::standard())?;
        for protocol in [Protocol::TCP, Protocol::UDP] {
            let table = prober.probe_all(80, protocol, IpFamily::IPv4)?;
            ensure!(
                table == TruthTable::filled(true),
                "without policies every pair must connect on {protocol}/80:\n{}",
                table.render()
            );
        }
        Ok(prober)
    }
}

/// The workloads sit in different /24s (`10.200.<ns>.<pod>`) on one bridge, and
/// `TestNet::add_workload` gives them a /24: an on-link route makes the whole model one link.
fn add_model_route(workload: &Workload) -> Result<()> {
    let ns = workload
        .netns_path
        .file_name()
        .and_then(|n| n.to_str())
        .context("netns name")?;
    ip(&["-n", ns, "route", "add", "10.200.0.0/16", "dev", "eth0"])?;
    Ok(())
}

impl Prober for LiveProber {
    fn apply(&mut self, policies: &[PolicyDoc], model: &Model) -> Result<()> {
        let policies = offline::policy_set(policies)?;
        let mut inventory = offline::inventory(model);
        for workload in &mut inventory.workloads {
            let pod = PodId::parse(&format!("{}/{}", workload.namespace, workload.name))
                .context("a model pod")?;
            let cgroup = &self.workloads[pod.index()].cgroup_path;
            workload.cgroup = Some(cgroup.to_string_lossy().into_owned());
        }
        inventory.validate("conformance model (live)")?;
        let compiled = self
            .compiler
            .compile(&policies, &inventory, jiff::Timestamp::now())
            .context("compiling the policies")?;
        let revision = self.datapath.current()?.revision + 1;
        let translation = desired::translate(
            &compiled,
            revision,
            &self.cgroup_root,
            &datapath::boot_time_offset(),
        );
        ensure!(
            translation.missing.is_empty(),
            "workload cgroups not found: {:?}",
            translation.missing
        );
        self.datapath
            .apply(&translation.maps)
            .context("applying the maps")?;
        Ok(())
    }

    /// All 81 pairs at once, one thread and one helper process per pair. UDP is probed both
    /// unconnected (`sendmsg` hooks) and connected (`connect` hooks); the two must agree.
    fn probe_all(&mut self, port: u16, protocol: Protocol, family: IpFamily) -> Result<TruthTable> {
        let modes: &[Proto] = match protocol {
            Protocol::TCP => &[Proto::Tcp],
            Protocol::UDP => &[Proto::Udp, Proto::UdpConnected],
            Protocol::SCTP => bail!("SCTP is not served by the live workloads"),
        };
        self.rounds += 1;
        let (net, workloads) = (&self.net, &self.workloads);
        let outcomes: Vec<(PodId, PodId, Result<bool, String>)> = thread::scope(|scope| {
            let handles: Vec<_> = PodId::all()
                .flat_map(|from| PodId::all().map(move |to| (from, to)))
                .map(|(from, to)| {
                    scope.spawn(move || {
                        let results = modes.iter().map(|&mode| {
                            let to_ip = to.address(family);
                            let from = &workloads[from.index()];
                            (
                                mode,
                                net.probe_with_timeout(from, to_ip, port, mode, PROBE_TIMEOUT),
                            )
                        });
                        (from, to, cell(results.collect()))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("probe thread"))
                .collect()
        });
        let mut table = TruthTable::filled(false);
        let mut problems = Vec::new();
        for (from, to, outcome) in outcomes {
            match outcome {
                Ok(allowed) => table.set(from, to, allowed),
                Err(why) => problems.push(format!("  {from} -> {to}: {why}")),
            }
        }
        ensure!(
            problems.is_empty(),
            "{protocol}/{port} {family}: probes without a verdict (harness failures):\n{}",
            problems.join("\n")
        );
        Ok(table)
    }
}

/// One cell from its probes: connected is allow; EPERM or silence is deny; a refusal (no
/// server) or a helper error is a harness failure, as is a disagreement between probe modes.
fn cell(results: Vec<(Proto, ProbeResult)>) -> Result<bool, String> {
    let mut verdicts = Vec::new();
    for (mode, result) in &results {
        verdicts.push(match result {
            ProbeResult::Connected => true,
            ProbeResult::Denied | ProbeResult::Timeout => false,
            ProbeResult::Refused | ProbeResult::Error(_) => {
                return Err(format!("{mode:?}: {result:?}"));
            }
        });
    }
    if verdicts.windows(2).all(|w| w[0] == w[1]) {
        Ok(verdicts[0])
    } else {
        Err(format!("probe modes disagree: {results:?}"))
    }
}

/// `conformance (live): N cases, S steps, C cells, W wrong`.
fn live_line(summary: &Summary) -> String {
    summary
        .to_string()
        .replacen("conformance:", "conformance (live):", 1)
}

#[test]
fn kernel_datapath_matches_every_live_scenario() {
    if skip() {
        return;
    }
    let started = Instant::now();
    let scenarios =
        conformance::load_live(&conformance::scenario_dir()).expect("scenario files load");
    assert!(!scenarios.is_empty(), "no scenario is tagged live");
    let mut prober = LiveProber::new("conf-live").expect("live conformance setup");
    let setup = started.elapsed();
    let rounds_before = prober.rounds;
    let summary = conformance::run_all(&mut prober, &scenarios, RunOptions::eventually(SETTLE));
    println!(
        "{} (wall time {:.1?}, setup {setup:.1?}, {} tables probed for {} probes)",
        live_line(&summary),
        started.elapsed(),
        prober.rounds - rounds_before,
        summary.probes()
    );
    assert!(
        summary.passed(),
        "{}\n\n{}",
        live_line(&summary),
        summary.failures()
    );
}

/// "What `trace` says and what the kernel does agree": for one step with policies on both sides
/// of the traffic (egress in x, ingress in y), the table the kernel shows equals, cell by cell,
/// the one the offline evaluator reads from the compiled entries, independently of the
/// scenario's expectation.
#[test]
fn kernel_and_offline_compiled_tables_agree() {
    if skip() {
        return;
    }
    let scenario = conformance::load_live(&conformance::scenario_dir())
        .expect("scenario files load")
        .into_iter()
        .find(|s| s.name == "deny-egress-on-client-side")
        .expect("live scenario deny-egress-on-client-side");
    let step = &scenario.steps[0];
    let mut model = Model::standard();
    let mut store = PolicyStore::default();
    store.apply(&step.action, &mut model).expect("step");

    let mut offline = OfflineProber::new(Engine::Compiled);
    offline.apply(&store.policies(), &model).expect("offline");
    let mut live = LiveProber::new("conf-agree").expect("live setup");
    live.apply(&store.policies(), &model).expect("live apply");
    for probe in &step.probes {
        let (port, protocol, family) = (probe.port, probe.protocol, probe.family);
        let trace = offline.probe_all(port, protocol, family).expect("offline");
        let allowed = trace.allowed_count();
        assert!(
            0 < allowed && allowed < 81,
            "a table with both verdicts is needed to tell anything: {allowed} allowed"
        );
        let deadline = Instant::now() + SETTLE;
        let kernel = loop {
            let kernel = live.probe_all(port, protocol, family).expect("live");
            if kernel == trace || Instant::now() >= deadline {
                break kernel;
            }
            thread::sleep(Duration::from_millis(250));
        };
        let wrong = trace.wrong_cells(&kernel);
        assert!(
            wrong.is_empty(),
            "{}: kernel differs from the compiled trace\ntrace:\n{}\nkernel:\n{}\ncomparison (X = differ):\n{}\n{}",
            probe.describe(),
            trace.render(),
            kernel.render(),
            trace.render_comparison(&kernel),
            wrong
                .iter()
                .map(|c| format!("  {c}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
