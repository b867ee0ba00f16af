//! `cargo xtask demo`: four workloads in their own network namespaces and cgroups on this host,
//! `enforcer run` enforcing `examples/demo/policies` over them, connections that are allowed and
//! denied in the kernel, a just-in-time grant that expires in the kernel, and the verdict log.
//! Everything it creates is removed at the end (and on failure).

use std::io::{BufRead as _, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bulkhead_tests::agent::AgentRun;
use bulkhead_tests::netns::{TestNet, kernel_tests_possible};
use bulkhead_tests::workload::{ProbeResult, Proto, Workload};

const BOLD: &str = "\x1b[1m";
const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

fn main() -> Result<()> {
    if let Err(why) = kernel_tests_possible() {
        bail!("the demo needs root and eBPF: {why}");
    }
    let root = workspace_root()?;

    println!("{BOLD}Bulkhead demo{RESET}: workloads in network namespaces, policy in the kernel\n");
    let mut net = TestNet::new("demo").context("creating the demo network")?;
    let frontend = net.add_workload("frontend", "10.200.0.2".parse()?, "fd00:200::2".parse()?)?;
    let api = net.add_workload("api", "10.200.0.3".parse()?, "fd00:200::3".parse()?)?;
    let db = net.add_workload("db", "10.200.0.4".parse()?, "fd00:200::4".parse()?)?;
    let debug = net.add_workload("debug", "10.200.0.5".parse()?, "fd00:200::5".parse()?)?;
    let _servers = [
        frontend.serve(&[8080], Proto::Tcp)?,
        api.serve(&[8080], Proto::Tcp)?,
        api.serve(&[9125], Proto::Udp)?,
        db.serve(&[5432], Proto::Tcp)?,
    ];
    for (w, ns) in [
        (&frontend, "shop"),
        (&api, "shop"),
        (&db, "shop"),
        (&debug, "ops"),
    ] {
        println!(
            "  workload {ns}/{:<9} {:<11} netns {}  cgroup {}",
            w.name,
            w.ipv4,
            w.netns_path.display(),
            w.cgroup_path.display()
        );
    }

    // The example inventory, with each workload's cgroup added.
    let inventory = std::fs::read_to_string(root.join("examples/demo/inventory.yaml"))?;
    let mut with_cgroups = String::new();
    for line in inventory.lines() {
        with_cgroups.push_str(line);
        with_cgroups.push('\n');
        if let Some(name) = line.trim().strip_prefix("name: ") {
            let workload = [&frontend, &api, &db, &debug]
                .into_iter()
                .find(|w| w.name == name);
            if let Some(w) = workload {
                with_cgroups.push_str(&format!("    cgroup: {}\n", w.cgroup_path.display()));
            }
        }
    }
    // The agent runs as a child process with its own files (removed with it), the programs
    // attached under the demo's parent cgroup.
    let mut agent = AgentRun::new(&net).context("preparing the agent's files")?;
    for entry in std::fs::read_dir(root.join("examples/demo/policies"))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name
            .to_str()
            .context("example policy file name is not UTF-8")?;
        agent.write_policy(name, &std::fs::read_to_string(entry.path())?)?;
    }
    agent.write_inventory(&with_cgroups)?;
    let log = agent.log_path();
    println!(
        "\n{BOLD}$ enforcer run{RESET} --policies examples/demo/policies --inventory ... --log {}",
        log.display()
    );
    agent.start().context("starting the enforcer")?;
    // Ready once the kernel denies what the policy denies.
    wait_for(|| {
        net.probe(&frontend, IpAddr::V4(db.ipv4), 5432, Proto::Tcp) == ProbeResult::Timeout
    })
    .with_context(|| {
        format!(
            "the enforcer did not start enforcing within 20 s; its log:\n{}",
            agent.stderr()
        )
    })?;

    println!(
        "\n{BOLD}Connections{RESET} (each decided in the kernel at the client's egress and the server's ingress)"
    );
    let checks = [
        Check::new(
            &frontend,
            "shop/frontend",
            &api,
            "shop/api",
            8080,
            Proto::Tcp,
            true,
            "NetworkPolicy api-from-frontend",
        ),
        Check::new(
            &api,
            "shop/api",
            &db,
            "shop/db",
            5432,
            Proto::Tcp,
            true,
            "NetworkPolicy db-from-api",
        ),
        Check::new(
            &frontend,
            "shop/frontend",
            &db,
            "shop/db",
            5432,
            Proto::Tcp,
            false,
            "db is isolated; no rule admits frontend",
        ),
        Check::new(
            &db,
            "shop/db",
            &api,
            "shop/api",
            8080,
            Proto::Tcp,
            false,
            "db egress isolated (SegmentationPolicy db-no-egress)",
        ),
        Check::new(
            &debug,
            "ops/debug",
            &db,
            "shop/db",
            5432,
            Proto::Tcp,
            false,
            "ClusterSegmentationPolicy ops-may-not-reach-db",
        ),
        Check::new(
            &debug,
            "ops/debug",
            &api,
            "shop/api",
            9125,
            Proto::Udp,
            false,
            "UDP 9125 only from the shop namespace",
        ),
        Check::new(
            &frontend,
            "shop/frontend",
            &api,
            "shop/api",
            9125,
            Proto::Udp,
            true,
            "UDP 9125 from any pod of shop",
        ),
    ];
    let mut failures = 0;
    for c in &checks {
        failures += check(&net, c);
    }

    println!("\n{BOLD}Just-in-time access{RESET}: ops/debug may reach shop/db:5432 for 6 seconds");
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(6);
    agent.write_policy(
        "jit.yaml",
        &format!(
            "apiVersion: bulkhead.dev/v1alpha1\nkind: ClusterSegmentationPolicy\nmetadata: {{name: oncall-db-access}}\n\
             spec:\n  tier: Admin\n  priority: 5\n  subject:\n    namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: shop}}}}\n    \
             podSelector: {{matchLabels: {{app: db}}}}\n  ingress:\n  - name: oncall-ticket-4711\n    action: Allow\n    from:\n    \
             - namespaceSelector: {{matchLabels: {{team: ops}}}}\n      serviceAccount: {{name: oncall, namespace: ops}}\n    \
             ports: [{{protocol: TCP, port: 5432}}]\n    expiresAt: \"{expires}\"\n"
        ),
    )?;
    println!(
        "  {DIM}wrote policies/jit.yaml (expiresAt {expires}); the enforcer reloads it{RESET}"
    );
    wait_for(|| net.probe(&debug, IpAddr::V4(db.ipv4), 5432, Proto::Tcp) == ProbeResult::Connected)
        .context("the just-in-time grant was not applied within 20 s")?;
    failures += check(
        &net,
        &Check::new(
            &debug,
            "ops/debug",
            &db,
            "shop/db",
            5432,
            Proto::Tcp,
            true,
            "grant oncall-ticket-4711",
        ),
    );
    let left = expires.duration_since(jiff::Timestamp::now());
    std::thread::sleep(Duration::try_from(left).unwrap_or_default() + Duration::from_millis(300));
    println!("  {DIM}{expires} has passed: the kernel no longer honours the grant{RESET}");
    failures += check(
        &net,
        &Check::new(
            &debug,
            "ops/debug",
            &db,
            "shop/db",
            5432,
            Proto::Tcp,
            false,
            "grant expired",
        ),
    );

    // Let the agent drain the ring buffer, then show the log.
    std::thread::sleep(Duration::from_millis(500));
    show_log(&log)?;
    // Stops the agent (SIGTERM: it flushes the log), uninstalls the datapath, removes its files.
    drop(agent);
    drop(net);
    if failures > 0 {
        bail!("{failures} connection(s) did not behave as the policy says");
    }
    println!(
        "\n{GREEN}Every connection behaved as the policy says.{RESET} Cleaned up: namespaces, cgroups, programs, maps."
    );
    Ok(())
}

