//! The controller's Prometheus metrics and its HTTP endpoints: `/metrics` (text exposition
//! format), `/healthz` (the process serves), `/readyz` (the pipeline compiled and published the
//! initial lists; 503 before, and on a standby replica).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bulkhead_endpoints::{Answer, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::sync::SyncHub;

/// Label of per-kind counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `Pod`, `Namespace`, `Node`, `NetworkPolicy`, `SegmentationPolicy`,
    /// `ClusterSegmentationPolicy`.
    pub kind: String,
}

/// Label of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `watch` (a watcher's request failed; it retries with backoff), `compile` (the compiler
    /// refused the inputs as a whole), `identity_store` (writing the identity table failed),
    /// `refused` (an invalid policy or a pod the compiler refused).
    pub error: String,
}

/// Every metric the controller exports (prefix `bulkhead_controller_`).
pub struct Metrics {
    registry: Registry,
    /// Watch events received, by kind.
    pub events: Family<KindLabels, Counter>,
    /// Reconciles: flushes of a batch of events into the compiler.
    pub reconciles: Counter,
    /// Compiler calls (one per changed object, plus full compiles).
    pub compiler_calls: Counter,
    /// Full compiles.
    pub full_compiles: Counter,
    /// Errors, by kind.
    pub errors: Family<ErrorLabels, Counter>,
    /// Seconds per reconcile (compile of one batch).
    pub compile_seconds: Histogram,
    /// Seconds from the end of a batch's compile to its publication (identity write included).
    pub publish_seconds: Histogram,
    /// The latest published policy revision.
    pub policy_revision: Gauge,
    /// Identity numbers allocated (the persisted table's size).
    pub identities: Gauge,
    /// Nodes with an open sync stream (set at each scrape).
    pub connected_nodes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("bulkhead_controller");
        let events = Family::<KindLabels, Counter>::default();
        let reconciles = Counter::default();
        let compiler_calls = Counter::default();
        let full_compiles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let compile_seconds = Histogram::new(exponential_buckets(0.0001, 4.0, 10));
        let publish_seconds = Histogram::new(exponential_buckets(0.0001, 4.0, 10));
        let policy_revision = Gauge::default();
        let identities = Gauge::default();
        let connected_nodes = Gauge::default();
        registry.register(
            "watch_events",
            "Watch events received, by kind",
            events.clone(),
        );
        registry.register(
            "reconciles",
            "Batches of watch events compiled",
            reconciles.clone(),
        );
        registry.register(
            "compiler_calls",
            "Incremental compiler calls (one per changed object) and full compiles",
            compiler_calls.clone(),
        );
        registry.register(
            "full_compiles",
            "Full compiles (the initial lists, new namespaces, namespace relabels, time windows)",
            full_compiles.clone(),
        );
        registry.register("errors", "Errors, by kind", errors.clone());
        registry.register(
            "compile_seconds",
            "Time to compile one batch of changes",
            compile_seconds.clone(),
        );
        registry.register(
            "publish_seconds",
            "Time from a batch's compile to its publication, identity table write included",
            publish_seconds.clone(),
        );
        registry.register(
            "policy_revision",
            "Latest published policy revision",
            policy_revision.clone(),
        );
        registry.register(
            "identities",
            "Identity numbers allocated and persisted",
            identities.clone(),
        );
        registry.register(
            "connected_nodes",
            "Nodes with an open policy sync stream",
            connected_nodes.clone(),
        );
        Metrics {
            registry,
            events,
            reconciles,
            compiler_calls,
            full_compiles,
            errors,
            compile_seconds,
            publish_seconds,
            policy_revision,
            identities,
            connected_nodes,
        }
    }
}

impl Metrics {
    /// Counts one error of kind `error`.
    pub fn error(&self, error: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                error: error.to_owned(),
            })
            .inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// What the endpoints report.
#[derive(Clone)]
pub struct Endpoints {
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The hub (for the connected-nodes gauge).
    pub hub: SyncHub,
    /// Whether the initial lists are compiled and published.
    pub ready: Arc<AtomicBool>,
}

impl Endpoints {
    fn answer(&self, path: &str) -> Answer {
        match path {
            "/metrics" => {
                let connected = self.hub.connected().len();
                self.metrics
                    .connected_nodes
                    .set(i64::try_from(connected).unwrap_or(i64::MAX));
                (StatusCode::OK, self.metrics.encode())
            }
            "/healthz" => bulkhead_endpoints::ok(),
            "/readyz" if self.ready.load(Ordering::Acquire) => bulkhead_endpoints::ok(),
            "/readyz" => (
                StatusCode::SERVICE_UNAVAILABLE,
                "initial lists not compiled yet\n".to_owned(),
            ),
            _ => bulkhead_endpoints::not_found(),
        }
    }
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, endpoints: Endpoints) -> std::io::Result<()> {
    bulkhead_endpoints::serve(listener, move |path: &str| endpoints.answer(path)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(endpoints: &Endpoints, path: &str) -> (StatusCode, String) {
        endpoints.answer(path)
    }

    #[test]
    fn ready_only_after_the_initial_publication_and_metrics_by_name() {
        let endpoints = Endpoints {
            metrics: Arc::new(Metrics::default()),
            hub: SyncHub::default(),
            ready: Arc::new(AtomicBool::new(false)),
        };
        assert_eq!(get(&endpoints, "/healthz").0, StatusCode::OK);
        assert_eq!(
            get(&endpoints, "/readyz").0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        endpoints.ready.store(true, Ordering::Release);
        assert_eq!(get(&endpoints, "/readyz").0, StatusCode::OK);
        assert_eq!(get(&endpoints, "/nope").0, StatusCode::NOT_FOUND);
        let m = &endpoints.metrics;
        m.events
            .get_or_create(&KindLabels { kind: "Pod".into() })
            .inc_by(3);
        m.error("watch");
        m.compile_seconds.observe(0.002);
        m.policy_revision.set(7);
        let (status, text) = get(&endpoints, "/metrics");
        assert_eq!(status, StatusCode::OK);
        for line in [
            r#"bulkhead_controller_watch_events_total{kind="Pod"} 3"#,
            r#"bulkhead_controller_errors_total{error="watch"} 1"#,
            "bulkhead_controller_compile_seconds_count 1",
            "bulkhead_controller_policy_revision 7",
            "bulkhead_controller_connected_nodes 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
