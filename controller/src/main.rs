//! `bulkhead-controller`: watches the cluster, compiles policy, serves it to the enforcers.
//!
//! ```text
//! bulkhead-controller --grpc-listen=0.0.0.0:9443 --metrics=0.0.0.0:9464 \
//!   --identity-configmap=bulkhead-identities \
//!   --tls-cert=tls.crt --tls-key=tls.key --tls-client-ca=ca.crt      # or --insecure (loopback)
//! ```
//!
//! The Kubernetes client comes from the in-cluster configuration or `KUBECONFIG`. The identity
//! ConfigMap and the Lease live in `--namespace`, else `$POD_NAMESPACE`, else the client's
//! default namespace. With `--leader-election`, only the replica holding the Lease watches,
//! publishes, and writes statuses and Events; a standby's sync API answers UNAVAILABLE (so
//! enforcers retry until they reach the leader) and its `/readyz` is 503. The replica's identity
//! is `$POD_NAME` (else `$HOSTNAME`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bulkhead_controller::cluster::lead::{lead, lead_when_elected};
use bulkhead_controller::cluster::{Config, Controller};
use bulkhead_controller::leader::{LeaderElector, LeaseConfig};
use bulkhead_controller::metrics::{self, Endpoints, Metrics};
use bulkhead_controller::sync::{self, SyncHub};
use bulkhead_proto::security::{Security, TlsFiles, dev_bind_check};
use clap::Parser;
use kube::runtime::events::Reporter;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The controller's name (Events' reporting controller, the default Lease name).
const NAME: &str = "bulkhead-controller";

/// How often policy statuses and Events are brought up to date.
const REPORT_INTERVAL: Duration = Duration::from_secs(2);

/// Bulkhead controller: watches pods, namespaces, nodes and policies, compiles them, and serves
/// each node's view to its enforcer over the policy sync API.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address of the policy sync gRPC API.
    #[arg(long, default_value = "0.0.0.0:9443")]
    grpc_listen: SocketAddr,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, default_value = "0.0.0.0:9464")]
    metrics: SocketAddr,
    /// Name of the ConfigMap holding the identity allocation table.
    #[arg(long)]
    identity_configmap: String,
    /// Namespace of the identity ConfigMap (default: $POD_NAMESPACE, else the client's).
    #[arg(long)]
    namespace: Option<String>,
    /// Run only while holding the leader-election Lease.
    #[arg(long)]
    leader_election: bool,
    /// Name of the Lease (in the same namespace; default bulkhead-controller).
    #[arg(long, requires = "leader_election")]
    lease_name: Option<String>,
    /// The controller's certificate (PEM) for mutual TLS.
    #[arg(long, requires_all = ["tls_key", "tls_client_ca"], conflicts_with = "insecure")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA bundle the enforcers' client certificates must chain to (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Plaintext gRPC (dev mode): only on a loopback --grpc-listen address.
    #[arg(long)]
    insecure: bool,
}

