//! Part B: the kernel datapath on veth between two workload namespaces (issue 3).
//!
//! Four identical test networks ("lanes") exist side by side, one per configuration: no
//! programs (the baseline), pass-only programs at the datapath's six hooks (the hook floor), the
//! datapath with ~10 policy entries, and the datapath with ~10,000.
//! Each lane has a client and a server workload with the same addresses (10.200.0.1 -> .2, in
//! namespaces of their own), and the datapath, when there is one, is attached to the lane's
//! parent cgroup under a bpffs root of its own. Repetitions run the lanes back to back, in an
//! order that rotates, so the ratios compare measurements taken under the same machine load.
//!
//! Measured per lane: the TCP connection rate (connect, one 64-byte request and response, the
//! server closes) and the throughput of one TCP stream of 64 KiB writes. Then, in a separate pass
//! with `BPF_ENABLE_STATS` on (the statistics cost time themselves), each program's run time per
//! invocation. Every verdict event is drained after each run and checked: the pair's traffic
//! must be allowed by its own entries, so the programs really looked the flows up.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use enforcer::datapath::{
    Datapath, DesiredMaps, EventReader, ProgramStats, enable_program_stats, find_cgroup2_mount,
    pins, uninstall,
};
use enforcer_common::{
    DIR_EGRESS, DIR_INGRESS, DefaultKey, HOOK_CONNECT, HOOK_SKB_INGRESS, POLICY_KEY_FIXED_BITS,
    PROTO_TCP, PolicyKey, PolicyValue, REASON_ALLOWED_BY_RULE, REASON_DEFAULT_DENY,
    REASON_DENIED_BY_RULE, TIME_UNBOUNDED_END, VERDICT_ALLOW, VERDICT_DENY, WorkloadValue,
};

use super::{
    stats::{Samples, timed},
    worker::{Run, ServerProcess, bulk_from, connection_rate_from},
};
use crate::{
    bpf_query::{ALL_ATTACH_TYPES, attached_count},
    netns::TestNet,
    pass_programs::PassPrograms,
    workload::Workload,
};

const CLIENT: u32 = 256;
const SERVER: u32 = 257;
const CRR_PORT: u16 = 8080;
const BULK_PORT: u16 = 5001;
/// Rule ids of the entries that allow the pair (client egress, server ingress, per port).
const PAIR_RULES: [u32; 4] = [10, 11, 12, 13];
/// Entries of the small configuration that do not concern the pair.
const SMALL_OTHERS: usize = 6;
/// Policy entries of the large configuration, the pair's included.
const LARGE_ENTRIES: usize = 10_000;
/// Identities of the other (never running) peers start here.
const FIRST_OTHER_PEER: u32 = 1_000;

/// Connections per connection-rate run, and per warm-up run.
const CRR_COUNT: u32 = 2_000;
const CRR_WARM_UP: u32 = 300;
/// Length of one bulk run, and of a warm-up run.
const BULK_TIME: Duration = Duration::from_millis(500);
const BULK_WARM_UP: Duration = Duration::from_millis(300);
/// Measured repetitions per lane.
const REPS: usize = 21;
/// Rounds of the statistics pass (one connection-rate run and one bulk run per lane each,
/// lanes interleaved), summed: one run alone is at the mercy of a noisy neighbour.
pub const STATS_ROUNDS: usize = 3;

/// One configuration of the datapath.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// No programs attached.
    Baseline,
    /// Programs that pass everything (`r0 = 1; exit`) at the datapath's six hooks: what the
    /// hooks themselves cost on this machine, the floor under any datapath's ratio.
    Floor,
    /// The datapath with the pair's entries and a few others (~10).
    Small,
    /// The datapath with ~10,000 entries for many other peers and ports.
    Large,
}

impl Config {
    pub fn label(self) -> &'static str {
        match self {
            Self::Baseline => "no programs (baseline)",
            Self::Floor => "pass-only programs (hook floor)",
            Self::Small => "enforcer, ~10 entries",
            Self::Large => "enforcer, ~10k entries",
        }
    }

    /// Whether the lane runs Bulkhead's datapath.
    pub fn enforces(self) -> bool {
        matches!(self, Self::Small | Self::Large)
    }

    fn slug(self) -> &'static str {
        match self {
            Self::Baseline => "bench-base",
            Self::Floor => "bench-floor",
            Self::Small => "bench-small",
            Self::Large => "bench-large",
        }
    }
}

