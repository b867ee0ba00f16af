//! The flow verdict log: one JSON object per line, one record per kernel verdict, plus a record
//! for every batch of verdicts the kernel could not hand over (ring buffer full) and for every
//! run of records the agent could not write (the file system refused them), so that nothing is
//! lost silently. One writer owns the file; it only appends, a batch at a time, and a batch that
//! cannot be written leaves no partial line behind.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Default location of the log.
pub const DEFAULT_PATH: &str = "/var/log/bulkhead/verdicts.jsonl";

/// One endpoint of a flow, as the log shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogEndpoint {
    pub ip: IpAddr,
    pub port: u16,
    /// `namespace/name` of the inventory workload with this address (or, for the local side,
    /// this cgroup), or null.
    pub workload: Option<String>,
    pub identity: u32,
}

/// The policy that decided, or null when a default decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogPolicy {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

/// One verdict record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerdictRecord {
    /// RFC 3339, nanoseconds, UTC.
    pub time: String,
    /// `allow`, `deny` or `audit` (allowed, but an audit-mode policy would have denied).
    pub verdict: &'static str,
    /// `ingress` or `egress`, seen from the local workload.
    pub direction: &'static str,
    /// The enforcement point: `connect`, `sendmsg`, `skb-egress`, `skb-ingress`.
    pub hook: &'static str,
    /// `TCP`, `UDP`, `SCTP` or the IP protocol number.
    pub protocol: String,
    pub src: LogEndpoint,
    pub dst: LogEndpoint,
    pub policy: Option<LogPolicy>,
    /// Index of the deciding rule in its policy's ingress or egress list, or null (the policy's
    /// isolation, or a default, decided).
    pub rule: Option<u32>,
    /// The rule's name, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_name: Option<String>,
    /// `allowed-by-rule`, `denied-by-rule`, `default-deny`, `not-isolated`.
    pub reason: &'static str,
    /// The policy revision the kernel decided with.
    pub revision: u64,
    pub cgroup_id: u64,
    pub socket_cookie: u64,
}

/// A record of verdicts missing from the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LossRecord {
    pub time: String,
    /// `lost`: verdict events the kernel could not hand over (ring buffer full) since the previous
    /// such record. `unwritten`: records the agent had but could not write to this file (an I/O
    /// error, e.g. a full disk) since the previous such record.
    pub event: &'static str,
    pub count: u64,
}

/// A batch the file system refused: none of its records is in the file.
#[derive(Debug, thiserror::Error)]
#[error("writing {records} records to the verdict log")]
pub struct Unwritten {
    pub records: u64,
    #[source]
    pub source: io::Error,
}

/// Appends records to the log file, a batch at a time.
pub struct VerdictLog {
    path: PathBuf,
    out: File,
    /// The batch being built: whole lines.
    pending: Vec<u8>,
    /// Verdict records in `pending` (loss records are not counted).
    pending_records: u64,
}

