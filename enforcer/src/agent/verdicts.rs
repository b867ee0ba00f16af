//! Verdict events -> the verdict log and the verdict metrics, with the lost-event accounting
//! that survives restarts; shared by the standalone and the cluster agent.

use std::sync::Arc;

use anyhow::{Context, Result};

use super::attribution::Attribution;
use super::state::StateDir;
use crate::datapath::{self, BootClock, Datapath, EventBatch, EventReader};
use crate::metrics::{MapLabels, Metrics, VerdictLabels};
use crate::verdict_log::{LossRecord, VerdictLog};

/// Which datapath generation a batch of events comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// The generation attached now.
    Live,
    /// The one an upgrade has just replaced: its last events.
    Retired,
}

/// The verdict log, the metrics, and how many lost events were already reported.
pub struct Verdicts {
    pub log: VerdictLog,
    pub metrics: Arc<Metrics>,
    /// Lost events already in the log, by this process or its predecessors (the kernel's
    /// counter runs since install, and a new reader's first batch reports all of it).
    losses_logged: u64,
    /// Subtracted from the first loss report of this process.
    loss_baseline: u64,
    /// During an upgrade: the losses already logged for the generation being replaced,
    /// subtracted from its last report ([`Self::write_retired`]).
    retired_baseline: u64,
    /// Kernel losses of batches the file system refused, reported with the next batch: the live
    /// generation's (counted in `losses_logged` once written) and a retired one's (not).
    lost_carried: u64,
    retired_lost_carried: u64,
    /// Verdict records the file system refused since the last `unwritten` record.
    unwritten: u64,
}

impl Verdicts {
    /// Opens the log at `log`; an adopted datapath continues its predecessor's loss count, an
    /// upgrading one starts a new count (its maps are new) and keeps the old one for the
    /// generation it replaces.
    pub fn open(
        log: &std::path::Path,
        metrics: Arc<Metrics>,
        datapath: &Datapath,
        state_dir: &StateDir,
    ) -> Result<Self> {
        let saved = || state_dir.load_losses_logged().unwrap_or(0);
        let (losses_logged, retired_baseline) = match datapath.origin() {
            datapath::Origin::Adopted => (saved(), 0),
            datapath::Origin::Upgrading => (0, saved()),
            datapath::Origin::Installed => (0, 0),
        };
        let log = VerdictLog::open(log)
            .with_context(|| format!("opening the verdict log {}", log.display()))?;
        Ok(Self {
            log,
            metrics,
            losses_logged,
            loss_baseline: losses_logged,
            retired_baseline,
            lost_carried: 0,
            retired_lost_carried: 0,
            unwritten: 0,
        })
    }

    /// Logs and counts one batch of `generation`. A retired generation's batch
    /// ([`Datapath::finish_upgrade`]) also logs its losses not logged yet; after it, the count
    /// persisted for restarts is the live generation's, now the only one.
    ///
    /// A batch the file system refuses (a full disk) is not in the file at all: its records are
    /// counted (metric `events_lost`, and an `unwritten` record once the log takes records
    /// again), its kernel losses carried to the next batch, and the agent goes on.
    pub fn write(
        &mut self,
        generation: Generation,
        batch: EventBatch,
        attribution: &Attribution,
        clock: &BootClock,
        state_dir: &StateDir,
    ) -> Result<()> {
        let live = generation == Generation::Live;
        if self.unwritten > 0 {
            self.log.write_loss(&LossRecord {
                time: jiff::Timestamp::now().to_string(),
                event: "unwritten",
                count: self.unwritten,
            });
        }
        self.write_events(&batch, attribution, clock);
        let baseline = if live {
            &mut self.loss_baseline
        } else {
            &mut self.retired_baseline
        };
        let new_lost = batch.lost.saturating_sub(std::mem::take(baseline));
        let (live_lost, retired_lost) = if live {
            (new_lost + self.lost_carried, self.retired_lost_carried)
        } else {
            (self.lost_carried, new_lost + self.retired_lost_carried)
        };
        let lost = live_lost + retired_lost;
        if lost > 0 {
            self.write_loss(lost);
        }
        if let Err(refused) = self.log.flush() {
            self.metrics.events_lost.inc_by(refused.records);
            self.unwritten += refused.records;
            self.lost_carried = live_lost;
            self.retired_lost_carried = retired_lost;
            tracing::error!(error = %anyhow::Error::from(refused), path = %self.log.path().display(),
                unwritten = self.unwritten, "the verdict log refused a batch; its records are counted");
            return Ok(());
        }
        self.unwritten = 0;
        self.lost_carried = 0;
        self.retired_lost_carried = 0;
        if lost > 0 {
            self.metrics.events_lost.inc_by(lost);
            tracing::warn!(lost, "verdict events lost (ring buffer full)");
            self.losses_logged += live_lost;
        }
        if (lost > 0 || !live)
            && let Err(error) = state_dir.save_losses_logged(self.losses_logged)
        {
            tracing::error!(%error, "could not persist the lost-event count");
        }
        Ok(())
    }