/// One row of the demo's connection table.
#[derive(Clone, Copy)]
struct Check<'a> {
    from: &'a Workload,
    from_name: &'a str,
    to: &'a Workload,
    to_name: &'a str,
    port: u16,
    proto: Proto,
    allowed: bool,
    why: &'a str,
}

impl<'a> Check<'a> {
    #[expect(clippy::too_many_arguments, reason = "one row of the demo's table")]
    fn new(
        from: &'a Workload,
        from_name: &'a str,
        to: &'a Workload,
        to_name: &'a str,
        port: u16,
        proto: Proto,
        allowed: bool,
        why: &'a str,
    ) -> Self {
        Self {
            from,
            from_name,
            to,
            to_name,
            port,
            proto,
            allowed,
            why,
        }
    }
}

fn check(net: &TestNet, c: &Check<'_>) -> usize {
    let Check {
        from,
        from_name,
        to,
        to_name,
        port,
        proto,
        allowed,
        why,
    } = *c;
    let result = net.probe(from, IpAddr::V4(to.ipv4), port, proto);
    let connected = result == ProbeResult::Connected;
    let shown = match &result {
        ProbeResult::Connected => format!("{GREEN}allowed{RESET}"),
        ProbeResult::Denied => format!("{RED}denied{RESET} (EPERM at connect)"),
        ProbeResult::Timeout => format!("{RED}dropped{RESET}"),
        other => format!("{other:?}"),
    };
    let proto_name = if proto == Proto::Tcp { "TCP" } else { "UDP" };
    let mark = if connected == allowed {
        "ok"
    } else {
        "UNEXPECTED"
    };
    println!(
        "  {from_name:<14} -> {to_name:<9} {proto_name}/{port:<5} {shown:<28} {DIM}{why}{RESET}  [{mark}]"
    );
    usize::from(connected != allowed)
}

