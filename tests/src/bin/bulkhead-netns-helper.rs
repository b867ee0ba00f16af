//! Runs one network role inside a workload: joins the workload's cgroup (writes its pid to
//! `cgroup.procs`) and network namespace first, while still single-threaded (pitfall 7), so
//! every socket it creates belongs to the workload. Then:
//!
//! - `serve tcp|udp PORT...`: echo servers on `[::]` (dual stack); prints `ready` when bound.
//! - `probe tcp|udp|udp-connected|icmp ADDR PORT TIMEOUT_MS`: one attempt; prints `connected`,
//!   `denied` (EPERM from connect/sendmsg or an egress drop), `refused` or `timeout`. `icmp` sends
//!   one echo request from a ping socket (the port is ignored) and waits for the reply.
//! - `session tcp ADDR PORT TIMEOUT_MS`: connects (prints the probe word), then for each line
//!   on stdin sends it and prints `ok` when echoed back or `timeout`/`error`.
//! - `reuse tcp ADDR PORT SRC_PORT COUNT TIMEOUT_MS`: `COUNT` probes one after the other, all from
//!   source port `SRC_PORT`; prints their words on one line.
//!
//! Usage: `bulkhead-netns-helper CGROUP_DIR NETNS_PATH MODE ARGS...`

use std::{
    fs,
    io::{self, BufRead as _, Read as _, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    process::ExitCode,
    thread,
    time::Duration,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulkhead-netns-helper {args:?}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> io::Result<()> {
    let [cgroup, netns, mode, rest @ ..] = args else {
        return Err(io::Error::other(
            "usage: CGROUP_DIR NETNS_PATH MODE ARGS...",
        ));
    };
    fs::write(Path::new(cgroup).join("cgroup.procs"), "0")?;
    let ns = fs::File::open(netns)?;
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&ns),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )?;
    match (mode.as_str(), rest) {
        ("serve", [proto, ports @ ..]) => serve(proto, ports),
        ("probe", [proto, addr, port, timeout]) => {
            println!("{}", probe(proto, target(addr, port)?, millis(timeout)?));
            Ok(())
        }
        ("session", [_tcp, addr, port, timeout]) => {
            session(target(addr, port)?, millis(timeout)?, false)
        }
        ("session", [_tcp, addr, port, timeout, idle]) if idle == "idle" => {
            session(target(addr, port)?, millis(timeout)?, true)
        }
        ("reuse", [_tcp, addr, port, src_port, count, timeout]) => reuse(
            target(addr, port)?,
            src_port.parse().map_err(io::Error::other)?,
            count.parse().map_err(io::Error::other)?,
            millis(timeout)?,
        ),
        _ => Err(io::Error::other(format!("unknown mode {mode} {rest:?}"))),
    }
}

fn target(addr: &str, port: &str) -> io::Result<SocketAddr> {
    let ip: IpAddr = addr.parse().map_err(io::Error::other)?;
    let port: u16 = port.parse().map_err(io::Error::other)?;
    Ok(SocketAddr::new(ip, port))
}

fn millis(s: &str) -> io::Result<Duration> {
    Ok(Duration::from_millis(s.parse().map_err(io::Error::other)?))
}

fn serve(proto: &str, ports: &[String]) -> io::Result<()> {
    let mut handles = Vec::new();
    for port in ports {
        let port: u16 = port.parse().map_err(io::Error::other)?;
        let addr = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
        match proto {
            "tcp" => {
                let listener = TcpListener::bind(addr)?;
                handles.push(thread::spawn(move || {
                    for stream in listener.incoming().flatten() {
                        thread::spawn(move || echo_tcp(stream));
                    }
                }));
            }
            "udp" => {
                let socket = UdpSocket::bind(addr)?;
                handles.push(thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    while let Ok((n, from)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(&buf[..n], from);
                    }
                }));
            }
            other => return Err(io::Error::other(format!("unknown protocol {other}"))),
        }
    }
    println!("ready");
    io::stdout().flush()?;
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn echo_tcp(mut stream: TcpStream) {
    let mut buf = [0u8; 2048];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

fn classify(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(1) => "denied", // EPERM
        _ => match e.kind() {
            io::ErrorKind::ConnectionRefused => "refused",
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timeout",
            _ => "error",
        },
    }
}

fn probe(proto: &str, to: SocketAddr, timeout: Duration) -> &'static str {
    match proto {
        "tcp" => match TcpStream::connect_timeout(&to, timeout) {
            Ok(mut s) => exchange(&mut s, timeout),
            Err(e) => classify(&e),
        },
        "udp" | "udp-connected" => {
            let local = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let socket = match UdpSocket::bind(local) {
                Ok(s) => s,
                Err(e) => return classify(&e),
            };
            let _ = socket.set_read_timeout(Some(timeout));
            let sent = if proto == "udp" {
                socket.send_to(b"ping", to)
            } else {
                socket.connect(to).and_then(|()| socket.send(b"ping"))
            };
            if let Err(e) = sent {
                return classify(&e);
            }
            let mut buf = [0u8; 16];
            match socket.recv_from(&mut buf) {
                Ok((4, _)) if &buf[..4] == b"ping" => "connected",
                Ok(_) => "error",
                Err(e) => classify(&e),
            }
        }
        "icmp" => ping(to.ip(), timeout),
        _ => "error",
    }
}