impl VerdictLog {
    /// Opens (creating it and its directory if needed) the log for appending.
    pub fn open(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            path: path.to_owned(),
            out: file,
            pending: Vec::new(),
            pending_records: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds a verdict record to the batch.
    pub fn write_verdict(&mut self, record: &VerdictRecord) {
        self.push_line(record);
        self.pending_records += 1;
    }

    /// Adds a loss record to the batch.
    pub fn write_loss(&mut self, record: &LossRecord) {
        self.push_line(record);
    }

    fn push_line(&mut self, value: &impl Serialize) {
        // Serializing these plain structs into memory cannot fail.
        serde_json::to_writer(&mut self.pending, value).expect("a log record serializes");
        self.pending.push(b'\n');
    }

    /// Appends the batch to the file (called after each batch of events). On failure the file
    /// is cut back to its length before, so it holds no part of the batch, and the error says
    /// how many verdict records the batch had; the batch is dropped either way.
    pub fn flush(&mut self) -> Result<(), Unwritten> {
        let records = std::mem::take(&mut self.pending_records);
        let batch = std::mem::take(&mut self.pending);
        if batch.is_empty() {
            return Ok(());
        }
        let before = self.out.metadata().map(|m| m.len());
        let written = self.out.write_all(&batch);
        if let Err(source) = written {
            if let Ok(len) = before
                && let Err(error) = self.out.set_len(len)
            {
                tracing::error!(%error, path = %self.path.display(),
                    "could not remove a partly written batch from the verdict log");
            }
            return Err(Unwritten { records, source });
        }
        Ok(())
    }

    /// Replaces the file handle, returning the old one (tests: a handle that refuses writes).
    #[cfg(test)]
    pub(crate) fn swap_file_for_tests(&mut self, file: File) -> File {
        std::mem::replace(&mut self.out, file)
    }

    /// Syncs the file to disk (shutdown).
    pub fn sync(&mut self) -> io::Result<()> {
        self.out.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> VerdictRecord {
        VerdictRecord {
            time: "2026-11-27T10:00:00.000000001Z".into(),
            verdict: "deny",
            direction: "ingress",
            hook: "skb-ingress",
            protocol: "TCP".into(),
            src: LogEndpoint {
                ip: "10.200.1.1".parse().unwrap(),
                port: 40000,
                workload: Some("x/a".into()),
                identity: 256,
            },
            dst: LogEndpoint {
                ip: "10.200.1.2".parse().unwrap(),
                port: 80,
                workload: Some("x/b".into()),
                identity: 257,
            },
            policy: Some(LogPolicy {
                kind: "NetworkPolicy".into(),
                namespace: Some("x".into()),
                name: "deny-all".into(),
            }),
            rule: None,
            rule_name: None,
            reason: "default-deny",
            revision: 3,
            cgroup_id: 42,
            socket_cookie: 7,
        }
    }

    #[test]
    fn appends_one_json_object_per_line() {
        let dir = std::env::temp_dir().join(format!("bulkhead-log-{}", std::process::id()));
        let path = dir.join("v.jsonl");
        let _ = std::fs::remove_dir_all(&dir);
        {
            let mut log = VerdictLog::open(&path).unwrap();
            log.write_verdict(&record());
            log.flush().unwrap();
            log.sync().unwrap();
        }
        {
            let mut log = VerdictLog::open(&path).unwrap();
            log.write_loss(&LossRecord {
                time: "2026-11-27T10:00:01Z".into(),
                event: "lost",
                count: 3,
            });
            log.flush().unwrap();
            log.sync().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "reopening appends: {text}");
        assert_eq!(lines[0]["verdict"], "deny");
        assert_eq!(lines[0]["src"]["workload"], "x/a");
        assert_eq!(lines[0]["dst"]["port"], 80);
        assert_eq!(lines[0]["policy"]["name"], "deny-all");
        assert_eq!(lines[0]["rule"], serde_json::Value::Null);
        assert_eq!(lines[1]["event"], "lost");
        assert_eq!(lines[1]["count"], 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is one JSON object"))
            .collect()
    }

    #[test]
    fn a_refused_batch_leaves_the_file_as_it_was_and_says_how_many_records_it_had() {
        let dir = std::env::temp_dir().join(format!("bulkhead-log-refused-{}", std::process::id()));
        let path = dir.join("v.jsonl");
        let _ = std::fs::remove_dir_all(&dir);
        let mut log = VerdictLog::open(&path).unwrap();
        log.write_verdict(&record());
        log.flush().unwrap();
        // A handle that cannot write stands in for a file system that refuses the batch.
        let writable = log.swap_file_for_tests(File::open(&path).unwrap());
        log.write_verdict(&record());
        log.write_verdict(&record());
        let refused = log.flush().expect_err("the batch is refused");
        assert_eq!(refused.records, 2);
        assert_eq!(lines(&path).len(), 1);
        // The refused batch is gone; the next one is written whole.
        log.swap_file_for_tests(writable);
        log.write_verdict(&record());
        log.flush().unwrap();
        assert_eq!(lines(&path).len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A real full file system (a 16 KiB tmpfs; needs root, skipped otherwise): the batch that
    /// does not fit is refused without leaving a partial line.
    #[test]
    fn a_full_disk_leaves_no_partial_line() {
        let dir = std::env::temp_dir().join(format!("bulkhead-log-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs (not root?)");
            let _ = std::fs::remove_dir(&dir);
            return;
        }
        let path = dir.join("v.jsonl");
        let mut log = VerdictLog::open(&path).unwrap();
        let mut written = 0u64;
        let refused = loop {
            for _ in 0..7 {
                log.write_verdict(&record());
            }
            match log.flush() {
                Ok(()) => written += 7,
                Err(refused) => break refused,
            }
            assert!(written < 10_000, "16 KiB never filled up");
        };
        drop(log);
        let kept = std::panic::catch_unwind(|| lines(&path).len() as u64);
        let _ = std::process::Command::new("umount").arg(&dir).status();
        let _ = std::fs::remove_dir(&dir);
        assert_eq!(refused.records, 7);
        let kept = kept.expect("no partial line");
        assert_eq!(
            kept, written,
            "every written batch whole, nothing of the refused one"
        );
        assert!(written > 0);
    }
}
