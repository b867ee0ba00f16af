//! Test support (feature `testing`): [`FakeApiServer`], an in-process Kubernetes API server that
//! speaks the real list/watch protocol over HTTP on a loopback port, so that a `kube::Client`,
//! `kube::runtime::watcher`/`reflector` and the whole controller run against it unchanged while a
//! test changes objects live.
//!
//! What it serves ([`BUILTIN`], plus [`FakeApiServer::serve`]): GET of one object; LIST as a
//! `{Kind}List` whose `metadata.resourceVersion` is the cluster-wide revision; WATCH
//! (`watch=true`) as newline-delimited `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR,
//! "object": ...}` events after the given resourceVersion, kept open and fed live until
//! `timeoutSeconds`; a resourceVersion older than the kept history gets, as from the apiserver,
//! one ERROR event carrying a `Status` with code 410 (reason `Expired`), so a watcher re-lists;
//! `sendInitialEvents=true` (streaming lists) gets the current objects and a bookmark annotated
//! `k8s.io/initial-events-end`; POST (409 AlreadyExists), PUT (409 Conflict on a stale
//! `metadata.resourceVersion`), PATCH and DELETE (finalizers respected), on the main resource and
//! the `/status` subresource; `labelSelector` and `fieldSelector`.
//!
//! Simplifications, chosen because no client behaviour we test depends on them:
//! - server-side apply (`application/apply-patch+yaml`) is a JSON merge patch of the applied
//!   configuration: no `managedFields`, no conflicts between field managers, lists are replaced
//!   whole, and a field a manager stops applying is not removed; it creates a missing object
//!   like the apiserver does. `force` and `fieldManager` are accepted and ignored;
//! - JSON patch and strategic merge patch answer 415; `dryRun` answers 400;
//! - LIST ignores `limit` (everything in one page, no `continue`) and `resourceVersion` /
//!   `resourceVersionMatch` (always the latest state);
//! - BOOKMARK events are sent only when a test calls [`FakeApiServer::send_bookmarks`] (the
//!   apiserver sends them about once a minute), and at the end of a streaming list's initial
//!   events; the history keeps the last 10,000 changes;
//! - no discovery endpoints, no admission, no validation against schemas, no defaulting;
//! - DELETE ignores its body (preconditions, propagation policy, grace period);
//! - on every served resource, writes to the main resource keep the stored `status` and writes to
//!   `/status` change only `status`; test hooks ([`FakeApiServer::apply`]) write whole objects.

mod http;
mod resource;
mod select;
mod store;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use self::http::RecordedRequest;
use self::http::Shared;
pub use self::resource::{BUILTIN, ResourceType};
use self::store::{ObjectKey, Store};

/// Errors of the fake API server's setup and test hooks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The loopback listener could not be opened.
    #[error("fake API server: cannot listen on 127.0.0.1: {0}")]
    Listen(#[source] std::io::Error),
    /// The server URL is not a valid URI.
    #[error("fake API server: URL {url}: {source}")]
    Url {
        /// The URL.
        url: String,
        /// The parse error.
        #[source]
        source: ::http::uri::InvalidUri,
    },
    /// The kube client could not be built.
    #[error("fake API server: kube client for {url}: {source}")]
    Client {
        /// The server URL.
        url: String,
        /// kube's error.
        #[source]
        source: kube::Error,
    },
    /// An object did not convert to or from JSON.
    #[error("fake API server: {kind} {name:?}: {source}")]
    Json {
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// The conversion error.
        #[source]
        source: serde_json::Error,
    },
    /// An object given to a hook lacks its name, or its namespace while being namespaced.
    #[error("fake API server: {kind} {name:?}: {field} is required")]
    Missing {
        /// The object's kind.
        kind: String,
        /// The object's name (empty when missing).
        name: String,
        /// The missing field.
        field: &'static str,
    },
}

/// An in-process API server on `127.0.0.1:<ephemeral port>` (plain HTTP). Dropping it ends its
/// watches and stops accepting connections.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// Bounds of the typed hooks: kube-rs resources with a static type.
pub trait Object: kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned {}

impl<K> Object for K where K: kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned {}

