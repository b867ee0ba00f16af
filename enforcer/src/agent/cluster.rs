//! `enforcer run --controller` (cluster mode): the controller's view of this node in, kernel
//! maps and the verdict log out.
//!
//! The sync client ([`crate::cluster::run`]) applies each snapshot or delta to its held state
//! and hands it to [`NodeState::enforce`], which finds the pods' cgroups
//! ([`KubeletCgroups`]) and applies the maps by diff before the revision is acknowledged. Beside
//! it the loop waits for verdict events (to the log), a cgroup created or removed under the
//! kubelet's hierarchy (rescan the held pods at once and again shortly after: a pod's new
//! container is mapped as soon as its directory exists), a periodic rescan (a missed event, a pod
//! whose cgroup is missing), or
//! SIGTERM/SIGINT (drain the events, flush the log, leave the kernel enforcing: everything is
//! pinned). A lost controller changes nothing in the kernel; the client reconnects and resumes.
//!
//! Restart: the pinned datapath is adopted and keeps enforcing while the new process
//! connects; the controller's snapshot is then applied by diff, so unchanged entries are not
//! touched.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};
use bulkhead_policy::WorkloadRef;
use bulkhead_proto::PodRef;
use tokio::signal::unix::{SignalKind, signal};

use super::attribution::Attribution;
use super::state::StateDir;
use super::verdicts::{self, Generation, Verdicts};
use crate::cluster::pods::{Driver, KubeletCgroups};
use crate::cluster::watch::CgroupWatcher;
use crate::cluster::{self, Applied, ClientConfig, Enforce, Held};
use crate::datapath::{self, BootClock, Datapath, EventBatch};
use crate::metrics::Metrics;

/// Rescan period while every held pod's cgroup was found (events may be missed: the inotify
/// queue can overflow, a nested directory can be created before its parent is watched).
pub const RESCAN: Duration = Duration::from_secs(5);
/// Rescan period while a held pod's cgroup is missing.
pub const RESCAN_MISSING: Duration = Duration::from_secs(1);
/// A second rescan this long after a watch event: `notify` watches a new directory only after
/// reporting it, so a container directory created at once inside a new pod directory can go
/// unreported (see [`crate::cluster::watch`]).
pub const RESCAN_AGAIN: Duration = Duration::from_millis(100);

/// Configuration of the cluster agent.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub client: ClientConfig,
    pub log: PathBuf,
    pub bpffs: PathBuf,
    /// Cgroup v2 directory the programs attach to and the kubelet's hierarchy is found under
    /// (default: the root of the v2 hierarchy).
    pub cgroup: Option<PathBuf>,
    /// The kubelet's cgroup driver (`None`: the one whose layout exists).
    pub driver: Option<Driver>,
    pub state_dir: PathBuf,
    pub metrics: Option<SocketAddr>,
}

/// What the sync client and the loop share: the datapath and what it enforces.
pub struct NodeState {
    datapath: Datapath,
    pods: KubeletCgroups,
    attribution: Attribution,
    clock: BootClock,
    metrics: Arc<Metrics>,
    state_dir: StateDir,
    /// The last enforced state.
    held: Option<Held>,
    /// The pods' cgroups as last applied.
    by_cgroup: BTreeMap<u64, PodRef>,
    missing: usize,
    /// The last events of the generation an upgrade replaced, for the log.
    retired: Option<EventBatch>,
}

impl NodeState {
    /// Makes `held` the enforced state: its pods' cgroups are looked up now, the maps applied
    /// by diff with the next kernel revision (cached socket decisions are made again).
    pub fn enforce(&mut self, held: &Held) -> Result<()> {
        self.clock = datapath::boot_time_offset();
        let desired = held.desired(&self.pods, &self.clock);
        let mut maps = desired.maps;
        // The kernel revision counts applies, not sync revisions: a new controller epoch starts
        // its revisions again, and a rescan changes the maps within one sync revision.
        maps.revision = self.datapath.revision()? + 1;
        for pod in &desired.missing {
            tracing::info!(pod = %format!("{}/{}", pod.namespace, pod.name), uid = %pod.uid,
                "pod cgroup not found yet; mapped when it appears");
        }
        let stats = self.datapath.apply(&maps).inspect_err(|_| {
            self.metrics.apply_errors.inc();
        })?;
        tracing::info!(revision = held.revision, epoch = held.epoch, kernel_revision = maps.revision,
            pods = held.view.workloads.len(), cgroups = desired.by_cgroup.len(),
            missing = desired.missing.len(), ?stats.policy, ?stats.workloads, "kernel maps updated");
        let by_cgroup = desired
            .by_cgroup
            .iter()
            .map(|(id, pod)| (*id, WorkloadRef::new(&pod.namespace, &pod.name)))
            .collect();
        self.attribution.update_local(
            by_cgroup,
            held.view.rules.iter().map(|(id, r)| (*id, r.clone())),
        );
        self.metrics
            .policy_revision
            .set(i64::try_from(held.revision).unwrap_or(i64::MAX));
        verdicts::record_map_fill(&self.metrics, &self.datapath);
        if let Err(error) = self.state_dir.save_rules(self.attribution.rules()) {
            tracing::error!(%error, "could not persist the rule table");
        }
        self.missing = desired.missing.len();
        self.metrics
            .pods_missing_cgroup
            .set(i64::try_from(self.missing).unwrap_or(i64::MAX));
        self.by_cgroup = desired.by_cgroup;
        self.held = Some(held.clone());
        // An upgrade (pins of another enforcer's object) completes once the new generation's
        // maps hold the controller's state: the previous generation goes.
        if self.datapath.upgrade_pending() {
            if let Some(batch) = self.datapath.finish_upgrade()? {
                self.retired = Some(batch);
            }
            tracing::info!("datapath upgrade finished");
        }
        Ok(())
    }