/// One ICMP echo over a ping socket (`SOCK_DGRAM`, `IPPROTO_ICMP[V6]`): the kernel fills in the
/// identifier and checksum. Ping sockets are enabled for root in this namespace first.
fn ping(to: IpAddr, timeout: Duration) -> &'static str {
    use rustix::net::{
        AddressFamily, RecvFlags, SendFlags, SocketType, ipproto, recv, sendto, socket, sockopt,
    };
    let _ = fs::write("/proc/sys/net/ipv4/ping_group_range", "0 0");
    let (family, protocol, request, reply) = if to.is_ipv4() {
        (AddressFamily::INET, ipproto::ICMP, 8u8, 0u8)
    } else {
        (AddressFamily::INET6, ipproto::ICMPV6, 128u8, 129u8)
    };
    let fd = match socket(family, SocketType::DGRAM, Some(protocol)) {
        Ok(fd) => fd,
        Err(e) => return classify(&e.into()),
    };
    if let Err(e) = sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, Some(timeout)) {
        return classify(&e.into());
    }
    let echo = [request, 0, 0, 0, 0, 0, 0, 1, b'p', b'i', b'n', b'g'];
    if let Err(e) = sendto(&fd, &echo, SendFlags::empty(), &SocketAddr::new(to, 0)) {
        return classify(&e.into());
    }
    let mut buf = [0u8; 64];
    match recv(&fd, &mut buf, RecvFlags::empty()) {
        Ok((n, _)) if n >= 8 && buf[0] == reply => "connected",
        Ok(_) => "error",
        Err(e) => classify(&e.into()),
    }
}

/// Sends a line and waits for its echo.
fn exchange(s: &mut TcpStream, timeout: Duration) -> &'static str {
    let _ = s.set_read_timeout(Some(timeout));
    if let Err(e) = s.write_all(b"ping") {
        return classify(&e);
    }
    let mut buf = [0u8; 4];
    match s.read_exact(&mut buf) {
        Ok(()) if &buf == b"ping" => "connected",
        Ok(()) => "error",
        Err(e) => classify(&e),
    }
}

fn session(to: SocketAddr, timeout: Duration, idle: bool) -> io::Result<()> {
    let mut stream = match TcpStream::connect_timeout(&to, timeout) {
        Ok(s) => s,
        Err(e) => {
            println!("{}", classify(&e));
            return Ok(());
        }
    };
    // `idle`: the handshake only, no data until the first line on stdin.
    let first = if idle {
        "connected"
    } else {
        exchange(&mut stream, timeout)
    };
    println!("{first}");
    io::stdout().flush()?;
    for line in io::stdin().lock().lines() {
        let _ = line?;
        let word = match exchange(&mut stream, timeout) {
            "connected" => "ok",
            other => other,
        };
        println!("{word}");
        io::stdout().flush()?;
    }
    Ok(())
}

/// `reuse tcp ADDR PORT SRC_PORT COUNT TIMEOUT_MS`: `COUNT` connections one after the other, all
/// from the same source port (`SO_REUSEADDR`, bound before `connect`), each closed with
/// `SO_LINGER 0` (a RST, so no TIME_WAIT blocks the next one). Prints one probe word per
/// attempt on one line.
fn reuse(to: SocketAddr, src_port: u16, count: u32, timeout: Duration) -> io::Result<()> {
    use rustix::net::{AddressFamily, SocketType, bind, connect, ipproto, socket, sockopt};
    let (family, local) = if to.is_ipv4() {
        (
            AddressFamily::INET,
            SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), src_port),
        )
    } else {
        (
            AddressFamily::INET6,
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), src_port),
        )
    };
    let mut words = Vec::new();
    for _ in 0..count {
        let fd = socket(family, SocketType::STREAM, Some(ipproto::TCP))?;
        sockopt::set_socket_reuseaddr(&fd, true)?;
        // Bounds the blocking connect (SO_SNDTIMEO applies to it).
        sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(timeout))?;
        bind(&fd, &local)?;
        let word = match connect(&fd, &to) {
            Ok(()) => {
                let mut stream = TcpStream::from(fd);
                let word = exchange(&mut stream, timeout);
                sockopt::set_socket_linger(&stream, Some(Duration::ZERO))?;
                word
            }
            Err(e) => classify(&e.into()),
        };
        words.push(word);
    }
    println!("{}", words.join(" "));
    Ok(())
}