/// Run time of one program over one run (deltas of the kernel's counters).
#[derive(Clone, Debug)]
pub struct ProgramCost {
    pub program: &'static str,
    pub runs: u64,
    pub run_time_ns: u64,
}

impl ProgramCost {
    pub fn ns_per_run(&self) -> f64 {
        self.run_time_ns as f64 / self.runs as f64
    }
}

/// What one lane measured.
#[derive(Clone, Debug)]
pub struct LaneResult {
    pub config: Config,
    pub policy_entries: usize,
    pub addresses: usize,
    /// How long `apply` took to write the lane's maps into empty kernel maps.
    pub apply: Option<Duration>,
    /// Programs (of Bulkhead's attach types) attached to the client's cgroup or any ancestor up
    /// to the cgroup v2 root: 0 for the baseline, 6 with the datapath, or something else ran.
    pub programs_on_path: usize,
    /// Connections per second, one sample per repetition.
    pub connection_rate: Samples,
    /// Connections per CPU-second of the client and the server.
    pub connections_per_cpu_s: Samples,
    /// Bytes per second, one sample per repetition.
    pub throughput: Samples,
    /// Bytes per CPU-second of the client and the server.
    pub bytes_per_cpu_s: Samples,
    /// Verdict events read (in all, from `connect`, from the server's SYN), events that were
    /// not the pair's allow entries, events lost.
    pub events: u64,
    pub connect_events: u64,
    pub syn_events: u64,
    pub unexpected_events: u64,
    pub lost_events: u64,
    /// Per-program cost during a connection-rate run and during a bulk run (stats pass).
    pub connection_costs: Vec<ProgramCost>,
    pub bulk_costs: Vec<ProgramCost>,
    /// Connections and bytes of the runs of the stats pass.
    pub stats_connections: u64,
    pub stats_bulk_bytes: u64,
}

/// What part B measured: the lanes in [`Config`] order.
#[derive(Clone, Debug)]
pub struct DatapathReport {
    pub lanes: Vec<LaneResult>,
    pub connections_per_run: u32,
    pub bulk_time: Duration,
    pub reps: usize,
}

impl DatapathReport {
    pub fn lane(&self, config: Config) -> Option<&LaneResult> {
        self.lanes.iter().find(|l| l.config == config)
    }
}

/// The datapath of one lane: uninstalled (every pin removed, programs detached) on drop.
struct Enforcer {
    events: Option<EventReader>,
    dp: Option<Datapath>,
    root: PathBuf,
}

impl Enforcer {
    /// Installs the datapath on `net`'s parent cgroup under a bpffs root named after `net`.
    fn install(net: &TestNet) -> Result<Self> {
        let root = Path::new(pins::BPFFS_MOUNT).join(net.prefix());
        // The guard exists before the install, so a failed install is cleaned up too.
        let mut guard = Self {
            events: None,
            dp: None,
            root,
        };
        let dp = Datapath::install_or_adopt(&guard.root, net.cgroup_parent())
            .with_context(|| format!("installing the datapath at {}", guard.root.display()))?;
        guard.events = Some(dp.event_reader().context("opening the event reader")?);
        guard.dp = Some(dp);
        Ok(guard)
    }

    fn dp(&mut self) -> Result<&mut Datapath> {
        self.dp.as_mut().context("datapath handle")
    }
}

impl Drop for Enforcer {
    fn drop(&mut self) {
        self.events = None;
        self.dp = None;
        if let Err(e) = uninstall(&self.root) {
            eprintln!("uninstall {}: {e}", self.root.display());
        }
    }
}

/// One configuration's network. Field order is drop order: the datapath goes first, then the
/// server, then the namespaces and cgroups.
struct Lane {
    enforcer: Option<Enforcer>,
    _pass: Option<PassPrograms>,
    server_process: ServerProcess,
    client: Workload,
    server: Workload,
    _net: TestNet,
    result: LaneResult,
}

