//! `enforcer`: Bulkhead's node agent and CLI.
//!
//! - `enforcer run`: load the kernel programs (or adopt the pinned ones), enforce the policy
//!   files over the workload inventory (standalone) or what the controller sends for this node
//!   (cluster mode, `--controller`), log every verdict.
//! - `enforcer trace`: what the kernel would decide, offline.
//! - `enforcer uninstall`: remove the programs, links and maps.
//!
//! Exit status: 0 success, 1 runtime failure, 2 invalid input (policy, inventory, arguments).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use bulkhead_policy::{AllocationTable, Compiler, Flow, Inventory, PolicySet, evaluate};
use bulkhead_proto::security::{Security, TlsFiles};
use clap::{Parser, Subcommand, ValueEnum};
use enforcer::agent::cluster::ClusterConfig;
use enforcer::agent::{self, AgentConfig};
use enforcer::cluster::{Backoff, ClientConfig, pods::Driver};
use enforcer::datapath::{self, pins};
use enforcer::{trace, verdict_log};

#[derive(Parser)]
#[command(
    name = "enforcer",
    version,
    about = "Bulkhead: eBPF micro-segmentation enforcer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// The kubelet's cgroup driver.
#[derive(Clone, Copy, ValueEnum)]
enum CgroupDriver {
    /// The driver whose hierarchy exists (`kubepods.slice`, else `kubepods`).
    Auto,
    Systemd,
    Cgroupfs,
}

#[derive(Subcommand)]
enum Command {
    /// Enforce policy files over a workload inventory on this host (standalone), or what the
    /// controller sends for this node (cluster mode: `--controller` and `--node-name`).
    Run {
        /// Policy file or directory (NetworkPolicy, SegmentationPolicy, ClusterSegmentationPolicy).
        #[arg(
            long,
            required_unless_present = "controller",
            conflicts_with = "controller"
        )]
        policies: Option<PathBuf>,
        /// Workload inventory file.
        #[arg(
            long,
            required_unless_present = "controller",
            conflicts_with = "controller"
        )]
        inventory: Option<PathBuf>,
        /// Cluster mode: the controller's sync endpoint, `https://host:port` (mutual TLS, with
        /// `--tls-cert`, `--tls-key`, `--tls-ca`) or `http://127.0.0.1:port` (`--insecure`,
        /// loopback only).
        #[arg(long, requires = "node_name")]
        controller: Option<String>,
        /// Cluster mode: this node's name (as the controller knows it).
        #[arg(long, requires = "controller")]
        node_name: Option<String>,
        /// Cluster mode: this enforcer's certificate (PEM).
        #[arg(long, requires_all = ["tls_key", "tls_ca", "controller"], conflicts_with = "insecure")]
        tls_cert: Option<PathBuf>,
        /// Cluster mode: this enforcer's private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Cluster mode: the CA bundle the controller's certificate must chain to (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_ca: Option<PathBuf>,
        /// Cluster mode: the name the controller's certificate must carry (default: the URL's
        /// host).
        #[arg(long, requires = "tls_cert")]
        server_name: Option<String>,
        /// Cluster mode: plaintext dev mode (the controller must be on a loopback address).
        #[arg(long, requires = "controller")]
        insecure: bool,
        /// Cluster mode: the kubelet's cgroup driver (where pods' cgroups are).
        #[arg(long, value_enum, default_value_t = CgroupDriver::Auto, requires = "controller")]
        cgroup_driver: CgroupDriver,
        /// Flow verdict log (JSON Lines).
        #[arg(long, default_value = verdict_log::DEFAULT_PATH)]
        log: PathBuf,
        /// bpffs directory for the pinned programs, links and maps.
        #[arg(long, default_value = pins::DEFAULT_ROOT)]
        bpffs: PathBuf,
        /// Cgroup v2 directory to attach to (default: the root of the v2 hierarchy). In cluster
        /// mode the kubelet's hierarchy (`kubepods.slice` or `kubepods`) is found in it.
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// State directory (identity allocation table, rule table).
        #[arg(long, default_value = agent::state::DEFAULT_DIR)]
        state_dir: PathBuf,
        /// Address of the Prometheus metrics endpoint (`/metrics`, `/healthz`).
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics: SocketAddr,
        /// Disable the metrics endpoint.
        #[arg(long)]
        no_metrics: bool,
    },
    /// Decide a connection offline, naming the deciding policy and rule.
    Trace {
        #[arg(long)]
        policies: PathBuf,
        #[arg(long)]
        inventory: PathBuf,
        /// Client: `namespace/name` or an IP address.
        #[arg(long, required_unless_present = "matrix")]
        from: Option<String>,
        /// Server: `namespace/name` or an IP address.
        #[arg(long, required_unless_present = "matrix")]
        to: Option<String>,
        /// Every ordered pair of inventory workloads instead of one flow.
        #[arg(long, conflicts_with_all = ["from", "to"])]
        matrix: bool,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "TCP")]
        protocol: String,
        /// Instant to decide at (RFC 3339; default now).
        #[arg(long)]
        at: Option<String>,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Remove the programs, links and maps pinned under the bpffs directory.
    Uninstall {
        #[arg(long, default_value = pins::DEFAULT_ROOT)]
        bpffs: PathBuf,
    },
}

