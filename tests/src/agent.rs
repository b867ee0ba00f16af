//! Runs the real `enforcer run` binary (standalone mode) over a [`crate::netns::TestNet`]:
//! a policy directory, an inventory with the workloads' cgroups, a verdict log, a per-test bpffs
//! root, and the programs attached under the test's parent cgroup (pitfall 11). Dropping the
//! guard stops the agent, uninstalls the datapath and removes the files.

use std::io::{self, BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::TestNet;
use crate::workload::Workload;

/// The `enforcer` binary: `$BULKHEAD_ENFORCER`, else next to the running executable (cargo puts
/// every workspace binary in `target/<profile>/`).
pub fn enforcer_binary() -> io::Result<PathBuf> {
    if let Some(p) = std::env::var_os("BULKHEAD_ENFORCER") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("enforcer");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(io::Error::other(format!(
        "enforcer binary not found near {}; `cargo build -p enforcer` (cargo test --workspace builds it) or set BULKHEAD_ENFORCER",
        exe.display()
    )))
}

/// An inventory workload line set: `namespace`, `name`, labels and the test workload it is.
pub struct InventoryWorkload<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub labels: &'a str,
    pub workload: &'a Workload,
}

/// Inventory YAML for `namespaces` (name, labels as a YAML flow map) and `workloads`.
pub fn inventory_yaml(namespaces: &[(&str, &str)], workloads: &[InventoryWorkload<'_>]) -> String {
    let mut out = String::from("namespaces:\n");
    for (name, labels) in namespaces {
        out.push_str(&format!("  - {{name: {name}, labels: {labels}}}\n"));
    }
    out.push_str("workloads:\n");
    for w in workloads {
        out.push_str(&format!(
            "  - namespace: {}\n    name: {}\n    labels: {}\n    ips: [{}, \"{}\"]\n    cgroup: {}\n",
            w.namespace,
            w.name,
            w.labels,
            w.workload.ipv4,
            w.workload.ipv6,
            w.workload.cgroup_path.display()
        ));
    }
    out
}

/// A running (or stopped) agent and its files.
pub struct AgentRun {
    child: Option<Child>,
    binary: PathBuf,
    dir: PathBuf,
    bpffs: PathBuf,
    cgroup: PathBuf,
    stderr: PathBuf,
    metrics: Option<std::net::SocketAddr>,
}

impl AgentRun {
    /// Prepares the agent's directory for `net` (nothing runs yet).
    pub fn new(net: &TestNet) -> io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("{}-agent", net.prefix()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("policies"))?;
        Ok(Self {
            child: None,
            binary: enforcer_binary()?,
            bpffs: PathBuf::from("/sys/fs/bpf").join(net.prefix()),
            cgroup: net.cgroup_parent().to_path_buf(),
            stderr: dir.join("agent.stderr"),
            dir,
            metrics: None,
        })
    }

    pub fn policies_dir(&self) -> PathBuf {
        self.dir.join("policies")
    }

    pub fn inventory_path(&self) -> PathBuf {
        self.dir.join("inventory.yaml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("verdicts.jsonl")
    }

    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// Writes (atomically: temporary file, then rename) a policy file.
    pub fn write_policy(&self, file: &str, yaml: &str) -> io::Result<()> {
        write_atomically(&self.policies_dir().join(file), yaml)
    }

    pub fn remove_policy(&self, file: &str) -> io::Result<()> {
        std::fs::remove_file(self.policies_dir().join(file))
    }

    pub fn write_inventory(&self, yaml: &str) -> io::Result<()> {
        write_atomically(&self.inventory_path(), yaml)
    }

    /// Where the agent serves its metrics, if [`Self::set_metrics`] was called.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics
    }

    /// The agent's metrics now (`None` while the endpoint does not answer).
    pub fn scrape_metrics(&self) -> Option<String> {
        scrape(self.metrics?)
    }

    /// Serves the agent's metrics on `addr` (loopback) from the next start on.
    pub fn set_metrics(&mut self, addr: std::net::SocketAddr) {
        self.metrics = Some(addr);
    }

    /// Starts `enforcer run` (standalone: the policy directory and the inventory); its stderr
    /// goes to a file (see [`Self::stderr`]).
    pub fn start(&mut self) -> io::Result<()> {
        let policies = self.policies_dir();
        let inventory = self.inventory_path();
        self.spawn(&[
            "--policies".as_ref(),
            policies.as_os_str(),
            "--inventory".as_ref(),
            inventory.as_os_str(),
        ])
    }

    /// Starts `enforcer run` in cluster mode: the controller at `url` (plaintext dev mode), this
    /// node named `node`. The kubelet's hierarchy is looked for in the test's parent cgroup.
    pub fn start_cluster(&mut self, url: &str, node: &str) -> io::Result<()> {
        self.spawn(&[
            "--controller".as_ref(),
            url.as_ref(),
            "--node-name".as_ref(),
            node.as_ref(),
            "--insecure".as_ref(),
        ])
    }

    fn spawn(&mut self, mode: &[&std::ffi::OsStr]) -> io::Result<()> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr)?;
        let mut command = Command::new(&self.binary);
        command.arg("run");
        match self.metrics {
            Some(addr) => command.arg("--metrics").arg(addr.to_string()),
            None => command.arg("--no-metrics"),
        };
        let child = command
            .args(mode)
            .arg("--log")
            .arg(self.log_path())
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: the process dies at once, without flushing anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: the agent drains the ring buffer, flushes the log and exits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Whether the agent process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The agent's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Every record of the verdict log so far.
    pub fn log_records(&self) -> Vec<serde_json::Value> {
        let Ok(file) = std::fs::File::open(self.log_path()) else {
            return Vec::new();
        };
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .map(|l| serde_json::from_str(&l).expect("every log line is one JSON object"))
            .collect()
    }

    /// Waits until `cond` holds (polling every 50 ms), up to `limit`.
    pub fn wait_until(&self, limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if cond() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for AgentRun {
    fn drop(&mut self) {
        self.stop();
        let _ = Command::new(&self.binary)
            .arg("uninstall")
            .arg("--bpffs")
            .arg(&self.bpffs)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// A free loopback address for an agent's metrics endpoint.
pub fn free_loopback_addr() -> io::Result<std::net::SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// `GET /metrics` over plain HTTP/1.0 on loopback; `None` unless it answers 200.
pub fn scrape(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let ok = response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200");
    ok.then_some(response)
}