impl Args {
    fn security(&self) -> Result<Security> {
        match (
            &self.tls_cert,
            &self.tls_key,
            &self.tls_client_ca,
            self.insecure,
        ) {
            (Some(cert), Some(key), Some(ca), false) => Ok(Security::Tls(TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            })),
            (None, None, None, true) => {
                dev_bind_check(self.grpc_listen).context("--insecure")?;
                Ok(Security::DevPlaintext)
            }
            _ => bail!("give --tls-cert, --tls-key and --tls-client-ca, or --insecure"),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // `RUST_LOG` (the chart sets it), else `info`; logs go to stderr.
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once (client errors repeat their source in
/// their own message).
fn one_line(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}

/// Resolves once `stop` says so (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// This replica's name: `$POD_NAME`, else `$HOSTNAME`.
fn replica_name() -> Option<String> {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|n| !n.is_empty()))
}

async fn run(args: Args) -> Result<()> {
    let security = args.security()?;
    let grpc = TcpListener::bind(args.grpc_listen)
        .await
        .with_context(|| format!("--grpc-listen {}", args.grpc_listen))?;
    let metrics_listener = TcpListener::bind(args.metrics)
        .await
        .with_context(|| format!("--metrics {}", args.metrics))?;
    let client = kube::Client::try_default()
        .await
        .context("Kubernetes client (in-cluster configuration or KUBECONFIG)")?;
    let namespace = match (&args.namespace, std::env::var("POD_NAMESPACE")) {
        (Some(ns), _) => ns.clone(),
        (None, Ok(ns)) if !ns.is_empty() => ns,
        _ => client.default_namespace().to_owned(),
    };
    let replica = replica_name();
    let elector = if args.leader_election {
        let Some(identity) = replica.clone() else {
            bail!("--leader-election: set POD_NAME (or HOSTNAME) to this replica's name");
        };
        let lease = args.lease_name.clone().unwrap_or_else(|| NAME.to_owned());
        Some(LeaderElector::new(
            client.clone(),
            LeaseConfig::new(lease, namespace.clone(), identity),
        )?)
    } else {
        None
    };
    let hub = SyncHub::default();
    let metrics = Arc::new(Metrics::default());
    let controller = Controller::new(
        hub.clone(),
        Config::new(namespace, args.identity_configmap.clone()),
        metrics.clone(),
    );
    let endpoints = Endpoints {
        metrics,
        hub: hub.clone(),
        ready: controller.ready(),
    };
    let reporter = Reporter {
        controller: NAME.to_owned(),
        instance: replica,
    };
    if elector.is_some() {
        // A standby until elected.
        hub.set_serving(false);
    }
    let (stop, stop_rx) = watch::channel(false);
    let signal_stop = stop.clone();
    let signal_hub = hub.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        // End the open sync streams (UNAVAILABLE: the enforcers reconnect, to the next
        // leader), so that the server's graceful shutdown completes.
        signal_hub.set_serving(false);
        signal_stop.send_replace(true);
    });
    let (work, elector) = match elector {
        Some(elector) => {
            let leading = elector.subscribe();
            let task = tokio::spawn(elector.run(stopped(stop_rx.clone())));
            (
                futures::future::Either::Left(lead_when_elected(
                    &controller,
                    &client,
                    &reporter,
                    REPORT_INTERVAL,
                    leading,
                )),
                Some(task),
            )
        }
        None => (
            futures::future::Either::Right(lead(&controller, &client, &reporter, REPORT_INTERVAL)),
            None,
        ),
    };
    tracing::info!(grpc = %args.grpc_listen, metrics = %args.metrics, "serving");
    let result = tokio::select! {
        r = sync::serve(hub, grpc, &security, stopped(stop_rx.clone())) => r.context("policy sync server"),
        r = metrics::serve(metrics_listener, endpoints) => r.context("metrics server"),
        r = work => r.context("controller"),
    };
    // Stop leading and release the Lease, so a successor takes over at once.
    stop.send_replace(true);
    if let Some(task) = elector {
        match task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "releasing the lease failed"),
            Err(e) => tracing::warn!(error = %e, "leader election task failed"),
            Ok(Ok(())) => {}
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<Args, clap::Error> {
        let base = ["bulkhead-controller", "--identity-configmap=ids"];
        Args::try_parse_from(base.iter().chain(extra))
    }

    #[test]
    fn the_chart_flags_parse() {
        let a = args(&[
            "--grpc-listen=0.0.0.0:9443",
            "--metrics=0.0.0.0:9464",
            "--leader-election",
            "--lease-name=bulkhead-controller",
            "--tls-cert=/t/tls.crt",
            "--tls-key=/t/tls.key",
            "--tls-client-ca=/t/ca.crt",
        ])
        .unwrap();
        assert!(
            matches!(a.security().unwrap(), Security::Tls(f) if f.ca == std::path::Path::new("/t/ca.crt"))
        );
        assert_eq!(a.lease_name.as_deref(), Some("bulkhead-controller"));
    }

    #[test]
    fn plaintext_only_on_loopback_and_tls_needs_all_three_files() {
        let a = args(&["--insecure", "--grpc-listen=127.0.0.1:9443"]).unwrap();
        assert_eq!(a.security().unwrap(), Security::DevPlaintext);
        let a = args(&["--insecure", "--grpc-listen=0.0.0.0:9443"]).unwrap();
        let e = a.security().unwrap_err();
        assert!(one_line(&e).contains("loopback"), "{e:#}");
        assert!(args(&["--tls-cert=/c"]).is_err());
        assert!(
            args(&[
                "--insecure",
                "--tls-cert=/c",
                "--tls-key=/k",
                "--tls-client-ca=/a"
            ])
            .is_err()
        );
        assert!(args(&[]).unwrap().security().is_err());
        assert!(args(&["--lease-name=x"]).is_err());
    }

    #[test]
    fn one_line_names_each_cause_once() {
        let inner = anyhow::anyhow!("tcp connect error");
        let e = inner
            .context("client error: tcp connect error")
            .context("controller");
        assert_eq!(one_line(&e), "controller: client error: tcp connect error");
    }
}