/// An error caused by the user's input (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct InvalidInput(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            let invalid = error.downcast_ref::<InvalidInput>().is_some()
                || error.downcast_ref::<bulkhead_policy::Error>().is_some()
                || error
                    .downcast_ref::<enforcer::cluster::ClientError>()
                    .is_some();
            ExitCode::from(if invalid { 2 } else { 1 })
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run {
            policies,
            inventory,
            controller,
            node_name,
            tls_cert,
            tls_key,
            tls_ca,
            server_name,
            insecure,
            cgroup_driver,
            log,
            bpffs,
            cgroup,
            state_dir,
            metrics,
            no_metrics,
        } => {
            let metrics = (!no_metrics).then_some(metrics);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            match (controller, node_name, policies, inventory) {
                (Some(url), Some(node_name), _, _) => {
                    let security = match (tls_cert, tls_key, tls_ca) {
                        (Some(cert), Some(key), Some(ca)) => {
                            Security::Tls(TlsFiles { ca, cert, key })
                        }
                        _ if insecure => Security::DevPlaintext,
                        _ => {
                            return Err(InvalidInput(
                                "--controller needs --tls-cert, --tls-key and --tls-ca, or --insecure (loopback only)"
                                    .into(),
                            )
                            .into());
                        }
                    };
                    let config = ClusterConfig {
                        client: ClientConfig {
                            url,
                            node_name,
                            security,
                            server_name,
                            backoff: Backoff::default(),
                        },
                        log,
                        bpffs,
                        cgroup,
                        driver: match cgroup_driver {
                            CgroupDriver::Auto => None,
                            CgroupDriver::Systemd => Some(Driver::Systemd),
                            CgroupDriver::Cgroupfs => Some(Driver::Cgroupfs),
                        },
                        state_dir,
                        metrics,
                    };
                    runtime.block_on(agent::cluster::run(config))
                }
                (None, None, Some(policies), Some(inventory)) => {
                    let config = AgentConfig {
                        policies,
                        inventory,
                        log,
                        bpffs,
                        cgroup,
                        state_dir,
                        metrics,
                    };
                    runtime.block_on(agent::run(config))
                }
                _ => Err(InvalidInput(
                    "run needs --policies and --inventory, or --controller and --node-name".into(),
                )
                .into()),
            }
        }
        Command::Trace {
            policies,
            inventory,
            from,
            to,
            matrix,
            port,
            protocol,
            at,
            output,
        } => {
            let protocol =
                trace::parse_protocol(&protocol).map_err(|e| InvalidInput(e.to_string()))?;
            let at = match at {
                Some(text) => text
                    .parse::<jiff::Timestamp>()
                    .map_err(|e| InvalidInput(format!("--at: `{text}` is not RFC 3339: {e}")))?,
                None => jiff::Timestamp::now(),
            };
            let policies = PolicySet::load(&policies)?;
            let inventory = Inventory::load(&inventory)?;
            let state =
                Compiler::new(AllocationTable::default()).compile(&policies, &inventory, at)?;
            let json = matches!(output, Output::Json);
            if matrix {
                print!(
                    "{}",
                    trace::render_matrix(&state, protocol, port, at, json)?
                );
                return Ok(());
            }
            let endpoint = |text: Option<String>, flag: &str| {
                let text = text.unwrap_or_default();
                trace::parse_endpoint(&text, &state)
                    .map_err(|e| InvalidInput(format!("--{flag}: {e}")))
            };
            let flow = Flow {
                src: endpoint(from, "from")?,
                dst: endpoint(to, "to")?,
                protocol,
                port,
                at,
            };
            let decision = evaluate(&state, &flow);
            if json {
                println!("{}", serde_json::to_string_pretty(&decision)?);
            } else {
                print!("{}", trace::render_text(&flow, &decision));
            }
            Ok(())
        }
        Command::Uninstall { bpffs } => {
            datapath::uninstall(&bpffs)?;
            println!("removed everything under {}", bpffs.display());
            Ok(())
        }
    }
}
