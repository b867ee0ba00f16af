//! The processes that act inside a workload during the datapath benchmark. The bench binary runs
//! itself again as `bulkhead-bench worker CGROUP_DIR NETNS_PATH MODE ARGS...`; [`main`] joins
//! the workload's cgroup (`cgroup.procs`) and network namespace first thing, while the process
//! is still single-threaded (pitfall 7), so every socket it creates belongs to the workload.
//!
//! Modes:
//! - `serve CRR_PORT BULK_PORT`: on `CRR_PORT`, for each connection read one request, write one
//!   response and close (the server closes first, so `TIME_WAIT` stays on its side); on
//!   `BULK_PORT`, read each connection to its end and answer with the byte count (u64, LE).
//!   Prints `ready` once both listen.
//! - `crr ADDR:PORT COUNT`: COUNT times connect, request, response, wait for the close; prints
//!   `ok COUNT NANOS CPU_NANOS`.
//! - `bulk ADDR:PORT MILLIS`: writes 64 KiB buffers for MILLIS, half-closes and waits for the
//!   receiver's count; prints `ok BYTES NANOS CPU_NANOS` (from the first write to the count's
//!   arrival).
//!
//! Placement: the server and the clients pin themselves to one CPU, the highest they may run on
//! (when they may run on two or more; the benchmark's own process, which reads the events between
//! runs, is not pinned). Every run of every lane then has the same placement, and the wall-clock
//! rates measure the CPU cost of the whole path, programs included. Left to the scheduler, on
//! two CPUs, whether the two tasks share one changes from run to run, and that changes the rates
//! by more than the effect being measured (the same two instructions at the hooks measured 0.95
//! to 0.98 of the baseline's throughput from one run to the next). One CPU is also the
//! conservative choice: nothing of the programs' cost hides in parallelism.
//!
//! `CPU_NANOS` is the client's CPU time during the run. The kernel runs most of the packet path
//! (veth, softirq, the BPF programs) in the context of the task that sends, and this kernel has no
//! separate IRQ time accounting, so the client's and the server's CPU time together are the
//! CPU cost of the run: a measure that another process's load changes far less than wall time.

use std::{
    fs,
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::workload::Workload;

/// The first argument that makes the bench binary a worker.
pub const WORKER_ARG: &str = "worker";
/// Size of one connection-rate request and of its response.
pub const MESSAGE_BYTES: usize = 64;
/// Size of one bulk write.
pub const BULK_WRITE_BYTES: usize = 64 * 1024;
/// How long any single socket operation may block before the run fails (a drop by the datapath
/// must fail the benchmark, not hang it).
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The worker's entry point; `args` follow [`WORKER_ARG`].
pub fn main(args: &[String]) -> io::Result<()> {
    let [cgroup, netns, mode, rest @ ..] = args else {
        return Err(io::Error::other(
            "usage: worker CGROUP_DIR NETNS_PATH MODE ARGS...",
        ));
    };
    join(Path::new(cgroup), Path::new(netns))?;
    pin()?;
    match (mode.as_str(), rest) {
        ("serve", [crr_port, bulk_port]) => serve(parse(crr_port)?, parse(bulk_port)?),
        ("crr", [to, count]) => {
            let count: u32 = parse(count)?;
            let (elapsed, cpu) = connection_rate(parse(to)?, count)?;
            println!("ok {count} {} {}", elapsed.as_nanos(), cpu.as_nanos());
            Ok(())
        }
        ("bulk", [to, millis]) => {
            let (bytes, elapsed, cpu) = bulk(parse(to)?, Duration::from_millis(parse(millis)?))?;
            println!("ok {bytes} {} {}", elapsed.as_nanos(), cpu.as_nanos());
            Ok(())
        }
        _ => Err(io::Error::other(format!(
            "unknown worker mode {mode} {rest:?}"
        ))),
    }
}

fn parse<T: std::str::FromStr>(s: &str) -> io::Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e| io::Error::other(format!("{s:?}: {e}")))
}

/// Joins the workload: its cgroup first, then its network namespace (this thread only, which is
/// the whole process at this point), then widens the ephemeral port range of that namespace so
/// that thousands of short connections never run out of ports.
fn join(cgroup: &Path, netns: &Path) -> io::Result<()> {
    fs::write(cgroup.join("cgroup.procs"), "0")?;
    let ns = fs::File::open(netns)?;
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&ns),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )?;
    fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535")
}

/// Pins this process (and the threads it starts later) to the highest CPU of its affinity mask;
/// nothing when the mask holds a single CPU.
fn pin() -> io::Result<()> {
    let allowed = rustix::thread::sched_getaffinity(None)?;
    if allowed.count() < 2 {
        return Ok(());
    }
    let Some(cpu) = (0..rustix::thread::CpuSet::MAX_CPU)
        .rev()
        .find(|&c| allowed.is_set(c))
    else {
        return Ok(());
    };
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set)?;
    Ok(())
}

fn serve(crr_port: u16, bulk_port: u16) -> io::Result<()> {
    let crr = TcpListener::bind((Ipv4Addr::UNSPECIFIED, crr_port))?;
    let bulk = TcpListener::bind((Ipv4Addr::UNSPECIFIED, bulk_port))?;
    thread::spawn(move || {
        for stream in bulk.incoming().flatten() {
            if let Err(e) = receive_bulk(stream) {
                eprintln!("bulk receiver: {e}");
            }
        }
    });
    println!("ready");
    io::stdout().flush()?;
    for stream in crr.incoming().flatten() {
        if let Err(e) = answer(stream) {
            eprintln!("connection-rate server: {e}");
        }
    }
    Ok(())
}