    /// Looks the held pods' cgroups up again and enforces when they changed.
    pub fn rescan(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        let mut now = BTreeMap::new();
        for pod in held.view.workloads.keys() {
            for id in crate::cluster::PodCgroups::cgroup_ids(&self.pods, &pod.uid) {
                now.insert(id, pod.clone());
            }
        }
        if now != self.by_cgroup {
            tracing::info!(
                before = self.by_cgroup.len(),
                after = now.len(),
                "pod cgroups changed"
            );
            if let Err(error) = self.enforce(&held) {
                tracing::error!("{error:#}; the previous maps keep enforcing");
            }
        }
        self.held.get_or_insert(held);
    }
}

/// The sync client's view of [`NodeState`].
struct Shared(Arc<Mutex<NodeState>>);

fn lock(state: &Mutex<NodeState>) -> MutexGuard<'_, NodeState> {
    // Every mutation completes before anything can panic: a poisoned lock holds usable data.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Enforce for Shared {
    fn enforce(&mut self, held: &Held, how: Applied) -> Result<(), String> {
        tracing::debug!(?how, revision = held.revision, "enforcing a sync message");
        lock(&self.0).enforce(held).map_err(|e| format!("{e:#}"))
    }

    fn connection(&mut self, open: bool) {
        lock(&self.0).metrics.sync_connected.set(i64::from(open));
    }
}

/// Runs the cluster agent until SIGTERM or SIGINT.
pub async fn run(config: ClusterConfig) -> Result<()> {
    // Validate before touching the kernel: a bad start changes nothing.
    cluster::check(&config.client)?;
    let root = match &config.cgroup {
        Some(dir) => dir.clone(),
        None => datapath::find_cgroup2_mount().context("finding the cgroup v2 mount")?,
    };
    let level = datapath::cgroup_level(&root)
        .with_context(|| format!("the cgroup level of {}", root.display()))?;
    let pods = KubeletCgroups::new(root.clone(), config.driver).at_level(level);
    match crate::cluster::pods::detect(&root) {
        Some(driver) => tracing::info!(?driver, root = %root.display(), "kubelet cgroup hierarchy"),
        None => tracing::warn!(root = %root.display(),
            "no kubelet cgroup hierarchy (kubepods.slice or kubepods) yet; watching for it"),
    }
    let (datapath, state_dir, attribution) =
        super::open_node(&config.bpffs, &root, &config.state_dir)?;
    let metrics = Arc::new(Metrics::default());
    let mut verdicts = Verdicts::open(&config.log, Arc::clone(&metrics), &datapath, &state_dir)?;
    verdicts::spawn_metrics(config.metrics, &metrics);
    let mut events = datapath.event_reader()?;
    let mut watcher = CgroupWatcher::new(&root, pods.drivers())
        .with_context(|| format!("watching pod cgroups under {}", root.display()))?;
    let node = Arc::new(Mutex::new(NodeState {
        datapath,
        pods,
        attribution,
        clock: datapath::boot_time_offset(),
        metrics,
        state_dir,
        held: None,
        by_cgroup: BTreeMap::new(),
        missing: 0,
        retired: None,
    }));
    tracing::info!(controller = %config.client.url, node = %config.client.node_name,
        "connecting to the controller; the pinned maps keep enforcing meanwhile");
    let mut shared = Shared(Arc::clone(&node));
    let client = cluster::run(&config.client, Held::default(), &mut shared);
    tokio::pin!(client);
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut rescan = tokio::time::interval(RESCAN);
    let mut rescan_missing = tokio::time::interval(RESCAN_MISSING);
    let mut again: Option<tokio::time::Instant> = None;
    loop {
        let missing = lock(&node).missing > 0;
        tokio::select! {
            batch = events.next_batch() => {
                let node = lock(&node);
                verdicts.write(
                    Generation::Live,
                    batch?,
                    &node.attribution,
                    &node.clock,
                    &node.state_dir,
                )?;
            }
            result = &mut client => {
                let error = match result {
                    Ok(never) => match never {},
                    Err(error) => error,
                };
                return Err(error).context("policy sync");
            }
            () = watcher.notified() => {
                lock(&node).rescan();
                again = Some(tokio::time::Instant::now() + RESCAN_AGAIN);
            }
            () = tokio::time::sleep_until(again.unwrap_or_else(tokio::time::Instant::now)),
                if again.is_some() =>
            {
                again = None;
                lock(&node).rescan();
            }
            _ = rescan.tick() => lock(&node).rescan(),
            _ = rescan_missing.tick(), if missing => lock(&node).rescan(),
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        let mut node = lock(&node);
        if let Some(batch) = node.retired.take() {
            verdicts.write(
                Generation::Retired,
                batch,
                &node.attribution,
                &node.clock,
                &node.state_dir,
            )?;
        }
    }
    let node = lock(&node);
    verdicts.drain(&mut events, &node.attribution, &node.clock, &node.state_dir)?;
    tracing::info!("stopping; the kernel keeps enforcing the last policy (pinned)");
    Ok(())
}
