//! The run loop: watchers -> [`Pipeline`] -> identity table -> [`SyncHub`].
//!
//! Events are recorded into the pipeline as they arrive; a batch is compiled once no event came
//! for the coalescing window after the batch's first event (or the window elapsed), so a burst
//! is one compile and one publication. Nothing is compiled until every kind listed completely
//! once: the initial lists are one full compile and one publication. Before a publication, a
//! grown identity table is written to its ConfigMap (retried with backoff; nothing is published
//! until it is stored).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bulkhead_policy::model::{ClusterSegmentationPolicy, SegmentationPolicy};
use futures::stream::{BoxStream, SelectAll};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use super::identities::{IdentityStore, StoreError};
use super::pipeline::{Flushed, Pipeline, PipelineError};
use super::progress::{PolicyProgress, Tracker};
use super::watch::{Lists, Object, Watched};
use crate::metrics::{KindLabels, Metrics};
use crate::sync::SyncHub;

/// Pause after a failed compile.
const COMPILE_RETRY: Duration = Duration::from_secs(1);

/// Settings of [`Controller::run`].
#[derive(Clone, Debug)]
pub struct Config {
    /// Namespace of the identity ConfigMap.
    pub identity_namespace: String,
    /// Name of the identity ConfigMap.
    pub identity_configmap: String,
    /// How long a batch waits for more events after its first one.
    pub coalesce: Duration,
}

impl Config {
    /// The identity ConfigMap `namespace/name`, a 5 ms coalescing window.
    pub fn new(
        identity_namespace: impl Into<String>,
        identity_configmap: impl Into<String>,
    ) -> Self {
        Config {
            identity_namespace: identity_namespace.into(),
            identity_configmap: identity_configmap.into(),
            coalesce: Duration::from_millis(5),
        }
    }
}

