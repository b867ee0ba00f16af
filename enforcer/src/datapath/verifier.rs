//! Loading a program through the verifier without being interrupted by signals.
//!
//! The verifier checks `signal_pending` as it walks a program and gives up with `EAGAIN` when a
//! signal arrived for the loading thread: any signal with a handler (a test harness's, or one of
//! a process that embeds the datapath). Our programs take the verifier tens of milliseconds, so
//! this is not rare under load. The loading thread therefore blocks every blockable signal for the duration of
//! the call (a process-directed signal goes to another thread, a thread-directed one waits),
//! and a load that still ends in `EAGAIN` (the cgroup freezer, or an unblockable stop signal,
//! interrupts it too) is tried again, a bounded number of times, as libbpf does.
use std::{io, mem, ptr};

use aya::programs::ProgramError;

/// How many times a load interrupted by the kernel is tried in all (libbpf tries 5 times).
pub const LOAD_ATTEMPTS: u32 = 5;

/// Runs `load` (one `BPF_PROG_LOAD` through aya) with the calling thread's signals blocked,
/// again while it fails with `EAGAIN`, at most [`LOAD_ATTEMPTS`] times in all.
pub fn load(load: impl FnMut() -> Result<(), ProgramError>) -> Result<(), ProgramError> {
    let _blocked = SignalsBlocked::new();
    retry_interrupted(LOAD_ATTEMPTS, interrupted, load)
}

/// Runs `f` with the calling thread's signals blocked: for aya's object load, whose one-time
/// feature probes are `BPF_PROG_LOAD`s too (a probe interrupted by a signal would read as a
/// missing kernel feature).
pub fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    let _blocked = SignalsBlocked::new();
    f()
}

/// Whether the verifier gave up on a signal (or the freezer) rather than on the program.
fn interrupted(error: &ProgramError) -> bool {
    matches!(error, ProgramError::LoadError { io_error, .. } if is_eagain(io_error))
}

fn is_eagain(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::EAGAIN)
}

/// Calls `f` until it returns anything but an error that `interrupted` accepts, at most
/// `attempts` times; returns the last result.
fn retry_interrupted<E>(
    attempts: u32,
    interrupted: impl Fn(&E) -> bool,
    mut f: impl FnMut() -> Result<(), E>,
) -> Result<(), E> {
    let mut attempt = 1;
    loop {
        match f() {
            Err(error) if interrupted(&error) && attempt < attempts => {
                tracing::debug!(attempt, "the verifier was interrupted; loading again");
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Blocks every blockable signal for the calling thread until dropped, then restores its mask.
struct SignalsBlocked {
    previous: Option<libc::sigset_t>,
}

impl SignalsBlocked {
    #[expect(
        unsafe_code,
        reason = "pthread_sigmask has no safe wrapper in std or libc"
    )]
    fn new() -> Self {
        // SAFETY: both sets are plain data owned by this frame; `sigfillset` initialises `all`
        // and `pthread_sigmask` writes `previous` before it is read (only when it returns 0).
        unsafe {
            let mut all: libc::sigset_t = mem::zeroed();
            let mut previous: libc::sigset_t = mem::zeroed();
            libc::sigfillset(&mut all);
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous);
            if rc != 0 {
                // Not fatal: the retry still covers an interrupted load.
                let error = io::Error::from_raw_os_error(rc);
                tracing::warn!(%error, "blocking signals around a program load");
                return Self { previous: None };
            }
            Self {
                previous: Some(previous),
            }
        }
    }
}

impl Drop for SignalsBlocked {
    #[expect(
        unsafe_code,
        reason = "pthread_sigmask has no safe wrapper in std or libc"
    )]
    fn drop(&mut self) {
        if let Some(previous) = self.previous.as_ref() {
            // SAFETY: `previous` is the mask `pthread_sigmask` returned in `new`.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, previous, ptr::null_mut()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// Runs `retry_interrupted(5, ..)` on a load failing with `errno` its first `failures`
    /// calls; returns the result's errno (`None`: loaded) and the number of calls.
    fn retried(errno: i32, failures: u32) -> (Option<i32>, u32) {
        let calls = Cell::new(0);
        let result = retry_interrupted(5, is_eagain, || {
            calls.set(calls.get() + 1);
            if calls.get() <= failures {
                Err(io::Error::from_raw_os_error(errno))
            } else {
                Ok(())
            }
        });
        (result.err().and_then(|e| e.raw_os_error()), calls.get())
    }

    #[test]
    fn an_interrupted_load_is_tried_again_until_it_succeeds() {
        assert_eq!(retried(libc::EAGAIN, 1), (None, 2));
        assert_eq!(retried(libc::EAGAIN, 4), (None, 5));
    }

    #[test]
    fn interruptions_stop_after_the_last_attempt_with_the_kernels_error() {
        assert_eq!(retried(libc::EAGAIN, u32::MAX), (Some(libc::EAGAIN), 5));
    }

    #[test]
    fn a_rejected_program_is_not_loaded_again() {
        assert_eq!(retried(libc::EACCES, u32::MAX), (Some(libc::EACCES), 1));
        assert_eq!(retried(libc::EACCES, 0), (None, 1));
    }

    #[test]
    fn signals_are_blocked_while_loading_and_restored_after() {
        #[expect(unsafe_code, reason = "reading the thread's signal mask")]
        fn usr1_blocked() -> bool {
            // SAFETY: with no new set, pthread_sigmask only writes the current mask to `set`.
            unsafe {
                let mut set: libc::sigset_t = mem::zeroed();
                assert_eq!(
                    libc::pthread_sigmask(libc::SIG_BLOCK, ptr::null(), &mut set),
                    0
                );
                libc::sigismember(&set, libc::SIGUSR1) == 1
            }
        }
        assert!(!usr1_blocked());
        let mut seen = None;
        load(|| {
            seen = Some(usr1_blocked());
            Ok(())
        })
        .expect("load");
        assert_eq!(seen, Some(true));
        assert!(!usr1_blocked());
    }
}
