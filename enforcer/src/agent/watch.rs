//! Watches the policy directory (or file) and the inventory file, and signals "inputs changed"
//! after a short quiet period, so an editor's burst of writes becomes one reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Quiet period after the last file event before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// Keeps the underlying watcher alive; `notified()` resolves when an input file changed.
pub struct InputWatcher {
    _watcher: notify::RecommendedWatcher,
    rx: mpsc::UnboundedReceiver<()>,
}

impl InputWatcher {
    /// Watches each path; a file is watched through its directory so that editors that replace
    /// the file (write a temporary, rename it over) are seen too.
    pub fn new(paths: &[&Path]) -> notify::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let targets: Vec<PathBuf> = paths.iter().map(|p| absolute(p)).collect();
        let filter = targets.clone();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if let Ok(event) = res {
                    let relevant =
                        event.kind.is_create() || event.kind.is_modify() || event.kind.is_remove();
                    if relevant && event.paths.iter().any(|p| concerns(&filter, p)) {
                        let _ = tx.send(());
                    }
                }
            })?;
        for target in &targets {
            let (dir, mode) = if target.is_dir() {
                (target.clone(), RecursiveMode::Recursive)
            } else {
                let parent = target
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from("."));
                (parent, RecursiveMode::NonRecursive)
            };
            watcher.watch(&dir, mode)?;
        }
        Ok(Self {
            _watcher: watcher,
            rx,
        })
    }

    /// Resolves when a file event concerning the inputs arrives. Cancel-safe (it only receives
    /// from a channel), so it can sit in a `select!` next to busier branches; the caller waits
    /// for [`DEBOUNCE`] of quiet before reloading.
    pub async fn notified(&mut self) {
        if self.rx.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Whether an event on `path` concerns one of the targets (the target itself or, for a
/// directory target, anything below it).
fn concerns(targets: &[PathBuf], path: &Path) -> bool {
    targets.iter().any(|t| path.starts_with(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sees_a_rewritten_file_and_ignores_its_neighbours() {
        let dir = std::env::temp_dir().join(format!("bulkhead-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let watched = dir.join("inventory.yaml");
        std::fs::write(&watched, "a").unwrap();
        let mut watcher = InputWatcher::new(&[&watched]).unwrap();

        std::fs::write(dir.join("unrelated.txt"), "x").unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(400), watcher.notified()).await;
        assert!(
            quiet.is_err(),
            "a neighbour's change must not trigger a reload"
        );

        let tmp = dir.join(".inventory.yaml.tmp");
        std::fs::write(&tmp, "b").unwrap();
        std::fs::rename(&tmp, &watched).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watcher.notified())
            .await
            .expect("a rename over the watched file triggers a reload");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// What the agent's start relies on (it creates its watcher before it reads the inputs): a
    /// change made before anyone waits is reported at the first wait, not dropped.
    #[tokio::test]
    async fn a_change_before_the_first_wait_is_reported_then() {
        let dir = std::env::temp_dir().join(format!("bulkhead-watch-early-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let watched = dir.join("policy.yaml");
        std::fs::write(&watched, "a").unwrap();
        let mut watcher = InputWatcher::new(&[&dir]).unwrap();

        std::fs::write(&watched, "b").unwrap();
        // Starting up (install, compile, apply) takes a while before anyone waits.
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::time::timeout(Duration::from_secs(1), watcher.notified())
            .await
            .expect("the change made before the wait is reported");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
