//! Workloads of a [`crate::netns::TestNet`] and the child processes that act for them: echo
//! servers, one-shot probes and long-lived TCP sessions. Each child is the
//! `bulkhead-netns-helper` binary, which joins the workload's cgroup and namespace before it
//! creates a socket (pitfall 7), so the kernel attributes all its traffic to the workload.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

/// Transport protocol of a server or probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    /// Unconnected UDP (`sendto`: the sendmsg hooks).
    Udp,
    /// Connected UDP (`connect` then `send`: the connect hooks).
    UdpConnected,
    /// ICMP echo from a ping socket (a port-less protocol: policy keys use `PROTO_OTHER`).
    Icmp,
}

impl Proto {
    fn arg(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::UdpConnected => "udp-connected",
            Self::Icmp => "icmp",
        }
    }
}

/// Outcome of one connection attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    /// Data went there and back.
    Connected,
    /// EPERM from connect/sendmsg: denied at egress.
    Denied,
    /// No listener (TCP RST).
    Refused,
    /// Nothing came back in time: dropped (ingress deny or egress packet drop).
    Timeout,
    /// Anything else, with the helper's words.
    Error(String),
}

impl ProbeResult {
    fn parse(word: &str) -> Self {
        match word.trim() {
            "connected" | "ok" => Self::Connected,
            "denied" => Self::Denied,
            "refused" => Self::Refused,
            "timeout" => Self::Timeout,
            other => Self::Error(other.to_owned()),
        }
    }
}

/// The helper binary: `$BULKHEAD_NETNS_HELPER`, else next to the test executable's directory
/// (`target/<profile>/bulkhead-netns-helper` for `target/<profile>/deps/<test>`).
pub fn helper_path() -> io::Result<PathBuf> {
    if let Some(p) = std::env::var_os("BULKHEAD_NETNS_HELPER") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let candidates = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("bulkhead-netns-helper"));
    for candidate in candidates {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    Err(io::Error::other(format!(
        "bulkhead-netns-helper not found near {}; build it (cargo test builds it) or set BULKHEAD_NETNS_HELPER",
        exe.display()
    )))
}

/// A workload: its cgroup, namespace and addresses.
#[derive(Clone, Debug)]
pub struct Workload {
    pub name: String,
    pub cgroup_path: PathBuf,
    pub cgroup_id: u64,
    pub netns_path: PathBuf,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub(crate) helper: PathBuf,
}

impl Workload {
    fn command(&self, mode: &str) -> Command {
        let mut cmd = Command::new(&self.helper);
        cmd.arg(&self.cgroup_path).arg(&self.netns_path).arg(mode);
        cmd
    }

    /// Echo servers on every port of `ports` (dual stack), running until the guard drops.
    pub fn serve(&self, ports: &[u16], proto: Proto) -> io::Result<Server> {
        let proto = match proto {
            Proto::Tcp => "tcp",
            Proto::Udp | Proto::UdpConnected => "udp",
            Proto::Icmp => {
                return Err(io::Error::other(
                    "the kernel answers pings: nothing to serve",
                ));
            }
        };
        let mut cmd = self.command("serve");
        cmd.arg(proto).args(ports.iter().map(u16::to_string));
        let mut child = cmd.stdout(Stdio::piped()).stdin(Stdio::null()).spawn()?;
        let mut line = String::new();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        BufReader::new(stdout).read_line(&mut line)?;
        let server = Server { child };
        if line.trim() != "ready" {
            return Err(io::Error::other(format!(
                "server on {} did not start: {line:?}",
                self.name
            )));
        }
        Ok(server)
    }

    /// Opens a TCP connection that stays up, after one exchange (its result is returned); see
    /// [`Session::exchange`].
    pub fn open_session(
        &self,
        to: IpAddr,
        port: u16,
        timeout: Duration,
    ) -> io::Result<(Session, ProbeResult)> {
        self.session(to, port, timeout, false)
    }

    /// Opens a TCP connection that stays up, with the handshake only: no data is sent until
    /// the first [`Session::exchange`]. `Connected` means the handshake completed.
    pub fn open_idle_session(
        &self,
        to: IpAddr,
        port: u16,
        timeout: Duration,
    ) -> io::Result<(Session, ProbeResult)> {
        self.session(to, port, timeout, true)
    }

    fn session(
        &self,
        to: IpAddr,
        port: u16,
        timeout: Duration,
        idle: bool,
    ) -> io::Result<(Session, ProbeResult)> {
        let mut cmd = self.command("session");
        cmd.args([
            "tcp",
            &to.to_string(),
            &port.to_string(),
            &timeout.as_millis().to_string(),
        ]);
        if idle {
            cmd.arg("idle");
        }
        let mut child = cmd.stdout(Stdio::piped()).stdin(Stdio::piped()).spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("no stdin"))?;
        let stdout = BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| io::Error::other("no stdout"))?,
        );
        let mut session = Session {
            child,
            stdin,
            stdout,
        };
        let first = session.read_word()?;
        Ok((session, first))
    }

    /// `count` TCP connections one after the other from the same source port `src_port` (each
    /// closed with a RST, so that no TIME_WAIT blocks the next): a client that reuses its port
    /// for new attempts. One result per attempt.
    pub fn probe_reused_port(
        &self,
        to: IpAddr,
        port: u16,
        src_port: u16,
        count: u32,
        timeout: Duration,
    ) -> io::Result<Vec<ProbeResult>> {
        let mut cmd = self.command("reuse");
        cmd.args([
            "tcp",
            &to.to_string(),
            &port.to_string(),
            &src_port.to_string(),
            &count.to_string(),
            &timeout.as_millis().to_string(),
        ]);
        let out = cmd.stdin(Stdio::null()).output()?;
        if !out.status.success() {
            return Err(io::Error::other(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(ProbeResult::parse)
            .collect())
    }
}

/// One probe, in a child process in the workload.
pub fn probe_once(
    from: &Workload,
    to: IpAddr,
    port: u16,
    proto: Proto,
    timeout: Duration,
) -> ProbeResult {
    let mut cmd = from.command("probe");
    cmd.args([
        proto.arg(),
        &to.to_string(),
        &port.to_string(),
        &timeout.as_millis().to_string(),
    ]);
    match cmd.stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => {
            ProbeResult::parse(&String::from_utf8_lossy(&out.stdout))
        }
        Ok(out) => ProbeResult::Error(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        Err(e) => ProbeResult::Error(e.to_string()),
    }
}

/// A running echo server; killed on drop.
pub struct Server {
    child: Child,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A long-lived TCP connection held by a child process; killed on drop.
pub struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Session {
    fn read_word(&mut self) -> io::Result<ProbeResult> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        Ok(ProbeResult::parse(&line))
    }

    /// Sends a few bytes over the open connection and waits for the echo.
    pub fn exchange(&mut self) -> io::Result<ProbeResult> {
        writeln!(self.stdin, "x")?;
        self.stdin.flush()?;
        self.read_word()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
