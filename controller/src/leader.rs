//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several controller replicas
//! exactly one writes statuses and serves as the source of truth. This module owns the Lease
//! object named in [`LeaseConfig`] (creating, renewing, taking over and releasing it) and the
//! "am I the leader" signal, a [`watch::Receiver<bool>`] from [`LeaderElector::subscribe`].
//!
//! The protocol is client-go's (`tools/leaderelection`), with `Lease` as the lock:
//!
//! - A candidate reads the Lease every `retry_period`. Absent: it creates it, holding it. Without
//!   a holder (released), or held by itself: it writes itself as holder. Held by another
//!   replica: it waits until the Lease has gone unchanged for the holder's
//!   `leaseDurationSeconds`, measured on this process's monotonic clock from when it first saw
//!   that version (so clock skew between nodes does not matter), then takes it over. Every
//!   write is an update carrying the `resourceVersion` read, so of two candidates only one
//!   wins; the other gets 409 Conflict and stays a follower. A change of holder increments
//!   `leaseTransitions`; `acquireTime` is when the current holder got it.
//! - The leader renews every `retry_period`. When it sees another holder it steps down at once;
//!   when renewals fail (errors, conflicts, requests that hang) it steps down once
//!   `renew_deadline` has passed since the last successful renewal. `renew_deadline` is shorter
//!   than `lease_duration`, so it stops acting before anyone else may take over. After stepping
//!   down it goes on as a candidate.
//! - On shutdown it stops leading, then releases the Lease if it still names this replica
//!   (clears the holder, `leaseDurationSeconds: 1`), so a successor takes over without waiting
//!   for the lease to expire. That covers a leader, one that stepped down after failed
//!   renewals, and one stopped while its write was in flight; a replica that never wrote the
//!   lease, or saw another holder since, makes no request.
//!
//! Timing uses tokio's clock (`tokio::time`), so tests run it with paused time.

#[cfg(test)]
mod tests;

use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// Where and as whom to hold the lease, and its timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace (the controller's own).
    pub namespace: String,
    /// This replica's identity, written as `holderIdentity` (the pod name).
    pub identity: String,
    /// How long a lease stays held without renewal (`leaseDurationSeconds`); whole seconds.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long steps down; shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// Time between attempts to acquire or renew; shorter than `renew_deadline`.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// A configuration with client-go's default timing: lease 15 s, renew deadline 10 s,
    /// retry every 2 s.
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    fn check(&self) -> Result<i32, LeaderError> {
        let problem = if self.identity.is_empty() {
            Some("the holder identity is empty")
        } else if self.lease_duration.subsec_nanos() != 0 || self.lease_duration.is_zero() {
            Some("the lease duration must be a whole number of seconds, at least 1")
        } else if self.renew_deadline >= self.lease_duration {
            Some("the renew deadline must be shorter than the lease duration")
        } else if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            Some("the retry period must be positive and shorter than the renew deadline")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(LeaderError::Config {
                lease: self.lease_name(),
                problem,
            });
        }
        i32::try_from(self.lease_duration.as_secs()).map_err(|_| LeaderError::Config {
            lease: self.lease_name(),
            problem: "the lease duration does not fit leaseDurationSeconds",
        })
    }

    fn lease_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The configuration cannot work.
    #[error("lease {lease}: {problem}")]
    Config {
        /// `namespace/name` of the lease.
        lease: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// A request about the lease failed.
    #[error("lease {lease}: {operation} failed")]
    Api {
        /// `namespace/name` of the lease.
        lease: String,
        /// `get`, `create` or `update`.
        operation: &'static str,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// A request about the lease got no answer in time.
    #[error("lease {lease}: no answer within {timeout:?}")]
    Timeout {
        /// `namespace/name` of the lease.
        lease: String,
        /// How long it waited.
        timeout: Duration,
    },
}

/// What one attempt to acquire or renew found.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// This replica holds the lease now, written by a request that started `at`.
    Held {
        /// When the request started: the renew deadline counts from here, not from the
        /// (later) answer.
        at: Instant,
    },
    /// Another replica holds it and it has not expired.
    HeldBy(String),
    /// Someone else wrote the lease between our read and our write.
    Conflict,
}