impl FakeApiServer {
    /// Starts a server serving [`BUILTIN`], with no objects. Needs a tokio runtime.
    pub async fn start() -> Result<Self, Error> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Error::Listen)?;
        let addr = listener.local_addr().map_err(Error::Listen)?;
        let shared = Arc::new(Shared {
            store: Store::new(BUILTIN.to_vec()),
            requests: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(http::accept(listener, shared.clone()));
        tracing::debug!(%addr, "fake API server listening");
        Ok(Self { addr, shared, task })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this server (`kube::Config::new(url)`, default namespace `default`).
    pub fn client(&self) -> Result<kube::Client, Error> {
        let url = self.url();
        let uri = url.parse().map_err(|source| Error::Url {
            url: url.clone(),
            source,
        })?;
        kube::Client::try_from(kube::Config::new(uri))
            .map_err(|source| Error::Client { url, source })
    }

    /// Serves one more resource type (e.g. a test's own custom resource).
    pub fn serve<K>(&self)
    where
        K: Object,
        K::Scope: 'static,
    {
        self.shared.store.serve(ResourceType::of::<K>());
    }

    /// Creates or replaces `obj` whole (status included), as another writer in the cluster
    /// would; returns the stored object (with uid, resourceVersion, generation).
    pub fn apply<K>(&self, obj: &K) -> Result<K, Error>
    where
        K: Object,
        K::Scope: 'static,
    {
        let meta = obj.meta();
        let key = key_of::<K>(
            meta.namespace.as_deref(),
            meta.name.as_deref().unwrap_or(""),
        )?;
        let value =
            serde_json::to_value(obj).map_err(|source| json_error::<K>(&key.name, source))?;
        from_value(&key.name, self.shared.store.put(&key, value))
    }

    /// The stored object, if any.
    pub fn get<K>(&self, namespace: Option<&str>, name: &str) -> Result<Option<K>, Error>
    where
        K: Object,
        K::Scope: 'static,
    {
        let key = key_of::<K>(namespace, name)?;
        self.shared
            .store
            .get(&key)
            .ok()
            .map(|v| from_value(name, v))
            .transpose()
    }

    /// Every stored object of type `K`, in all namespaces.
    pub fn list<K>(&self) -> Result<Vec<K>, Error>
    where
        K: Object,
        K::Scope: 'static,
    {
        let resource = ResourceType::of::<K>();
        let (items, _) = self
            .shared
            .store
            .list(&resource, None, &select::Selector::default());
        items.into_iter().map(|v| from_value("", v)).collect()
    }

    /// Deletes an object as a DELETE request would (an object with finalizers is only marked).
    /// Returns whether it existed.
    pub fn delete<K>(&self, namespace: Option<&str>, name: &str) -> Result<bool, Error>
    where
        K: Object,
        K::Scope: 'static,
    {
        Ok(self
            .shared
            .store
            .delete(&key_of::<K>(namespace, name)?)
            .is_ok())
    }

    /// Forgets the change history: a watch resuming from any earlier resourceVersion gets 410
    /// and its watcher re-lists. Open watches are not affected (see [`Self::drop_watches`]).
    pub fn expire_history(&self) {
        self.shared.store.expire_history();
    }

    /// Ends every open watch; watchers reconnect from the last resourceVersion they saw.
    pub fn drop_watches(&self) {
        self.shared.store.drop_watches();
    }

    /// Sends a BOOKMARK at the current resourceVersion to every watch that allows bookmarks.
    pub fn send_bookmarks(&self) {
        self.shared.store.send_bookmarks();
    }

    /// Number of open watches.
    pub fn open_watches(&self) -> usize {
        self.shared.store.open_watches()
    }

    /// The current cluster-wide resourceVersion.
    pub fn revision(&self) -> u64 {
        self.shared.store.revision()
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Number of LIST requests of the collection `path` (e.g. `/api/v1/pods`) so far: how a
    /// test tells a watcher that resumed from one that re-listed.
    pub fn lists_of(&self, path: &str) -> usize {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .filter(|r| r.is_list_of(path))
            .count()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.store.drop_watches();
    }
}

/// How long [`eventually`] waits: a failure guard for asynchronous effects, not a performance
/// claim.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Polls `check` every 20 ms until it holds; panics naming `what` after [`PATIENCE`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn key_of<K>(namespace: Option<&str>, name: &str) -> Result<ObjectKey, Error>
where
    K: Object,
    K::Scope: 'static,
{
    let resource = ResourceType::of::<K>();
    let missing = |field| Error::Missing {
        kind: resource.kind.to_string(),
        name: name.to_string(),
        field,
    };
    if name.is_empty() {
        return Err(missing("metadata.name"));
    }
    let namespace = match (resource.namespaced, namespace) {
        (true, Some(ns)) if !ns.is_empty() => ns.to_string(),
        (true, _) => return Err(missing("metadata.namespace")),
        (false, _) => String::new(),
    };
    Ok(ObjectKey {
        resource,
        namespace,
        name: name.to_string(),
    })
}

fn json_error<K: Object>(name: &str, source: serde_json::Error) -> Error {
    Error::Json {
        kind: K::kind(&()).into_owned(),
        name: name.to_string(),
        source,
    }
}

fn from_value<K: Object>(name: &str, value: serde_json::Value) -> Result<K, Error> {
    serde_json::from_value(value).map_err(|source| json_error::<K>(name, source))
}
