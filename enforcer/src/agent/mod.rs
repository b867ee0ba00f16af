//! `enforcer run` in standalone mode: policy files and a workload inventory in, kernel maps and
//! the verdict log out.
//!
//! The loop: load and validate the inputs (all or nothing), compile, translate, apply to the
//! kernel maps by diff, then wait for whichever comes first: verdict events (to the log), a
//! change of the inputs (reload within a second), the next validity-window boundary (recompile),
//! a workload cgroup that appeared, or SIGTERM/SIGINT (flush the log and leave the kernel
//! enforcing the last state: the programs, links and maps are pinned).

pub mod attribution;
pub mod cluster;
pub mod desired;
pub mod state;
pub mod verdicts;
pub mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bulkhead_policy::{CompiledState, Compiler, Inventory, PolicySet};
use tokio::signal::unix::{SignalKind, signal};

use crate::datapath::{self, BootClock, Datapath, EventBatch};
use crate::metrics::Metrics;
use attribution::Attribution;
use state::StateDir;
use verdicts::{Generation, Verdicts};

/// Configuration of the standalone agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub policies: PathBuf,
    pub inventory: PathBuf,
    pub log: PathBuf,
    pub bpffs: PathBuf,
    /// Cgroup v2 directory the programs attach to (default: the root of the v2 hierarchy).
    pub cgroup: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub metrics: Option<SocketAddr>,
}

/// Loads and validates both inputs; any invalid object refuses the whole set.
pub fn load_inputs(policies: &Path, inventory: &Path) -> Result<(PolicySet, Inventory)> {
    let policy_set = PolicySet::load(policies)?;
    let inventory = Inventory::load(inventory)?;
    Ok((policy_set, inventory))
}

struct Agent {
    config: AgentConfig,
    cgroup_root: PathBuf,
    datapath: Datapath,
    compiler: Compiler,
    state_dir: StateDir,
    attribution: Attribution,
    clock: BootClock,
    verdicts: Verdicts,
    metrics: Arc<Metrics>,
    /// The last inputs that compiled (what the kernel enforces).
    good: Option<(PolicySet, Inventory)>,
    next_change: Option<jiff::Timestamp>,
    /// The workload cgroups of the last apply, checked every second.
    cgroups: desired::CgroupIds,
}

