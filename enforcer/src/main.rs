//! `enforcer`: Bulkhead's node agent and CLI.
//!
//! - `enforcer run`: load the kernel programs (or adopt the pinned ones), enforce the policy
//!   files over the workload inventory, log every verdict.
//! - `enforcer trace`: what the kernel would decide, offline.
//! - `enforcer uninstall`: remove the programs, links and maps.
//!
//! Exit status: 0 success, 1 runtime failure, 2 invalid input (policy, inventory, arguments).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use bulkhead_policy::{AllocationTable, Compiler, Flow, Inventory, PolicySet, evaluate};
use clap::{Parser, Subcommand, ValueEnum};
use enforcer::agent::{self, AgentConfig};
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

#[derive(Subcommand)]
enum Command {
    /// Enforce policy files over a workload inventory on this host.
    Run {
        /// Policy file or directory (NetworkPolicy, SegmentationPolicy, ClusterSegmentationPolicy).
        #[arg(long)]
        policies: PathBuf,
        /// Workload inventory file.
        #[arg(long)]
        inventory: PathBuf,
        /// Flow verdict log (JSON Lines).
        #[arg(long, default_value = verdict_log::DEFAULT_PATH)]
        log: PathBuf,
        /// bpffs directory for the pinned programs, links and maps.
        #[arg(long, default_value = pins::DEFAULT_ROOT)]
        bpffs: PathBuf,
        /// Cgroup v2 directory to attach to (default: the root of the v2 hierarchy).
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
                || error.downcast_ref::<bulkhead_policy::Error>().is_some();
            ExitCode::from(if invalid { 2 } else { 1 })
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run {
            policies,
            inventory,
            log,
            bpffs,
            cgroup,
            state_dir,
            metrics,
            no_metrics,
        } => {
            let config = AgentConfig {
                policies,
                inventory,
                log,
                bpffs,
                cgroup,
                state_dir,
                metrics: (!no_metrics).then_some(metrics),
            };
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(agent::run(config))
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