fn answer(mut stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut buf = [0u8; MESSAGE_BYTES];
    stream.read_exact(&mut buf)?;
    stream.write_all(&buf)
}

fn receive_bulk(mut stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0u8; 4 * BULK_WRITE_BYTES];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf)? {
            0 => break,
            n => total += n as u64,
        }
    }
    stream.write_all(&total.to_le_bytes())
}

/// This process's CPU time so far.
fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// One connection at a time, `count` times; the wall and CPU time of all of them.
fn connection_rate(to: SocketAddr, count: u32) -> io::Result<(Duration, Duration)> {
    let request = [0x42u8; MESSAGE_BYTES];
    let mut response = [0u8; MESSAGE_BYTES];
    let cpu = cpu_time();
    let start = Instant::now();
    for _ in 0..count {
        let mut s = TcpStream::connect_timeout(&to, IO_TIMEOUT)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.write_all(&request)?;
        s.read_exact(&mut response)?;
        // The server closes: the transaction is over when its FIN arrives.
        if s.read(&mut response)? != 0 {
            return Err(io::Error::other("server sent more than one response"));
        }
    }
    Ok((start.elapsed(), cpu_time() - cpu))
}

/// Writes for `duration`, then waits for the receiver's count.
fn bulk(to: SocketAddr, duration: Duration) -> io::Result<(u64, Duration, Duration)> {
    let buf = vec![0x5au8; BULK_WRITE_BYTES];
    let mut s = TcpStream::connect_timeout(&to, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut sent = 0u64;
    let cpu = cpu_time();
    let start = Instant::now();
    while start.elapsed() < duration {
        s.write_all(&buf)?;
        sent += buf.len() as u64;
    }
    s.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count)?;
    let elapsed = start.elapsed();
    let cpu = cpu_time() - cpu;
    let received = u64::from_le_bytes(count);
    if received != sent {
        return Err(io::Error::other(format!(
            "sent {sent} bytes, the receiver counted {received}"
        )));
    }
    Ok((received, elapsed, cpu))
}

fn worker_command(w: &Workload, mode: &str) -> io::Result<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg(WORKER_ARG)
        .arg(&w.cgroup_path)
        .arg(&w.netns_path)
        .arg(mode)
        .stdin(Stdio::null());
    Ok(cmd)
}

/// A worker server process; killed on drop.
pub struct ServerProcess(Child);

impl ServerProcess {
    /// Starts the server in `w` and waits until it listens.
    pub fn start(w: &Workload, crr_port: u16, bulk_port: u16) -> io::Result<Self> {
        let mut cmd = worker_command(w, "serve")?;
        cmd.args([crr_port.to_string(), bulk_port.to_string()])
            .stdout(Stdio::piped());
        let mut server = Self(cmd.spawn()?);
        let stdout = server
            .0
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() == "ready" {
            Ok(server)
        } else {
            Err(io::Error::other(format!(
                "server in {} did not start",
                w.name
            )))
        }
    }

    /// CPU time of all the server's threads so far: the sum of the first field of each
    /// `/proc/PID/task/TID/schedstat` (nanoseconds on a CPU).
    fn cpu_time(&self) -> io::Result<Duration> {
        let mut ns = 0u64;
        for task in fs::read_dir(format!("/proc/{}/task", self.0.id()))? {
            let stat = fs::read_to_string(task?.path().join("schedstat"))?;
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(Duration::from_nanos(ns))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One client run: units of work done (connections, bytes), wall time, and the CPU time of the
/// client and the server together.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub units: u64,
    pub elapsed: Duration,
    pub cpu: Duration,
}

impl Run {
    /// Units per second of wall time.
    pub fn rate(&self) -> f64 {
        self.units as f64 / self.elapsed.as_secs_f64()
    }

    /// Units per second of CPU time.
    pub fn per_cpu_second(&self) -> f64 {
        self.units as f64 / self.cpu.as_secs_f64()
    }
}

/// Runs a client mode in `w` against `server` and parses its `ok UNITS NANOS CPU_NANOS` line.
fn run_client(
    w: &Workload,
    server: &ServerProcess,
    mode: &str,
    args: [String; 2],
) -> io::Result<Run> {
    let server_before = server.cpu_time()?;
    let out = worker_command(w, mode)?.args(args).output()?;
    let server_cpu = server.cpu_time()?.saturating_sub(server_before);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = stdout.split_whitespace().collect();
    match (out.status.success(), words.as_slice()) {
        (true, ["ok", units, nanos, cpu]) => Ok(Run {
            units: parse(units)?,
            elapsed: Duration::from_nanos(parse(nanos)?),
            cpu: Duration::from_nanos(parse(cpu)?) + server_cpu,
        }),
        _ => Err(io::Error::other(format!(
            "{mode} client in {} failed: {} {}",
            w.name,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// `count` connection-rate transactions from `w` to `to` (served by `server`).
pub fn connection_rate_from(
    w: &Workload,
    server: &ServerProcess,
    to: SocketAddr,
    count: u32,
) -> io::Result<Run> {
    run_client(w, server, "crr", [to.to_string(), count.to_string()])
}

/// One bulk stream from `w` to `to` (received by `server`) for `duration`; the units are the
/// bytes the receiver counted, the wall time runs from the first write to that count's arrival.
pub fn bulk_from(
    w: &Workload,
    server: &ServerProcess,
    to: SocketAddr,
    duration: Duration,
) -> io::Result<Run> {
    run_client(
        w,
        server,
        "bulk",
        [to.to_string(), duration.as_millis().to_string()],
    )
}