/// Why [`Controller::run`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The identity table could not be loaded, or another controller allocated numbers.
    #[error("identity table: {0}")]
    Identities(#[from] StoreError),
    /// A watch stream ended (the watchers retry errors forever; this means the client is gone).
    #[error("the {0} watch ended")]
    WatchEnded(&'static str),
    /// A compile or publication task panicked.
    #[error("compile task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What the run loop and the status side share.
struct Core {
    pipeline: Pipeline,
    tracker: Tracker,
}

struct Inner {
    hub: SyncHub,
    config: Config,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    core: Mutex<Option<Core>>,
}

/// The controller's pipeline: a cheap handle shared by the run loop, the status writer and the
/// metrics endpoint.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

enum Ev {
    Pod(Box<Event<Pod>>),
    Namespace(Box<Event<Namespace>>),
    Node(Box<Event<Node>>),
    NetworkPolicy(Box<Event<NetworkPolicy>>),
    SegmentationPolicy(Box<Event<SegmentationPolicy>>),
    ClusterSegmentationPolicy(Box<Event<ClusterSegmentationPolicy>>),
}

type Watch = BoxStream<'static, (Watched, Result<Ev, watcher::Error>)>;

fn watch<K>(api: Api<K>, wrap: fn(Box<Event<K>>) -> Ev) -> Watch
where
    K: Object
        + kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .map_ok(move |e| wrap(Box::new(e)))
        .map(|r| (K::KIND, r))
        .boxed()
}

fn watch_all(client: &Client) -> SelectAll<Watch> {
    futures::stream::select_all([
        watch(Api::<Pod>::all(client.clone()), Ev::Pod),
        watch(Api::<Namespace>::all(client.clone()), Ev::Namespace),
        watch(Api::<Node>::all(client.clone()), Ev::Node),
        watch(Api::<NetworkPolicy>::all(client.clone()), Ev::NetworkPolicy),
        watch(
            Api::<SegmentationPolicy>::all(client.clone()),
            Ev::SegmentationPolicy,
        ),
        watch(
            Api::<ClusterSegmentationPolicy>::all(client.clone()),
            Ev::ClusterSegmentationPolicy,
        ),
    ])
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Controller {
    /// A controller publishing to `hub`.
    pub fn new(hub: SyncHub, config: Config, metrics: Arc<Metrics>) -> Self {
        Controller {
            inner: Arc::new(Inner {
                hub,
                config,
                metrics,
                ready: Arc::new(AtomicBool::new(false)),
                core: Mutex::new(None),
            }),
        }
    }

    /// The hub it publishes to.
    pub fn hub(&self) -> &SyncHub {
        &self.inner.hub
    }

    /// The metrics it counts into.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The readiness flag (true once the initial lists are published).
    pub fn ready(&self) -> Arc<AtomicBool> {
        self.inner.ready.clone()
    }

    fn core(&self) -> MutexGuard<'_, Option<Core>> {
        // Every mutation of the core completes before anything can panic; a poisoned lock
        // still holds consistent data.
        self.inner.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The status inputs of every observed policy object (empty before [`run`](Self::run)
    /// loaded the identity table).
    pub fn policy_progress(&self) -> Vec<PolicyProgress> {
        let hub = &self.inner.hub;
        let (desired, realized, revision) = (hub.desired(), hub.realized(), hub.revision());
        let mut core = self.core();
        match core.as_mut() {
            Some(Core { pipeline, tracker }) => {
                tracker.progress(pipeline, &desired, &realized, revision)
            }
            None => Vec::new(),
        }
    }

    /// Watches the cluster with `client` and publishes to the hub until a watch ends or the
    /// identity table cannot be kept (the caller stops it by dropping the future). Each call
    /// starts from scratch: it loads the identity table, lists every kind, compiles once and
    /// publishes (then the hub serves, see [`SyncHub::set_serving`], and the controller is
    /// ready), then follows the changes.
    pub async fn run(&self, client: Client) -> Result<(), RunError> {
        let config = &self.inner.config;
        let (mut store, table) = IdentityStore::load(
            client.clone(),
            &config.identity_namespace,
            &config.identity_configmap,
        )
        .await?;
        self.inner
            .metrics
            .identities
            .set(i64::try_from(table.entries().len()).unwrap_or(i64::MAX));
        *self.core() = Some(Core {
            pipeline: Pipeline::new(table),
            tracker: Tracker::default(),
        });
        let _ready = ReadyGuard(self.inner.ready.clone());
        let mut events = watch_all(&client);
        let mut lists = Lists::default();
        loop {
            let next_change = self
                .core()
                .as_ref()
                .and_then(|c| c.pipeline.state())
                .and_then(|s| s.next_change);
            let wait = next_change.map(|t| {
                let ms = t.duration_since(jiff::Timestamp::now()).as_millis().max(0);
                Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
            });
            tokio::select! {
                ev = events.next() => self.take(ev, &mut lists)?,
                () = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {}
            }
            let deadline = tokio::time::Instant::now() + config.coalesce;
            while let Ok(ev) = tokio::time::timeout_at(deadline, events.next()).await {
                self.take(ev, &mut lists)?;
            }
            if lists.synced() {
                self.reconcile(&mut store).await?;
            }
        }
    }

    fn take(
        &self,
        ev: Option<(Watched, Result<Ev, watcher::Error>)>,
        lists: &mut Lists,
    ) -> Result<(), RunError> {
        let Some((kind, ev)) = ev else {
            return Err(RunError::WatchEnded("cluster"));
        };
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(kind = kind.as_str(), error = %e, "watch failed; retrying");
                self.inner.metrics.error("watch");
                return Ok(());
            }
        };
        self.inner
            .metrics
            .events
            .get_or_create(&KindLabels {
                kind: kind.as_str().to_owned(),
            })
            .inc();
        let mut core = self.core();
        let Some(core) = core.as_mut() else {
            return Ok(());
        };
        let p = &mut core.pipeline;
        match ev {
            Ev::Pod(e) => lists.take(*e, p),
            Ev::Namespace(e) => lists.take(*e, p),
            Ev::Node(e) => lists.take(*e, p),
            Ev::NetworkPolicy(e) => lists.take(*e, p),
            Ev::SegmentationPolicy(e) => lists.take(*e, p),
            Ev::ClusterSegmentationPolicy(e) => lists.take(*e, p),
        }
        Ok(())
    }

    /// Compiles the recorded changes, stores a grown identity table, publishes.
    async fn reconcile(&self, store: &mut IdentityStore) -> Result<(), RunError> {
        let metrics = &self.inner.metrics;
        let started = Instant::now();
        let this = self.clone();
        let flushed: Result<Option<Flushed>, PipelineError> =
            tokio::task::spawn_blocking(move || {
                let mut core = this.core();
                match core.as_mut() {
                    Some(c)
                        if c.pipeline.dirty()
                            || c.pipeline.state().is_some_and(|s| {
                                s.next_change.is_some_and(|t| t <= jiff::Timestamp::now())
                            }) =>
                    {
                        c.pipeline.flush(jiff::Timestamp::now()).map(Some)
                    }
                    _ => Ok(None),
                }
            })
            .await?;
        let flushed = match flushed {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::error!(error = %e, "compile failed; the last published state stays");
                metrics.error("compile");
                // The inputs are retried with the next batch; a pause keeps a failure that
                // recurs by itself (a due time window) from spinning.
                tokio::time::sleep(COMPILE_RETRY).await;
                return Ok(());
            }
        };
        let compiled = Instant::now();
        metrics.reconciles.inc();
        metrics.compile_seconds.observe(seconds(compiled - started));
        metrics
            .compiler_calls
            .inc_by(u64::try_from(flushed.compiler_calls).unwrap_or(u64::MAX));
        metrics
            .full_compiles
            .inc_by(u64::try_from(flushed.full_compiles).unwrap_or(u64::MAX));
        for _ in 0..flushed.refused {
            metrics.error("refused");
        }
        self.store_table(store).await?;
        if flushed.changed || !flushed.policies.is_empty() {
            let this = self.clone();
            let revision = tokio::task::spawn_blocking(move || {
                let mut core = this.core();
                let Core { pipeline, tracker } = core.as_mut()?;
                let state = pipeline.publishable_state()?;
                let hub = &this.inner.hub;
                let revision = hub.update(state, pipeline.assignment());
                tracker.published(pipeline, &flushed.policies, revision, &hub.desired());
                Some(revision)
            })
            .await?;
            if let Some(revision) = revision {
                metrics
                    .policy_revision
                    .set(i64::try_from(revision).unwrap_or(i64::MAX));
                tracing::debug!(revision, "published");
            }
        }
        metrics.publish_seconds.observe(seconds(compiled.elapsed()));
        if !self.inner.ready.swap(true, Ordering::AcqRel) {
            // A hub that stood by (see `lead`) serves again once it holds this run's state,
            // never the state of an earlier term.
            self.inner.hub.set_serving(true);
            tracing::info!(
                revision = self.inner.hub.revision(),
                "initial lists compiled and published"
            );
        }
        Ok(())
    }

    /// Writes the table if it grew; retries API failures with backoff until it is stored.
    async fn store_table(&self, store: &mut IdentityStore) -> Result<(), RunError> {
        let table = {
            let core = self.core();
            match core.as_ref().and_then(|c| c.pipeline.table()) {
                Some(t) if t.entries().len() != store.stored().entries().len() => t.clone(),
                _ => return Ok(()),
            }
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            match store.store(&table).await {
                Ok(_) => {
                    self.inner
                        .metrics
                        .identities
                        .set(i64::try_from(table.entries().len()).unwrap_or(i64::MAX));
                    return Ok(());
                }
                Err(e @ StoreError::Diverged { .. }) => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(error = %e, "storing the identity table failed; nothing is published until it is stored");
                    self.inner.metrics.error("identity_store");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

/// Clears the readiness flag when the run loop ends.
struct ReadyGuard(Arc<AtomicBool>);

impl Drop for ReadyGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Runs a [`Controller`] with default metrics publishing to `hub`: the entry point for tests and
/// embedders that only need the hub. See [`Controller::run`].
pub async fn run(client: Client, hub: SyncHub, config: Config) -> Result<(), RunError> {
    Controller::new(hub, config, Arc::new(Metrics::default()))
        .run(client)
        .await
}