/// Installs or adopts the datapath pinned under `bpffs` (attached to `attach_to`), opens the
/// state directory, and loads the rules known to predecessors (for attributing their events).
pub fn open_node(
    bpffs: &Path,
    attach_to: &Path,
    state_dir: &Path,
) -> Result<(Datapath, StateDir, Attribution)> {
    let datapath = Datapath::install_or_adopt(bpffs, attach_to)
        .with_context(|| format!("installing the datapath under {}", bpffs.display()))?;
    tracing::info!(origin = ?datapath.origin(), bpffs = %bpffs.display(),
        cgroup = %attach_to.display(), "datapath ready");
    let state_dir = StateDir::open(state_dir)
        .with_context(|| format!("opening state directory {}", state_dir.display()))?;
    let mut attribution = Attribution::default();
    attribution.add_rules(state_dir.load_rules().unwrap_or_else(|error| {
        tracing::warn!(%error, "rule table unreadable; starting a new one");
        Default::default()
    }));
    Ok((datapath, state_dir, attribution))
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(config: AgentConfig) -> Result<()> {
    // Watch before reading: a change made while the agent starts (install, compile, apply) is
    // queued and reloaded once it serves, never lost.
    let watcher = watch::InputWatcher::new(&[&config.policies, &config.inventory])
        .context("watching the policy and inventory files")?;
    // Validate before touching the kernel: a bad start changes nothing.
    let (policies, inventory) = load_inputs(&config.policies, &config.inventory)?;
    let cgroup_root = datapath::find_cgroup2_mount().context("finding the cgroup v2 mount")?;
    desired::check_cgroups(&inventory, &config.inventory, &cgroup_root)?;
    let attach_to = config.cgroup.clone().unwrap_or_else(|| cgroup_root.clone());
    let (datapath, state_dir, attribution) =
        open_node(&config.bpffs, &attach_to, &config.state_dir)?;
    let table = state_dir
        .load_table()
        .context("reading the identity allocation table")?;
    let metrics = Arc::new(Metrics::default());
    let verdicts = Verdicts::open(&config.log, Arc::clone(&metrics), &datapath, &state_dir)?;
    verdicts::spawn_metrics(config.metrics, &metrics);
    let mut agent = Agent {
        config,
        cgroup_root,
        datapath,
        compiler: Compiler::new(table),
        state_dir,
        attribution,
        clock: datapath::boot_time_offset(),
        verdicts,
        metrics,
        good: None,
        next_change: None,
        cgroups: desired::CgroupIds::default(),
    };
    agent.enforce(policies, inventory)?;
    // An upgrade swaps the new, now filled, generation in; the previous one's last events go to
    // the log, and the loss count restarts with the new generation's counter.
    if let Some(batch) = agent.datapath.finish_upgrade()? {
        agent.verdicts.write(
            Generation::Retired,
            batch,
            &agent.attribution,
            &agent.clock,
            &agent.state_dir,
        )?;
    }
    agent.serve(watcher).await
}

impl Agent {
    /// Compiles and applies `policies` over `inventory`; on success they become the last good
    /// state. On failure nothing in the kernel changed.
    fn enforce(&mut self, policies: PolicySet, inventory: Inventory) -> Result<()> {
        desired::check_cgroups(&inventory, &self.config.inventory, &self.cgroup_root)?;
        let started = Instant::now();
        let now = jiff::Timestamp::now();
        let compiled = self.compiler.compile(&policies, &inventory, now)?;
        let compile_time = started.elapsed();
        self.apply(&compiled)?;
        tracing::info!(
            policies = policies.len(),
            workloads = compiled.workloads.len(),
            identities = compiled.identities.len(),
            policy_entries = compiled.policy.len(),
            compile_ms = compile_time.as_secs_f64() * 1e3,
            next_change = compiled.next_change.map(|t| t.to_string()),
            "policy enforced"
        );
        self.next_change = compiled.next_change;
        self.good = Some((policies, inventory));
        Ok(())
    }

    fn apply(&mut self, compiled: &CompiledState) -> Result<()> {
        // Re-sample the clock offset: wall-clock steps (NTP) move the mapping.
        self.clock = datapath::boot_time_offset();
        // Only CONFIG is read here (`apply` reads the maps themselves for its diff); a transient
        // revision left by a crash mid-apply reads as its final one.
        let revision = self.datapath.revision()? + 1;
        let translation = desired::translate(compiled, revision, &self.cgroup_root, &self.clock);

        for (workload, dir) in &translation.missing {
            tracing::warn!(workload = %format!("{}/{}", workload.namespace, workload.name),
                cgroup = %dir.display(), "workload cgroup not found; enforced once it appears");
        }
        let stats = self.datapath.apply(&translation.maps).inspect_err(|_| {
            self.metrics.apply_errors.inc();
        })?;
        tracing::info!(revision, ?stats.policy, ?stats.workloads, "kernel maps updated");
        self.attribution.update(compiled, translation.by_cgroup);
        self.cgroups = translation.cgroups;
        self.metrics.policy_revision.set(revision as i64);
        verdicts::record_map_fill(&self.metrics, &self.datapath);
        if let Err(error) = self.state_dir.save_table(self.compiler.table()) {
            tracing::error!(%error, "could not persist the identity table");
        }
        if let Err(error) = self.state_dir.save_rules(self.attribution.rules()) {
            tracing::error!(%error, "could not persist the rule table");
        }
        Ok(())
    }

    /// Reloads the inputs after a change; a bad input is reported and the last good state keeps
    /// enforcing.
    fn reload(&mut self) {
        tracing::info!("policy or inventory changed; reloading");
        match load_inputs(&self.config.policies, &self.config.inventory)
            .and_then(|(p, i)| self.enforce(p, i))
        {
            Ok(()) => {}
            Err(error) => {
                self.metrics.invalid_inputs.inc();
                tracing::error!("{error:#}; the last good policy keeps enforcing");
            }
        }
    }

    /// Recompiles the last good inputs (a window boundary passed, or a cgroup appeared).
    fn recompile(&mut self) {
        if let Some((policies, inventory)) = self.good.take()
            && let Err(error) = self.enforce(policies.clone(), inventory.clone())
        {
            tracing::error!("{error:#}; the previous state keeps enforcing");
            self.good = Some((policies, inventory));
        }
    }

    /// Applies again when a workload cgroup appeared, disappeared or was made anew since the
    /// last apply (a restarted service's new cgroup has a new id: until it is in `WORKLOADS`,
    /// its processes are unmanaged). Nothing is written while nothing changed.
    fn check_cgroups(&mut self) {
        let changed = self.cgroups.take_changes();
        if changed.is_empty() {
            return;
        }
        for (dir, was, now) in changed {
            tracing::info!(cgroup = %dir.display(), ?was, ?now, "workload cgroup changed");
        }
        self.recompile();
    }

    async fn serve(mut self, mut watcher: watch::InputWatcher) -> Result<()> {
        let mut events = self.datapath.event_reader()?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut cgroup_tick = tokio::time::interval(Duration::from_secs(1));
        // A reload waits for the inputs to be quiet for `DEBOUNCE` (an editor's burst of writes
        // becomes one reload); the deadline lives here so that no branch can lose a change.
        let mut reload_at: Option<tokio::time::Instant> = None;
        loop {
            let until_change = self
                .next_change
                .map(|t| {
                    let left = t.duration_since(jiff::Timestamp::now());
                    Duration::try_from(left).unwrap_or(Duration::ZERO)
                })
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                batch = events.next_batch() => self.log_batch(batch?)?,
                () = watcher.notified() => {
                    reload_at = Some(tokio::time::Instant::now() + watch::DEBOUNCE);
                }
                () = tokio::time::sleep_until(reload_at.unwrap_or_else(tokio::time::Instant::now)),
                    if reload_at.is_some() =>
                {
                    reload_at = None;
                    self.reload();
                }
                () = tokio::time::sleep(until_change), if self.next_change.is_some() => {
                    tracing::info!("a rule's validity window opened or closed; recompiling");
                    self.recompile();
                }
                _ = cgroup_tick.tick() => self.check_cgroups(),
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
            }
        }
        // Drain what the kernel has already decided, then leave it enforcing.
        self.verdicts
            .drain(&mut events, &self.attribution, &self.clock, &self.state_dir)?;
        tracing::info!("stopping; the kernel keeps enforcing the last policy (pinned)");
        Ok(())
    }

    fn log_batch(&mut self, batch: EventBatch) -> Result<()> {
        self.verdicts.write(
            Generation::Live,
            batch,
            &self.attribution,
            &self.clock,
            &self.state_dir,
        )
    }
}