impl Lane {
    fn new(config: Config) -> Result<Self> {
        let mut net = TestNet::new(config.slug()).context("test network")?;
        let client = net.add_workload(
            "client",
            Ipv4Addr::new(10, 200, 0, 1),
            "fd00:200::1".parse()?,
        )?;
        let server = net.add_workload(
            "server",
            Ipv4Addr::new(10, 200, 0, 2),
            "fd00:200::2".parse()?,
        )?;
        let mut enforcer = None;
        let mut result = LaneResult {
            config,
            policy_entries: 0,
            addresses: 0,
            apply: None,
            programs_on_path: 0,
            connection_rate: Samples::default(),
            connections_per_cpu_s: Samples::default(),
            throughput: Samples::default(),
            bytes_per_cpu_s: Samples::default(),
            events: 0,
            connect_events: 0,
            syn_events: 0,
            unexpected_events: 0,
            lost_events: 0,
            connection_costs: Vec::new(),
            bulk_costs: Vec::new(),
            stats_connections: 0,
            stats_bulk_bytes: 0,
        };
        if let Some(maps) = desired(config, &client, &server) {
            let mut installed = Enforcer::install(&net)?;
            let (applied, t) = timed(|| installed.dp().and_then(|dp| Ok(dp.apply(&maps)?)));
            applied.with_context(|| format!("applying the maps of {}", config.label()))?;
            result.apply = Some(t);
            result.policy_entries = maps.policy.len();
            result.addresses = maps.addresses.len();
            enforcer = Some(installed);
        }
        let pass = (config == Config::Floor)
            .then(|| PassPrograms::attach(net.cgroup_parent()))
            .transpose()
            .context("attaching the pass-only programs")?;
        result.programs_on_path = programs_on_path(&client.cgroup_path)?;
        let server_process = ServerProcess::start(&server, CRR_PORT, BULK_PORT)?;
        Ok(Self {
            enforcer,
            _pass: pass,
            server_process,
            client,
            server,
            _net: net,
            result,
        })
    }

    fn target(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.server.ipv4, port))
    }

    fn connection_rate(&mut self, count: u32) -> Result<Run> {
        let target = self.target(CRR_PORT);
        let run = connection_rate_from(&self.client, &self.server_process, target, count)
            .with_context(|| format!("connection rate, {}", self.result.config.label()))?;
        self.drain_events()?;
        Ok(run)
    }

    /// One measured connection-rate run, added to the lane's samples.
    fn record_connection_rate(&mut self) -> Result<()> {
        let run = self.connection_rate(CRR_COUNT)?;
        self.result.connection_rate.push(run.rate());
        self.result.connections_per_cpu_s.push(run.per_cpu_second());
        Ok(())
    }

    fn throughput(&mut self, time: Duration) -> Result<Run> {
        let target = self.target(BULK_PORT);
        let run = bulk_from(&self.client, &self.server_process, target, time)
            .with_context(|| format!("throughput, {}", self.result.config.label()))?;
        self.drain_events()?;
        Ok(run)
    }

    /// Reads every pending verdict event (as an agent would) and counts those that are not
    /// the pair's allow entries.
    fn drain_events(&mut self) -> Result<()> {
        let Some(reader) = self.enforcer.as_mut().and_then(|e| e.events.as_mut()) else {
            return Ok(());
        };
        let batch = reader.try_next_batch()?;
        self.result.events += batch.events.len() as u64;
        let from = |hook| batch.events.iter().filter(|e| e.hook == hook).count() as u64;
        self.result.connect_events += from(HOOK_CONNECT);
        self.result.syn_events += from(HOOK_SKB_INGRESS);
        self.result.lost_events += batch.lost;
        self.result.unexpected_events += batch
            .events
            .iter()
            .filter(|e| e.verdict != VERDICT_ALLOW || !PAIR_RULES.contains(&e.rule_id))
            .count() as u64;
        Ok(())
    }

    fn program_stats(&mut self) -> Result<Option<Vec<ProgramStats>>> {
        match self.enforcer.as_mut() {
            Some(e) => Ok(Some(e.dp()?.program_stats()?)),
            None => Ok(None),
        }
    }
}

/// Programs attached to `cgroup` and to each of its ancestors up to the cgroup v2 root (the
/// programs that see the cgroup's traffic): 0 for the baseline, 6 for the other lanes.
fn programs_on_path(cgroup: &Path) -> Result<usize> {
    let root = find_cgroup2_mount()?;
    let mut n = 0;
    for dir in cgroup.ancestors().take_while(|d| d.starts_with(&root)) {
        n += attached_count(dir)
            .with_context(|| format!("querying the programs of {}", dir.display()))?;
    }
    Ok(n)
}