fn show_log(path: &Path) -> Result<()> {
    println!(
        "\n{BOLD}Verdict log{RESET} {} (one record per decision per enforcement point)",
        path.display()
    );
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut first = None;
    for line in BufReader::new(file).lines() {
        let line = line?;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        if v["event"] == "lost" {
            println!(
                "  {RED}{} verdicts lost (ring buffer full){RESET}",
                v["count"]
            );
            continue;
        }
        let endpoint = |e: &serde_json::Value| {
            e["workload"]
                .as_str()
                .map_or_else(|| e["ip"].as_str().unwrap_or("?").to_owned(), str::to_owned)
        };
        let policy = match v["policy"].as_object() {
            Some(p) => format!(
                "{} {}{}",
                p["kind"].as_str().unwrap_or(""),
                p["namespace"]
                    .as_str()
                    .map(|n| format!("{n}/"))
                    .unwrap_or_default(),
                p["name"].as_str().unwrap_or("")
            ),
            None => "(default)".to_owned(),
        };
        let rule = v["rule"]
            .as_u64()
            .map(|r| format!(" rule {r}"))
            .unwrap_or_default();
        println!(
            "  {:<5} {:<7} {:<13} -> {:<9} {}/{:<5} {:<15} {policy}{rule}",
            v["verdict"].as_str().unwrap_or(""),
            v["direction"].as_str().unwrap_or(""),
            endpoint(&v["src"]),
            endpoint(&v["dst"]),
            v["protocol"].as_str().unwrap_or(""),
            v["dst"]["port"],
            v["reason"].as_str().unwrap_or(""),
        );
        if first.is_none() && v["verdict"] == "deny" {
            first = Some(line);
        }
    }
    if let Some(line) = first {
        println!("\n  one record in full:\n  {DIM}{line}{RESET}");
    }
    Ok(())
}

fn wait_for(mut ok: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out")
}

/// The workspace root (this binary runs from `target/<profile>/`).
fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .context("the tests crate has a parent directory")?
        .to_path_buf())
}
