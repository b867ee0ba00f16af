//! Per-test networks: a hub network namespace with a bridge, and one namespace per workload
//! joined to it by a veth pair. Everything a test creates has a unique name (pitfall 9) and is
//! removed when its guard drops, panics included. Addresses are only ever assigned inside these
//! namespaces, from 10.200.0.0/16 and fd00:200::/32 (pitfall 10).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::{
    cgroup::CgroupDir,
    workload::{ProbeResult, Proto, Workload, helper_path, probe_once},
};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A named network namespace (`/run/netns/NAME`), deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn create(name: &str) -> io::Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, for `setns`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("{e}");
        }
    }
}

/// Whether tests that need root and BPF can run here; `Err` says why not.
pub fn kernel_tests_possible() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("not root".into());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err("kernel without BTF".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Err("iproute2 (`ip`) not installed".into());
    }
    enforcer::datapath::find_cgroup2_mount().map_err(|e| format!("no cgroup v2: {e}"))?;
    Ok(())
}

/// `true` when a kernel test must be skipped (not root, no BPF), with a message naming `what`;
/// `BULKHEAD_REQUIRE_KERNEL_TESTS=1` makes that a failure instead.
pub fn skip_kernel_tests(what: &str) -> bool {
    match kernel_tests_possible() {
        Ok(()) => false,
        Err(why) => {
            assert!(
                std::env::var_os("BULKHEAD_REQUIRE_KERNEL_TESTS").is_none(),
                "kernel tests required but impossible here: {why}"
            );
            eprintln!("SKIPPED: {what} tests need root and BPF: {why}");
            true
        }
    }
}

fn check_test_address(v4: Ipv4Addr, v6: Ipv6Addr) -> io::Result<()> {
    let o = v4.octets();
    let s = v6.segments();
    if o[0] == 10 && o[1] == 200 && s[0] == 0xfd00 && s[1] == 0x0200 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{v4}/{v6}: test addresses must lie in 10.200.0.0/16 and fd00:200::/32"
        )))
    }
}

/// One test's network: a hub namespace with bridge `br0`, a parent cgroup, and workloads.
/// Field order is drop order: workloads (cgroups, namespaces) go before the hub and the parent.
pub struct TestNet {
    workloads: Vec<(CgroupDir, NetNs)>,
    hub: NetNs,
    parent: CgroupDir,
    prefix: String,
    helper: PathBuf,
}

impl TestNet {
    /// Creates the hub namespace and a parent cgroup under the cgroup v2 root, named after the
    /// test (`name`), this process and a counter.
    pub fn new(name: &str) -> io::Result<Self> {
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("bh{}-{n}-{name}", std::process::id());
        let root = enforcer::datapath::find_cgroup2_mount()?;
        let parent = CgroupDir::create(&root, &prefix)?;
        let hub = NetNs::create(&format!("{prefix}-hub"))?;
        ip(&[
            "-n",
            hub.name(),
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", hub.name(), "link", "set", "br0", "up"])?;
        Ok(Self {
            workloads: Vec::new(),
            hub,
            parent,
            prefix,
            helper: helper_path()?,
        })
    }

    /// The per-test parent cgroup: attach programs here, never at the root (pitfall 11).
    pub fn cgroup_parent(&self) -> &Path {
        self.parent.path()
    }

    /// The unique prefix of every name this network uses (also good for a bpffs root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Adds a workload: its own namespace with `eth0` (the given addresses, /24 and /64) bridged
    /// to the hub, and its own cgroup under the parent.
    pub fn add_workload(
        &mut self,
        name: &str,
        ipv4: Ipv4Addr,
        ipv6: Ipv6Addr,
    ) -> io::Result<Workload> {
        check_test_address(ipv4, ipv6)?;
        let index = self.workloads.len();
        let cgroup = CgroupDir::create(self.parent.path(), name)?;
        let ns = NetNs::create(&format!("{}-{name}", self.prefix))?;
        let port = format!("v{index}");
        ip(&[
            "link",
            "add",
            "eth0",
            "netns",
            ns.name(),
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            self.hub.name(),
        ])?;
        ip(&[
            "-n",
            self.hub.name(),
            "link",
            "set",
            &port,
            "master",
            "br0",
            "up",
        ])?;
        ip(&[
            "-n",
            ns.name(),
            "addr",
            "add",
            &format!("{ipv4}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&[
            "-n",
            ns.name(),
            "-6",
            "addr",
            "add",
            &format!("{ipv6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ip(&["-n", ns.name(), "link", "set", "eth0", "up"])?;
        let workload = Workload {
            name: name.to_owned(),
            cgroup_path: cgroup.path().to_path_buf(),
            cgroup_id: cgroup.id()?,
            netns_path: ns.path(),
            ipv4,
            ipv6,
            helper: self.helper.clone(),
        };
        self.workloads.push((cgroup, ns));
        Ok(workload)
    }

    /// One connection attempt from `from` to `to_ip:port` (1 s timeout).
    pub fn probe(&self, from: &Workload, to_ip: IpAddr, port: u16, proto: Proto) -> ProbeResult {
        probe_once(from, to_ip, port, proto, Duration::from_secs(1))
    }

    /// [`Self::probe`] with an explicit timeout.
    pub fn probe_with_timeout(
        &self,
        from: &Workload,
        to_ip: IpAddr,
        port: u16,
        proto: Proto,
        timeout: Duration,
    ) -> ProbeResult {
        probe_once(from, to_ip, port, proto, timeout)
    }
}