/// Adds one reading's per-program costs to a running total.
fn add_costs(total: &mut Vec<ProgramCost>, more: &[ProgramCost]) {
    for m in more {
        match total.iter_mut().find(|t| t.program == m.program) {
            Some(t) => {
                t.runs += m.runs;
                t.run_time_ns += m.run_time_ns;
            }
            None => total.push(m.clone()),
        }
    }
}

/// Per-program differences between two readings; programs that did not run are left out.
fn costs(before: &[ProgramStats], after: &[ProgramStats]) -> Vec<ProgramCost> {
    let before: BTreeMap<_, _> = before.iter().map(|s| (s.name, s)).collect();
    after
        .iter()
        .filter_map(|a| {
            let b = before.get(a.name)?;
            let runs = a.run_count.saturating_sub(b.run_count);
            (runs > 0).then(|| ProgramCost {
                program: a.name,
                runs,
                run_time_ns: a.run_time_ns.saturating_sub(b.run_time_ns),
            })
        })
        .collect()
}

/// Fails unless each lane has exactly its own programs on its client's cgroup path (none for the
/// baseline, the six for the others): another datapath, at the cgroup root say, would distort
/// every comparison.
fn check_placement(lanes: &[Lane]) -> Result<()> {
    for r in lanes.iter().map(|l| &l.result) {
        let expected = match r.config {
            Config::Baseline => 0,
            Config::Floor | Config::Small | Config::Large => ALL_ATTACH_TYPES.len(),
        };
        ensure!(
            r.programs_on_path == expected,
            "{}: {} programs attached on the cgroup path, expected {expected}: another datapath \
             (at the cgroup root?) would distort the comparison",
            r.config.label(),
            r.programs_on_path
        );
    }
    Ok(())
}

/// Fails unless every datapath lane read verdict events and all of them were the pair's allows.
fn check_events(lanes: &[Lane]) -> Result<()> {
    for lane in lanes {
        let r = &lane.result;
        if r.config.enforces() {
            ensure!(
                r.events > 0 && r.unexpected_events == 0,
                "{}: {} events, {} not allowed by the pair's entries: the benchmark did not measure \
                 what it claims",
                r.config.label(),
                r.events,
                r.unexpected_events
            );
        }
    }
    Ok(())
}

/// Runs part B; `progress` receives one line per step.
pub fn run(progress: &mut dyn FnMut(&str)) -> Result<DatapathReport> {
    // The event readers register with this runtime's reactor: it must outlive the lanes.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _entered = runtime.enter();
    progress("datapath: creating four lanes (namespaces, cgroups, datapaths)");
    let mut lanes = [
        Config::Baseline,
        Config::Floor,
        Config::Small,
        Config::Large,
    ]
    .into_iter()
    .map(Lane::new)
    .collect::<Result<Vec<_>>>()?;

    check_placement(&lanes)?;

    progress("datapath: warm-up");
    for lane in &mut lanes {
        lane.connection_rate(CRR_WARM_UP)?;
        lane.throughput(BULK_WARM_UP)?;
    }
    for rep in 0..REPS {
        progress(&format!("datapath: repetition {}/{REPS}", rep + 1));
        let n = lanes.len();
        for i in (0..n).map(|i| (i + rep) % n) {
            lanes[i].record_connection_rate()?;
        }
        for i in (0..n).map(|i| (i + rep) % n) {
            let run = lanes[i].throughput(BULK_TIME)?;
            lanes[i].result.throughput.push(run.rate());
            lanes[i].result.bytes_per_cpu_s.push(run.per_cpu_second());
        }
    }

    progress("datapath: program run times (BPF_ENABLE_STATS on)");
    let stats_fd = enable_program_stats()?;
    for round in 0..STATS_ROUNDS {
        let n = lanes.len();
        for i in (0..n).map(|i| (i + round) % n) {
            let lane = &mut lanes[i];
            let Some(s0) = lane.program_stats()? else {
                continue;
            };
            lane.connection_rate(CRR_COUNT)?;
            lane.result.stats_connections += u64::from(CRR_COUNT);
            let s1 = lane.program_stats()?.context("stats")?;
            lane.result.stats_bulk_bytes += lane.throughput(BULK_TIME)?.units;
            let s2 = lane.program_stats()?.context("stats")?;
            add_costs(&mut lane.result.connection_costs, &costs(&s0, &s1));
            add_costs(&mut lane.result.bulk_costs, &costs(&s1, &s2));
        }
    }
    drop(stats_fd);

    check_events(&lanes)?;
    if lanes
        .iter()
        .any(|l| l.result.connection_rate.0.len() != REPS)
    {
        bail!("a lane is missing repetitions");
    }
    let results = lanes.iter().map(|l| l.result.clone()).collect();
    drop(lanes);
    Ok(DatapathReport {
        lanes: results,
        connections_per_run: CRR_COUNT,
        bulk_time: BULK_TIME,
        reps: REPS,
    })
}

