//! The agent's state directory: the identity allocation table (so a restart keeps every number)
//! and the rule table (so events decided by a predecessor are attributed). Files are replaced
//! atomically (write a temporary, then rename).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use bulkhead_policy::{AllocationTable, RuleRef};
use serde::{Serialize, de::DeserializeOwned};

/// Default state directory.
pub const DEFAULT_DIR: &str = "/var/lib/bulkhead";

const IDENTITIES: &str = "identities.json";
const RULES: &str = "rules.json";
const LOSSES: &str = "losses.json";

pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub fn load_table(&self) -> io::Result<AllocationTable> {
        Ok(self.load(IDENTITIES)?.unwrap_or_default())
    }

    pub fn save_table(&self, table: &AllocationTable) -> io::Result<()> {
        self.save(IDENTITIES, table)
    }

    pub fn load_rules(&self) -> io::Result<HashMap<u32, RuleRef>> {
        Ok(self.load(RULES)?.unwrap_or_default())
    }

    pub fn save_rules(&self, rules: &HashMap<u32, RuleRef>) -> io::Result<()> {
        self.save(RULES, rules)
    }

    /// Verdict events already reported as lost (the kernel counter counts since install).
    pub fn load_losses_logged(&self) -> io::Result<u64> {
        Ok(self.load(LOSSES)?.unwrap_or(0))
    }

    pub fn save_losses_logged(&self, count: u64) -> io::Result<()> {
        self.save(LOSSES, &count)
    }

    fn load<T: DeserializeOwned>(&self, name: &str) -> io::Result<Option<T>> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn save<T: Serialize>(&self, name: &str, value: &T) -> io::Result<()> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)?;
        std::fs::rename(&tmp, &path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_starts_empty() {
        let dir = std::env::temp_dir().join(format!("bulkhead-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state = StateDir::open(&dir).unwrap();
        assert_eq!(state.load_table().unwrap(), AllocationTable::default());
        assert!(state.load_rules().unwrap().is_empty());
        assert_eq!(state.load_losses_logged().unwrap(), 0);
        state.save_losses_logged(17).unwrap();
        assert_eq!(state.load_losses_logged().unwrap(), 17);
        let table = AllocationTable::default();
        state.save_table(&table).unwrap();
        assert_eq!(state.load_table().unwrap(), table);
        std::fs::write(dir.join(IDENTITIES), "not json").unwrap();
        let err = state.load_table().unwrap_err();
        assert!(err.to_string().contains("identities.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
