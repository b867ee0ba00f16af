//! The flow verdict log: one JSON object per line, one record per kernel verdict, plus a record
//! for every batch of verdicts the kernel could not hand over (ring buffer full), so that nothing
//! is lost silently. One writer owns the file; it only appends.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
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

/// A record of verdicts that the kernel made but could not hand over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LossRecord {
    pub time: String,
    /// Always `lost`.
    pub event: &'static str,
    /// Verdict events dropped since the previous loss record.
    pub count: u64,
}

/// Appends records to the log file.
pub struct VerdictLog {
    path: PathBuf,
    out: BufWriter<File>,
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
            out: BufWriter::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write_verdict(&mut self, record: &VerdictRecord) -> io::Result<()> {
        self.write_line(record)
    }

    pub fn write_loss(&mut self, record: &LossRecord) -> io::Result<()> {
        self.write_line(record)
    }

    fn write_line(&mut self, value: &impl Serialize) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        self.out.write_all(b"\n")
    }

    /// Hands everything written so far to the kernel (called after each batch of events).
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Flushes and syncs the file to disk (shutdown).
    pub fn sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_all()
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
            log.write_verdict(&record()).unwrap();
            log.sync().unwrap();
        }
        {
            let mut log = VerdictLog::open(&path).unwrap();
            log.write_loss(&LossRecord {
                time: "2026-11-27T10:00:01Z".into(),
                event: "lost",
                count: 3,
            })
            .unwrap();
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
}