/// A version of the lease as seen by this process, and when it was first seen.
struct Observed {
    spec: LeaseSpec,
    at: Instant,
}

/// Runs leader election for one replica; see the module docs.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    duration_seconds: i32,
    state: watch::Sender<bool>,
    observed: Option<Observed>,
    /// When the lease was last acquired or renewed by this replica.
    renewed: Option<Instant>,
    /// The lease may name this replica: it wrote the lease (or sent a write whose answer it
    /// did not see) and has not seen another holder since. Shutdown then releases it.
    may_hold: bool,
}

impl LeaderElector {
    /// An elector for `config`, not yet running (see [`LeaderElector::run`]). Fails when the
    /// configuration cannot work (empty identity, deadlines out of order).
    pub fn new(client: Client, config: LeaseConfig) -> Result<Self, LeaderError> {
        let duration_seconds = config.check()?;
        Ok(Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            duration_seconds,
            state: watch::Sender::new(false),
            observed: None,
            renewed: None,
            may_hold: false,
        })
    }

    /// Whether this replica is the leader: `true` from acquiring the lease until stepping down
    /// or releasing it. Every receiver sees each change.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.state.subscribe()
    }

    /// Campaigns for and holds the lease until `shutdown` completes, then stops leading and
    /// releases the lease if it may name this replica. Request failures are logged and
    /// retried; the error returned is the release's.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), LeaderError> {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            // An attempt that has its answer settles before shutdown is looked at.
            let attempt = tokio::select! {
                biased;
                attempt = self.attempt() => attempt,
                () = &mut shutdown => break,
            };
            self.settle(attempt);
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(self.config.retry_period) => {}
            }
        }
        self.set_leader(false);
        if self.may_hold {
            self.release().await
        } else {
            Ok(())
        }
    }

    fn is_leader(&self) -> bool {
        *self.state.borrow()
    }

    /// One acquire-or-renew, bounded in time: a leader's by what is left of its renew
    /// deadline, a candidate's by the renew deadline.
    async fn attempt(&mut self) -> Result<Attempt, LeaderError> {
        let budget = match self.renewed {
            Some(renewed) if self.is_leader() => {
                (renewed + self.config.renew_deadline).saturating_duration_since(Instant::now())
            }
            _ => self.config.renew_deadline,
        };
        tokio::time::timeout(budget, self.try_acquire_or_renew())
            .await
            .unwrap_or_else(|_| {
                Err(LeaderError::Timeout {
                    lease: self.config.lease_name(),
                    timeout: budget,
                })
            })
    }

    /// Applies the outcome of an attempt to the leader state.
    fn settle(&mut self, attempt: Result<Attempt, LeaderError>) {
        let lease = self.config.lease_name();
        match attempt {
            Ok(Attempt::Held { at }) => {
                self.renewed = Some(at);
                if !self.is_leader() {
                    let transitions = self
                        .observed
                        .as_ref()
                        .and_then(|o| o.spec.lease_transitions);
                    tracing::info!(%lease, identity = %self.config.identity, transitions, "became the leader");
                }
                self.set_leader(true);
            }
            Ok(Attempt::HeldBy(holder)) => {
                self.may_hold = false;
                if self.is_leader() {
                    tracing::warn!(%lease, %holder, "another replica took the lease: stepping down");
                } else {
                    tracing::debug!(%lease, %holder, "lease held by another replica");
                }
                self.set_leader(false);
            }
            Ok(Attempt::Conflict) => {
                tracing::debug!(%lease, "lease changed while writing it");
                self.step_down_if_overdue();
            }
            Err(error) => {
                tracing::warn!(error = %error, source = ?std::error::Error::source(&error), "leader election attempt failed");
                self.step_down_if_overdue();
            }
        }
    }

    fn step_down_if_overdue(&mut self) {
        let overdue = self
            .renewed
            .is_none_or(|renewed| renewed + self.config.renew_deadline <= Instant::now());
        if self.is_leader() && overdue {
            tracing::warn!(lease = %self.config.lease_name(), deadline = ?self.config.renew_deadline, "could not renew the lease in time: stepping down");
            self.set_leader(false);
        }
    }

    fn set_leader(&self, leader: bool) {
        self.state.send_if_modified(|current| {
            let changed = *current != leader;
            *current = leader;
            changed
        });
    }

    fn api_error(&self, operation: &'static str) -> impl FnOnce(kube::Error) -> LeaderError {
        let lease = self.config.lease_name();
        move |source| LeaderError::Api {
            lease,
            operation,
            source,
        }
    }

    /// The lease, `None` when absent.
    async fn read(&self) -> Result<Option<Lease>, LeaderError> {
        self.api
            .get_opt(&self.config.name)
            .await
            .map_err(self.api_error("get"))
    }

    /// Updates the lease (optimistic concurrency on its `resourceVersion`); `None` on 409
    /// Conflict: someone else wrote it since it was read.
    async fn write(&self, lease: &Lease) -> Result<Option<Lease>, LeaderError> {
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), lease)
            .await
        {
            Ok(written) => Ok(Some(written)),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
            Err(source) => Err(self.api_error("update")(source)),
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, LeaderError> {
        let now = Instant::now();
        let wall = MicroTime(Timestamp::now());
        let Some(current) = self.read().await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(self.duration_seconds),
                    acquire_time: Some(wall.clone()),
                    renew_time: Some(wall),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            self.may_hold = true;
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => Ok(self.record(created, now)),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Conflict),
                Err(source) => Err(self.api_error("create")(source)),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        if self.observed.as_ref().is_none_or(|o| o.spec != spec) {
            self.observed = Some(Observed {
                spec: spec.clone(),
                at: now,
            });
        }
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.config.identity.as_str());
        if let Some(holder) = holder.as_ref().filter(|_| !ours) {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.config.lease_duration, Duration::from_secs);
            let first_seen = self.observed.as_ref().map_or(now, |o| o.at);
            if first_seen + duration > now {
                return Ok(Attempt::HeldBy(holder.clone()));
            }
            tracing::info!(lease = %self.config.lease_name(), %holder, "lease expired: taking it over");
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        let spec = LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.duration_seconds),
            acquire_time: if ours {
                spec.acquire_time.clone()
            } else {
                Some(wall.clone())
            },
            renew_time: Some(wall),
            lease_transitions: Some(if ours {
                transitions
            } else {
                transitions.saturating_add(1)
            }),
            ..spec
        };
        let update = Lease {
            metadata: current.metadata,
            spec: Some(spec),
        };
        self.may_hold = true;
        Ok(match self.write(&update).await? {
            Some(updated) => self.record(updated, now),
            None => Attempt::Conflict,
        })
    }

    /// Remembers the lease this replica just wrote.
    fn record(&mut self, lease: Lease, now: Instant) -> Attempt {
        self.observed = Some(Observed {
            spec: lease.spec.unwrap_or_default(),
            at: now,
        });
        Attempt::Held { at: now }
    }

    /// Clears the holder if it is still this replica, bounded by the renew deadline.
    async fn release(&self) -> Result<(), LeaderError> {
        let timeout = self.config.renew_deadline;
        tokio::time::timeout(timeout, self.try_release())
            .await
            .unwrap_or_else(|_| {
                Err(LeaderError::Timeout {
                    lease: self.config.lease_name(),
                    timeout,
                })
            })
    }

    async fn try_release(&self) -> Result<(), LeaderError> {
        let lease = self.config.lease_name();
        let Some(current) = self.read().await? else {
            return Ok(());
        };
        let spec = current.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            tracing::info!(%lease, "lease already held by someone else: nothing to release");
            return Ok(());
        }
        let released = Lease {
            metadata: current.metadata,
            spec: Some(LeaseSpec {
                holder_identity: None,
                acquire_time: None,
                lease_duration_seconds: Some(1),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..spec
            }),
        };
        if self.write(&released).await?.is_some() {
            tracing::info!(%lease, "released the lease");
        } else {
            tracing::info!(%lease, "lease changed while releasing it: left to its new writer");
        }
        Ok(())
    }
}