    fn write_events(&mut self, batch: &EventBatch, attribution: &Attribution, clock: &BootClock) {
        for event in &batch.events {
            let record = attribution.record(event, clock);
            let policy = record.policy.as_ref().map_or_else(
                || "default".to_owned(),
                |p| match &p.namespace {
                    Some(ns) => format!("{}/{ns}/{}", p.kind, p.name),
                    None => format!("{}/{}", p.kind, p.name),
                },
            );
            self.metrics
                .verdicts
                .get_or_create(&VerdictLabels {
                    direction: record.direction.to_owned(),
                    verdict: record.verdict.to_owned(),
                    policy,
                })
                .inc();
            self.log.write_verdict(&record);
        }
    }

    fn write_loss(&mut self, lost: u64) {
        self.log.write_loss(&LossRecord {
            time: jiff::Timestamp::now().to_string(),
            event: "lost",
            count: lost,
        });
    }

    /// At shutdown: logs what the kernel has already decided, and syncs the log.
    pub fn drain(
        &mut self,
        events: &mut EventReader,
        attribution: &Attribution,
        clock: &BootClock,
        state_dir: &StateDir,
    ) -> Result<()> {
        let batch = events.try_next_batch()?;
        self.write(Generation::Live, batch, attribution, clock, state_dir)?;
        self.log.sync()?;
        // The log takes no later batch that could carry the count: say it on the way out.
        if self.unwritten > 0 {
            anyhow::bail!(
                "{} verdict records could not be written to {} (counted in events_lost)",
                self.unwritten,
                self.log.path().display()
            );
        }
        Ok(())
    }
}

/// Sets the map fill gauges from the kernel (best effort).
pub fn record_map_fill(metrics: &Metrics, datapath: &Datapath) {
    if let Ok(fill) = datapath.map_fill() {
        for map in fill {
            let labels = MapLabels {
                map: map.name.to_owned(),
            };
            metrics
                .map_entries
                .get_or_create(&labels)
                .set(i64::from(map.entries));
            metrics
                .map_capacity
                .get_or_create(&labels)
                .set(i64::from(map.max_entries));
        }
    }
}

/// Serves `/metrics` and `/healthz` on `addr` in the background, when given.
pub fn spawn_metrics(addr: Option<std::net::SocketAddr>, metrics: &Arc<Metrics>) {
    if let Some(addr) = addr {
        let metrics = Arc::clone(metrics);
        tokio::spawn(async move {
            if let Err(error) = crate::metrics::serve(addr, metrics).await {
                tracing::error!(%error, %addr, "metrics endpoint failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_batch_is_reported_as_unwritten_with_the_next_one() {
        let dir = std::env::temp_dir().join(format!("bulkhead-verdicts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("v.jsonl");
        let state_dir = StateDir::open(&dir.join("state")).unwrap();
        let metrics = Arc::new(Metrics::default());
        let mut verdicts = Verdicts {
            log: VerdictLog::open(&path).unwrap(),
            metrics: Arc::clone(&metrics),
            losses_logged: 0,
            loss_baseline: 0,
            retired_baseline: 0,
            lost_carried: 0,
            retired_lost_carried: 0,
            unwritten: 0,
        };
        let attribution = Attribution::default();
        let clock = BootClock { offset_ns: 0 };
        let event = enforcer_common::VerdictEvent {
            timestamp_ns: 1,
            cgroup_id: 1,
            socket_cookie: 1,
            revision: 1,
            src_addr: [0; 16],
            dst_addr: [0; 16],
            src_port: 1,
            dst_port: 2,
            local_identity: 256,
            remote_identity: 2,
            rule_id: 0,
            direction: enforcer_common::DIR_EGRESS,
            hook: enforcer_common::HOOK_CONNECT,
            protocol: enforcer_common::PROTO_TCP,
            verdict: enforcer_common::VERDICT_ALLOW,
            reason: enforcer_common::REASON_NOT_ISOLATED,
            family: enforcer_common::FAMILY_INET,
            _pad: [0; 10],
        };
        let batch = |n: usize, lost: u64| EventBatch {
            events: vec![event; n],
            lost,
        };
        let write = |v: &mut Verdicts, b: EventBatch| {
            v.write(Generation::Live, b, &attribution, &clock, &state_dir)
                .unwrap();
        };
        write(&mut verdicts, batch(1, 0));
        // The file system refuses the next batch (3 verdicts, 2 kernel losses).
        let writable = verdicts
            .log
            .swap_file_for_tests(std::fs::File::open(&path).unwrap());
        write(&mut verdicts, batch(3, 2));
        assert_eq!(metrics.events_lost.get(), 3);
        verdicts.log.swap_file_for_tests(writable);
        write(&mut verdicts, batch(1, 0));

        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let events: Vec<&str> = lines
            .iter()
            .map(|l| l["event"].as_str().unwrap_or("verdict"))
            .collect();
        assert_eq!(events, ["verdict", "unwritten", "verdict", "lost"]);
        assert_eq!(lines[1]["count"], 3);
        assert_eq!(lines[3]["count"], 2);
        assert_eq!(metrics.events_lost.get(), 5);
        assert_eq!(verdicts.losses_logged, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
