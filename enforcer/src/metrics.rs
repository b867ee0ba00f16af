//! Prometheus metrics of the node agent, served in the text exposition format on a local port.

use std::net::SocketAddr;
use std::sync::Arc;

use bulkhead_endpoints::{Answer, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub direction: String,
    pub verdict: String,
    /// `kind/namespace/name` of the deciding policy, or `default`.
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: String,
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    pub verdicts: Family<VerdictLabels, Counter>,
    pub events_lost: Counter,
    pub map_entries: Family<MapLabels, Gauge>,
    pub map_capacity: Family<MapLabels, Gauge>,
    pub policy_revision: Gauge,
    pub apply_errors: Counter,
    pub invalid_inputs: Counter,
    /// Cluster mode: 1 while the sync stream with the controller is open.
    pub sync_connected: Gauge,
    /// Cluster mode: pods of the node's view whose cgroup was not found (not enforced yet).
    pub pods_missing_cgroup: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("bulkhead");
        let verdicts = Family::<VerdictLabels, Counter>::default();
        let events_lost = Counter::default();
        let map_entries = Family::<MapLabels, Gauge>::default();
        let map_capacity = Family::<MapLabels, Gauge>::default();
        let policy_revision = Gauge::default();
        let apply_errors = Counter::default();
        let invalid_inputs = Counter::default();
        let sync_connected = Gauge::default();
        let pods_missing_cgroup = Gauge::default();
        registry.register(
            "verdicts",
            "Verdicts on new connections, by direction, verdict and deciding policy",
            verdicts.clone(),
        );
        registry.register(
            "events_lost",
            "Verdict events the kernel could not write to the ring buffer",
            events_lost.clone(),
        );
        registry.register(
            "map_entries",
            "Entries in each eBPF map",
            map_entries.clone(),
        );
        registry.register(
            "map_capacity",
            "Maximum entries of each eBPF map",
            map_capacity.clone(),
        );
        registry.register(
            "policy_revision",
            "Policy revision the kernel maps hold",
            policy_revision.clone(),
        );
        registry.register(
            "apply_errors",
            "Failed attempts to write the kernel maps",
            apply_errors.clone(),
        );
        registry.register(
            "invalid_inputs",
            "Policy or inventory changes refused as invalid (the last good state kept enforcing)",
            invalid_inputs.clone(),
        );
        registry.register(
            "sync_connected",
            "Cluster mode: 1 while the policy sync stream with the controller is open, else 0 \
             (the last state keeps enforcing)",
            sync_connected.clone(),
        );
        registry.register(
            "pods_missing_cgroup",
            "Cluster mode: pods of this node's view whose cgroup was not found yet",
            pods_missing_cgroup.clone(),
        );
        Self {
            registry,
            verdicts,
            events_lost,
            map_entries,
            map_capacity,
            policy_revision,
            apply_errors,
            invalid_inputs,
            sync_connected,
            pods_missing_cgroup,
        }
    }
}

impl Metrics {
    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Serves `GET /metrics` (and `/healthz`) until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving metrics");
    bulkhead_endpoints::serve(listener, move |path: &str| answer(path, &metrics)).await
}

fn answer(path: &str, metrics: &Metrics) -> Answer {
    match path {
        "/metrics" => (StatusCode::OK, metrics.encode()),
        "/healthz" => bulkhead_endpoints::ok(),
        _ => bulkhead_endpoints::not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_verdicts_by_labels() {
        let metrics = Metrics::default();
        metrics
            .verdicts
            .get_or_create(&VerdictLabels {
                direction: "ingress".into(),
                verdict: "deny".into(),
                policy: "NetworkPolicy/x/deny-all".into(),
            })
            .inc_by(2);
        metrics.events_lost.inc();
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"bulkhead_verdicts_total{direction="ingress",verdict="deny",policy="NetworkPolicy/x/deny-all"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains("bulkhead_events_lost_total 1"), "{text}");
    }
}
