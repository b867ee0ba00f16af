//! A storm of signals aimed at one thread, for tests of code that must not be interrupted by
//! them (the verifier gives up with `EAGAIN` when a signal arrives while it checks a program).
//!
//! The signal is `SIGUSR1`, with a handler that only counts: a test process keeps that handler
//! for the rest of its life, and no other code of the tests uses `SIGUSR1`.

use std::{
    io,
    sync::{
        Arc, Once,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

/// How many `SIGUSR1` this process's handler has run for.
static HANDLED: AtomicU64 = AtomicU64::new(0);

extern "C" fn count(_signal: libc::c_int) {
    HANDLED.fetch_add(1, Relaxed);
}

/// Sends `SIGUSR1` to the thread that started it, every `interval`, until stopped.
pub struct SignalStorm {
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<io::Result<u64>>>,
}

/// What a storm did: signals sent, and handler runs in this process while it lasted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StormReport {
    pub sent: u64,
    pub handled: u64,
}

impl SignalStorm {
    /// Starts sending to the calling thread.
    pub fn at_this_thread(interval: Duration) -> io::Result<Self> {
        install_handler()?;
        let pid = std::process::id() as libc::pid_t;
        let tid = this_thread_id();
        HANDLED.store(0, Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let sender = thread::Builder::new()
            .name("signal-storm".into())
            .spawn(move || {
                let mut sent = 0;
                while !flag.load(Relaxed) {
                    send(pid, tid)?;
                    sent += 1;
                    thread::sleep(interval);
                }
                Ok(sent)
            })?;
        Ok(Self {
            stop,
            sender: Some(sender),
        })
    }

    /// Stops sending; returns what was sent and handled.
    pub fn stop(mut self) -> io::Result<StormReport> {
        self.stop.store(true, Relaxed);
        let sent = self
            .sender
            .take()
            .expect("joined once")
            .join()
            .map_err(|_| io::Error::other("the signal sender panicked"))??;
        Ok(StormReport {
            sent,
            handled: HANDLED.load(Relaxed),
        })
    }
}

impl Drop for SignalStorm {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(sender) = self.sender.take() {
            let _ = sender.join();
        }
    }
}

#[expect(unsafe_code, reason = "sigaction has no safe wrapper in std or libc")]
fn install_handler() -> io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        // SAFETY: `action` is zero-initialised and then filled as sigaction(2) describes; the
        // handler only does an atomic add, which is async-signal-safe. SA_RESTART restarts the
        // system calls it interrupts, so the storm disturbs nothing but what it tests.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = count as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()) != 0 {
                result = Err(io::Error::last_os_error());
            }
        }
    });
    result
}

#[expect(
    unsafe_code,
    reason = "gettid and tgkill have no safe wrapper in std or libc"
)]
fn this_thread_id() -> libc::pid_t {
    // SAFETY: gettid(2) has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

#[expect(
    unsafe_code,
    reason = "gettid and tgkill have no safe wrapper in std or libc"
)]
fn send(pid: libc::pid_t, tid: libc::pid_t) -> io::Result<()> {
    // SAFETY: tgkill(2) only reads its three integer arguments.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGUSR1) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