/// Runs connection-rate repetitions of `configs`, interleaved, for `time`, printing each
/// lane's median rate and CPU efficiency as ratios to the first lane's: a quick A/B measurement,
/// and a steady load to look at with a profiler (`perf record -a -g`).
pub fn profile(configs: &[Config], time: Duration, progress: &mut dyn FnMut(&str)) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _entered = runtime.enter();
    let mut lanes = configs
        .iter()
        .map(|&c| Lane::new(c))
        .collect::<Result<Vec<_>>>()?;
    check_placement(&lanes)?;
    for lane in &mut lanes {
        progress(&format!(
            "profile: {} (client cgroup {})",
            lane.result.config.label(),
            lane.client.cgroup_path.display()
        ));
        lane.connection_rate(CRR_WARM_UP)?;
    }
    let started = Instant::now();
    let mut rep = 0;
    // At least one repetition, whatever `time` says.
    while rep == 0 || started.elapsed() < time {
        let n = lanes.len();
        for i in (0..n).map(|i| (i + rep) % n) {
            lanes[i].record_connection_rate()?;
        }
        rep += 1;
    }
    let stats_fd = enable_program_stats()?;
    for lane in &mut lanes {
        let Some(s0) = lane.program_stats()? else {
            continue;
        };
        lane.connection_rate(CRR_COUNT)?;
        let s1 = lane.program_stats()?.context("stats")?;
        let per_connection = costs(&s0, &s1)
            .iter()
            .map(|c| {
                format!(
                    "{} {:.0} ns x {:.1}",
                    c.program,
                    c.ns_per_run(),
                    c.runs as f64 / f64::from(CRR_COUNT)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        progress(&format!(
            "profile: {}: per connection (stats pass): {per_connection}",
            lane.result.config.label()
        ));
    }
    drop(stats_fd);
    check_events(&lanes)?;
    let first = &lanes[0].result;
    let (rate0, cpu0) = (
        first.connection_rate.median(),
        first.connections_per_cpu_s.median(),
    );
    for lane in &lanes {
        let r = &lane.result;
        let (rate, cpu) = (r.connection_rate.median(), r.connections_per_cpu_s.median());
        progress(&format!(
            "profile: {}: {rep} runs, median {rate:.0} connections/s ({:.3}), {cpu:.0} per \
             CPU-second ({:.3}), {} verdict events, {} lost",
            r.config.label(),
            rate / rate0,
            cpu / cpu0,
            r.events,
            r.lost_events
        ));
    }
    Ok(())
}

/// The maps of a configuration (none for the baseline): both workloads, the pair allowed on the
/// two benchmark ports and nothing else (client egress and server ingress isolated), plus
/// entries for other peers and ports that the pair's traffic never matches.
fn desired(config: Config, client: &Workload, server: &Workload) -> Option<DesiredMaps> {
    let others = match config {
        Config::Baseline | Config::Floor => return None,
        Config::Small => SMALL_OTHERS,
        Config::Large => LARGE_ENTRIES - PAIR_RULES.len(),
    };
    let mut m = DesiredMaps {
        revision: 1,
        ..DesiredMaps::default()
    };
    for (w, id) in [(client, CLIENT), (server, SERVER)] {
        m.workloads.insert(
            w.cgroup_id,
            WorkloadValue {
                identity: id,
                flags: 0,
            },
        );
        m.addresses
            .insert((w.ipv4.to_ipv6_mapped().octets(), 128), id);
        m.addresses.insert((w.ipv6.octets(), 128), id);
    }
    let pair = [
        (CLIENT, SERVER, DIR_EGRESS, CRR_PORT),
        (SERVER, CLIENT, DIR_INGRESS, CRR_PORT),
        (CLIENT, SERVER, DIR_EGRESS, BULK_PORT),
        (SERVER, CLIENT, DIR_INGRESS, BULK_PORT),
    ];
    for ((local, peer, dir, port), rule) in pair.into_iter().zip(PAIR_RULES) {
        m.policy.insert(
            policy_key(local, peer, dir, port, 16),
            decision(VERDICT_ALLOW, REASON_ALLOWED_BY_RULE, rule),
        );
    }
    for (local, dir) in [(CLIENT, DIR_EGRESS), (SERVER, DIR_INGRESS)] {
        m.defaults.insert(
            DefaultKey {
                local_identity: local,
                direction: dir,
                _pad: [0; 3],
            },
            decision(VERDICT_DENY, REASON_DEFAULT_DENY, 99),
        );
    }
    for i in 0..others {
        let (key, value, peer) = other_entry(i);
        m.policy.insert(key, value);
        m.addresses.insert((peer_address(peer), 128), peer);
    }
    Some(m)
}

/// The `i`th entry for a peer that never runs: alternately the client's egress and the
/// server's ingress, four port blocks per peer and side (a third of them 64-port blocks), one in
/// five a deny.
fn other_entry(i: usize) -> ((PolicyKey, u32), PolicyValue, u32) {
    let (local, dir) = if i.is_multiple_of(2) {
        (CLIENT, DIR_EGRESS)
    } else {
        (SERVER, DIR_INGRESS)
    };
    let j = i / 2;
    let peer = FIRST_OTHER_PEER + u32::try_from(j / 4).unwrap_or(u32::MAX);
    let port = 16_384 + u16::try_from(j % 4).unwrap_or(0) * 64;
    let port_bits = if j.is_multiple_of(3) { 10 } else { 16 };
    let rule = 1_000 + u32::try_from(i).unwrap_or(u32::MAX);
    let value = if j.is_multiple_of(5) {
        decision(VERDICT_DENY, REASON_DENIED_BY_RULE, rule)
    } else {
        decision(VERDICT_ALLOW, REASON_ALLOWED_BY_RULE, rule)
    };
    (policy_key(local, peer, dir, port, port_bits), value, peer)
}

/// A map-only address of another peer: `::ffff:10.200.x.y` with x >= 16, inside the test range
/// but assigned to no interface (no traffic is ever sent there).
fn peer_address(peer: u32) -> [u8; 16] {
    let k = peer - FIRST_OTHER_PEER;
    let [_, _, hi, lo] = k.to_be_bytes();
    Ipv4Addr::new(10, 200, 16 + hi, lo)
        .to_ipv6_mapped()
        .octets()
}

fn policy_key(local: u32, peer: u32, direction: u8, port: u16, port_bits: u32) -> (PolicyKey, u32) {
    let key = PolicyKey {
        local_identity: local,
        peer_identity: peer,
        direction,
        protocol: PROTO_TCP,
        port_be: port.to_be_bytes(),
    };
    (key, POLICY_KEY_FIXED_BITS + port_bits)
}

fn decision(verdict: u8, reason: u8, rule_id: u32) -> PolicyValue {
    PolicyValue {
        verdict,
        reason,
        _pad: [0; 2],
        rule_id,
        not_before: 0,
        expires_at: TIME_UNBOUNDED_END,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(name: &str, last: u8, cgroup_id: u64) -> Workload {
        Workload {
            name: name.to_owned(),
            cgroup_path: PathBuf::new(),
            cgroup_id,
            netns_path: PathBuf::new(),
            ipv4: Ipv4Addr::new(10, 200, 0, last),
            ipv6: format!("fd00:200::{last}").parse().expect("v6"),
            helper: PathBuf::new(),
        }
    }

    #[test]
    fn configurations_have_the_advertised_sizes_and_never_shadow_the_pair() {
        let (c, s) = (workload("c", 1, 1), workload("s", 2, 2));
        assert!(desired(Config::Baseline, &c, &s).is_none());
        let small = desired(Config::Small, &c, &s).expect("small");
        let large = desired(Config::Large, &c, &s).expect("large");
        assert_eq!(small.policy.len(), 10);
        assert_eq!(large.policy.len(), LARGE_ENTRIES);
        assert!(large.addresses.len() > 1_000);
        for (key, _) in large.policy.keys() {
            let pair = [CLIENT, SERVER].contains(&key.peer_identity);
            assert_eq!(pair, key.peer_identity < FIRST_OTHER_PEER);
        }
    }
}
