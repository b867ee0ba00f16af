//! Says when cgroups appear or disappear under the kubelet's hierarchy (inotify through
//! `notify`): the hierarchy's tops (`kubepods.slice`, `kubepods`) are watched recursively, so a
//! new pod directory and a new container directory below it both wake the agent, which then
//! rescans the pods it holds. The root is watched on its own level so that a hierarchy created
//! after start (the kubelet starting later) is watched from then on.
//!
//! `notify` reports a new directory before it watches it, so a directory created inside a new
//! one right away can go unreported: the caller rescans once more shortly after each wake-up
//! (and periodically), which finds it.

use std::path::{Path, PathBuf};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::pods::Driver;

/// Keeps the watches alive; [`Self::notified`] resolves when a cgroup appeared or was removed.
pub struct CgroupWatcher {
    watcher: notify::RecommendedWatcher,
    root: PathBuf,
    drivers: Vec<Driver>,
    /// Tops already watched recursively.
    watched: Vec<PathBuf>,
    rx: mpsc::UnboundedReceiver<()>,
}

impl CgroupWatcher {
    /// Watches the hierarchy of `drivers` under `root`.
    pub fn new(root: &Path, drivers: Vec<Driver>) -> notify::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                // Only directories coming and going matter (a cgroup's files are modified all
                // the time, e.g. `cgroup.events`); an error (e.g. a queue overflow) may have hidden
                // a change, so it wakes the agent too.
                let relevant = res.is_err()
                    || res.is_ok_and(|event| event.kind.is_create() || event.kind.is_remove());
                if relevant {
                    let _ = tx.send(());
                }
            })?;
        watcher.watch(root, RecursiveMode::NonRecursive)?;
        let mut this = Self {
            watcher,
            root: root.to_path_buf(),
            drivers,
            watched: Vec::new(),
            rx,
        };
        this.watch_tops();
        Ok(this)
    }

    /// Watches each top that exists and is not watched yet.
    fn watch_tops(&mut self) {
        for driver in &self.drivers {
            let top = self.root.join(driver.top());
            if self.watched.contains(&top) || !top.is_dir() {
                continue;
            }
            match self.watcher.watch(&top, RecursiveMode::Recursive) {
                Ok(()) => {
                    tracing::info!(dir = %top.display(), "watching pod cgroups");
                    self.watched.push(top);
                }
                Err(error) => {
                    tracing::warn!(dir = %top.display(), %error, "cannot watch pod cgroups");
                }
            }
        }
    }

    /// Resolves when a directory was created or removed in the hierarchy. Cancel-safe (it
    /// receives from a channel). Events arriving together resolve it once or a few times; the
    /// caller rescans after each.
    pub async fn notified(&mut self) {
        if self.rx.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
        while self.rx.try_recv().is_ok() {}
        self.watch_tops();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn wakes(watcher: &mut CgroupWatcher, what: &str) {
        tokio::time::timeout(Duration::from_secs(5), watcher.notified())
            .await
            .unwrap_or_else(|_| panic!("no wake-up for {what}"));
    }

    #[tokio::test]
    async fn new_pod_directories_wake_it_also_under_a_hierarchy_created_later() {
        let root = std::env::temp_dir().join(format!("bulkhead-cgwatch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let mut watcher = CgroupWatcher::new(&root, Driver::ALL.to_vec()).unwrap();
        // The hierarchy appears after start, with a QoS directory.
        std::fs::create_dir(root.join("kubepods")).unwrap();
        std::fs::create_dir(root.join("kubepods/besteffort")).unwrap();
        wakes(&mut watcher, "the hierarchy").await;
        // Watched from the wake-up on (the caller rescans then, which sees what was created in
        // between, like the QoS directory above).
        std::fs::create_dir(root.join("kubepods/burstable")).unwrap();
        wakes(&mut watcher, "a QoS directory").await;
        std::fs::create_dir(root.join("kubepods/besteffort/podabc")).unwrap();
        wakes(&mut watcher, "a pod").await;
        // A file created wakes it (a rescan is harmless; cgroupfs creates only its own
        // interface files); a file modified does not.
        let file = root.join("kubepods/besteffort/x");
        std::fs::write(&file, "1").unwrap();
        wakes(&mut watcher, "the file's creation").await;
        std::fs::write(&file, "2").unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(300), watcher.notified()).await;
        assert!(quiet.is_err(), "a modified file is not a cgroup event");
        std::fs::remove_dir(root.join("kubepods/besteffort/podabc")).unwrap();
        wakes(&mut watcher, "a removed pod").await;
        std::fs::remove_dir_all(&root).unwrap();
    }
}
