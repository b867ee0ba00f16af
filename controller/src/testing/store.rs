//! The fake API server's state: every object by (resource, namespace, name), the cluster-wide
//! resourceVersion counter, a bounded history of changes (what a watch from an older
//! resourceVersion replays, and what decides `410 Gone`), and the open watches fed live.
//!
//! Writes follow the apiserver's rules that clients depend on: server-owned metadata (`uid`,
//! `creationTimestamp`, `resourceVersion`, `generation` bumped when anything outside `metadata`
//! and `status` changes), optimistic concurrency on `metadata.resourceVersion`, the main resource
//! keeping the stored `status` and the `/status` subresource changing only `status`, and deletion
//! waiting for `metadata.finalizers`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use hyper::body::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::resource::ResourceType;
use super::select::Selector;

/// Changes kept for watches that resume from an older resourceVersion.
const HISTORY_LIMIT: usize = 10_000;

/// Address of one stored object (`namespace` is empty for cluster-scoped resources).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The resource type.
    pub resource: ResourceType,
    /// Namespace, empty for cluster-scoped objects.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

/// An API error answered as a `Status` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusError {
    /// HTTP status code.
    pub code: u16,
    /// `reason`, e.g. `NotFound`, `AlreadyExists`, `Conflict`.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl StatusError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    fn not_found(key: &ObjectKey) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} {:?} not found", key.resource.plural, key.name),
        )
    }

    /// The `Status` object of this error.
    pub fn to_status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

/// How a PATCH body is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/apply-patch+yaml`: server-side apply, simplified to a merge patch of the
    /// applied configuration (no field managers; creates the object when it does not exist).
    Apply,
}

/// One stored change, as replayed to watches.
#[derive(Clone, Debug)]
struct Change {
    revision: u64,
    key: ObjectKey,
    old: Option<Value>,
    new: Value,
    deleted: bool,
}

/// A watch's filter and its connection.
struct Watch {
    resource: ResourceType,
    namespace: Option<String>,
    selector: Selector,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Bytes>,
}

impl Watch {
    /// The event this watch sees for a change (if any): objects entering or leaving its
    /// selector are ADDED or DELETED, as the apiserver does.
    fn event(&self, change: &Change) -> Option<Bytes> {
        if change.key.resource != self.resource
            || self
                .namespace
                .as_ref()
                .is_some_and(|ns| *ns != change.key.namespace)
        {
            return None;
        }
        let was = change
            .old
            .as_ref()
            .is_some_and(|o| self.selector.matches(o));
        let is = self.selector.matches(&change.new);
        let kind = match (change.deleted, was, is) {
            (true, true, _) | (true, _, true) | (false, true, false) => "DELETED",
            (false, false, true) => "ADDED",
            (false, true, true) => "MODIFIED",
            _ => return None,
        };
        Some(event_line(kind, &change.new))
    }

    fn send(&self, line: Bytes) -> bool {
        self.tx.send(line).is_ok()
    }
}

/// One newline-terminated watch event.
pub fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object})
        .to_string()
        .into_bytes();
    line.push(b'\n');
    Bytes::from(line)
}

/// Parameters of a watch request.
#[derive(Debug)]
pub struct WatchRequest {
    /// The resource type.
    pub resource: ResourceType,
    /// Only this namespace (`None`: all, or cluster-scoped).
    pub namespace: Option<String>,
    /// `labelSelector` and `fieldSelector`.
    pub selector: Selector,
    /// `resourceVersion` to start after; `None` (or `0`) starts with the current objects.
    pub from: Option<u64>,
    /// `allowWatchBookmarks=true`.
    pub bookmarks: bool,
    /// `sendInitialEvents=true`: current objects, then a bookmark marking their end.
    pub initial_events: bool,
}

/// The state behind one fake API server.
pub struct Store {
    inner: Mutex<Inner>,
}

struct Inner {
    served: Vec<ResourceType>,
    objects: BTreeMap<ObjectKey, Value>,
    revision: u64,
    /// Every change with a revision above `floor` is in `history`.
    history: VecDeque<Change>,
    floor: u64,
    watches: Vec<Watch>,
    uids: u64,
}

impl Store {
    /// An empty store serving `served`.
    pub fn new(served: Vec<ResourceType>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                served,
                objects: BTreeMap::new(),
                revision: 1,
                history: VecDeque::new(),
                floor: 1,
                watches: Vec::new(),
                uids: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every write is one commit).
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The served resource types.
    pub fn served(&self) -> Vec<ResourceType> {
        self.lock().served.clone()
    }

    /// Serves one more resource type.
    pub fn serve(&self, resource: ResourceType) {
        let mut inner = self.lock();
        if !inner.served.contains(&resource) {
            inner.served.push(resource);
        }
    }

    /// The current cluster-wide resourceVersion.
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    /// One object.
    pub fn get(&self, key: &ObjectKey) -> Result<Value, StatusError> {
        self.lock()
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| StatusError::not_found(key))
    }

    /// The matching objects (sorted by namespace and name) and the resourceVersion of the list.
    pub fn list(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> (Vec<Value>, u64) {
        let inner = self.lock();
        (
            inner.matching(resource, namespace, selector),
            inner.revision,
        )
    }

    /// POST: creates an object (`409 AlreadyExists` when the name is taken).
    pub fn create(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        mut body: Value,
    ) -> Result<Value, StatusError> {
        let mut inner = self.lock();
        let name = match body.pointer("/metadata/name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => name.to_string(),
            _ => match body
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
            {
                Some(prefix) => {
                    inner.uids += 1;
                    format!("{prefix}{:05x}", inner.uids)
                }
                None => {
                    return Err(StatusError::new(
                        400,
                        "BadRequest",
                        "metadata.name is required",
                    ));
                }
            },
        };
        let key = key_for(resource, namespace, &body, &name)?;
        if inner.objects.contains_key(&key) {
            return Err(StatusError::new(
                409,
                "AlreadyExists",
                format!("{} {name:?} already exists", resource.plural),
            ));
        }
        strip_status(&mut body);
        let obj = inner.admit(&key, None, body);
        Ok(inner.commit(key, obj))
    }

    /// PUT: replaces an object, on its main resource or its `/status`.
    pub fn replace(
        &self,
        key: &ObjectKey,
        body: Value,
        status: bool,
    ) -> Result<Value, StatusError> {
        let mut inner = self.lock();
        let old = inner.existing(key)?;
        check_name(key, &body)?;
        check_precondition(key, &old, &body)?;
        let obj = inner.admit(key, Some(&old), merge_subresource(&old, body, status));
        Ok(inner.commit(key.clone(), obj))
    }

    /// PATCH: merge patch or (simplified) server-side apply, on the main resource or `/status`.
    pub fn patch(
        &self,
        key: &ObjectKey,
        patch: Value,
        kind: PatchKind,
        status: bool,
    ) -> Result<Value, StatusError> {
        let mut inner = self.lock();
        let old = match inner.objects.get(key) {
            Some(old) => old.clone(),
            None if kind == PatchKind::Apply && !status => {
                check_name(key, &patch)?;
                let mut body = patch;
                strip_status(&mut body);
                let obj = inner.admit(key, None, body);
                return Ok(inner.commit(key.clone(), obj));
            }
            None => return Err(StatusError::not_found(key)),
        };
        check_name(key, &patch)?;
        check_precondition(key, &old, &patch)?;
        let mut body = old.clone();
        merge_patch(&mut body, &patch);
        let obj = inner.admit(key, Some(&old), merge_subresource(&old, body, status));
        Ok(inner.commit(key.clone(), obj))
    }

    /// DELETE: removes the object, or with finalizers marks it (`deletionTimestamp`) and leaves
    /// removal to the update that clears them.
    pub fn delete(&self, key: &ObjectKey) -> Result<Value, StatusError> {
        let mut inner = self.lock();
        let old = inner.existing(key)?;
        let mut obj = old.clone();
        if obj.pointer("/metadata/deletionTimestamp").is_none() {
            set_meta(&mut obj, "deletionTimestamp", json!(now()));
        }
        Ok(inner.commit(key.clone(), obj))
    }

    /// Test hook: creates or replaces the whole object (status included) as the cluster's other
    /// writers would, without preconditions.
    pub fn put(&self, key: &ObjectKey, body: Value) -> Value {
        let mut inner = self.lock();
        let old = inner.objects.get(key).cloned();
        let obj = inner.admit(key, old.as_ref(), body);
        inner.commit(key.clone(), obj)
    }

    /// Test hook: forgets the change history, so that a watch resuming from any earlier
    /// resourceVersion gets `410 Gone` and must re-list.
    pub fn expire_history(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.floor = inner.revision;
    }

    /// Test hook: ends every open watch (their clients reconnect).
    pub fn drop_watches(&self) {
        self.lock().watches.clear();
    }

    /// Test hook: sends a BOOKMARK at the current resourceVersion to every watch that allows
    /// bookmarks.
    pub fn send_bookmarks(&self) {
        let mut inner = self.lock();
        let revision = inner.revision;
        inner.watches.retain(|w| {
            !w.bookmarks
                || w.send(event_line(
                    "BOOKMARK",
                    &bookmark(&w.resource, revision, false),
                ))
        });
    }

    /// Number of open watches.
    pub fn open_watches(&self) -> usize {
        let mut inner = self.lock();
        inner.watches.retain(|w| !w.tx.is_closed());
        inner.watches.len()
    }

    /// Starts a watch: queues what happened after `from` (or the current objects) and registers
    /// for live changes. A `from` older than the history gets one ERROR event (410 Expired) and
    /// the end of the stream, as the apiserver answers.
    pub fn watch(&self, request: WatchRequest) -> mpsc::UnboundedReceiver<Bytes> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inner = self.lock();
        let watch = Watch {
            resource: request.resource,
            namespace: request.namespace,
            selector: request.selector,
            bookmarks: request.bookmarks,
            tx,
        };
        match request.from.filter(|&from| from != 0) {
            Some(from) if from < inner.floor => {
                let expired = StatusError::new(
                    410,
                    "Expired",
                    format!("too old resource version: {from} ({})", inner.floor),
                );
                watch.send(event_line("ERROR", &expired.to_status()));
                return rx;
            }
            Some(from) => {
                for change in inner.history.iter().filter(|c| c.revision > from) {
                    if let Some(line) = watch.event(change) {
                        watch.send(line);
                    }
                }
            }
            None => {
                let current =
                    inner.matching(&watch.resource, watch.namespace.as_deref(), &watch.selector);
                for obj in &current {
                    watch.send(event_line("ADDED", obj));
                }
                if request.initial_events {
                    let end = bookmark(&watch.resource, inner.revision, true);
                    watch.send(event_line("BOOKMARK", &end));
                }
            }
        }
        inner.watches.push(watch);
        rx
    }
}

impl Inner {
    fn existing(&self, key: &ObjectKey) -> Result<Value, StatusError> {
        self.objects
            .get(key)
            .cloned()
            .ok_or_else(|| StatusError::not_found(key))
    }

    fn matching(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|(k, v)| {
                k.resource == *resource
                    && namespace.is_none_or(|ns| k.namespace == ns)
                    && selector.matches(v)
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Sets the server-owned fields of an object about to be stored.
    fn admit(&mut self, key: &ObjectKey, old: Option<&Value>, mut obj: Value) -> Value {
        if !obj.is_object() {
            obj = json!({});
        }
        obj["apiVersion"] = json!(key.resource.api_version());
        obj["kind"] = json!(key.resource.kind);
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        set_meta(&mut obj, "name", json!(key.name));
        if key.resource.namespaced {
            set_meta(&mut obj, "namespace", json!(key.namespace));
        } else if let Some(meta) = obj["metadata"].as_object_mut() {
            meta.remove("namespace");
        }
        if let Some(meta) = obj["metadata"].as_object_mut() {
            meta.remove("managedFields");
            meta.remove("resourceVersion");
        }
        match old {
            Some(old) => {
                for field in ["uid", "creationTimestamp", "deletionTimestamp"] {
                    match old.pointer(&format!("/metadata/{field}")) {
                        Some(v) => set_meta(&mut obj, field, v.clone()),
                        None => {
                            if let Some(meta) = obj["metadata"].as_object_mut() {
                                meta.remove(field);
                            }
                        }
                    }
                }
                let generation = old
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                let bump = i64::from(spec_of(old) != spec_of(&obj));
                set_meta(&mut obj, "generation", json!(generation + bump));
            }
            None => {
                self.uids += 1;
                set_meta(
                    &mut obj,
                    "uid",
                    json!(format!("00000000-0000-4000-8000-{:012x}", self.uids)),
                );
                set_meta(&mut obj, "creationTimestamp", json!(now()));
                set_meta(&mut obj, "generation", json!(1));
            }
        }
        obj
    }

    /// Stores an admitted object (removing it when it is being deleted without finalizers),
    /// records the change and feeds the watches. Returns what was stored.
    fn commit(&mut self, key: ObjectKey, mut obj: Value) -> Value {
        self.revision += 1;
        set_meta(
            &mut obj,
            "resourceVersion",
            json!(self.revision.to_string()),
        );
        let finalizing = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        let deleted = obj.pointer("/metadata/deletionTimestamp").is_some() && !finalizing;
        let old = if deleted {
            self.objects.remove(&key)
        } else {
            self.objects.insert(key.clone(), obj.clone())
        };
        let change = Change {
            revision: self.revision,
            key,
            old,
            new: obj.clone(),
            deleted,
        };
        self.watches.retain(|w| match w.event(&change) {
            Some(line) => w.send(line),
            None => !w.tx.is_closed(),
        });
        self.history.push_back(change);
        while self.history.len() > HISTORY_LIMIT {
            if let Some(dropped) = self.history.pop_front() {
                self.floor = dropped.revision;
            }
        }
        obj
    }
}

/// The key a request body addresses, checking its namespace against the path's.
fn key_for(
    resource: &ResourceType,
    namespace: Option<&str>,
    body: &Value,
    name: &str,
) -> Result<ObjectKey, StatusError> {
    let body_ns = body.pointer("/metadata/namespace").and_then(Value::as_str);
    let namespace = match (resource.namespaced, namespace, body_ns) {
        (false, _, _) => String::new(),
        (true, Some(path), Some(body)) if path != body => {
            return Err(StatusError::new(
                400,
                "BadRequest",
                format!(
                    "the namespace of the object ({body}) does not match the namespace of the request ({path})"
                ),
            ));
        }
        (true, Some(ns), _) | (true, None, Some(ns)) => ns.to_string(),
        (true, None, None) => {
            return Err(StatusError::new(
                400,
                "BadRequest",
                "a namespace is required",
            ));
        }
    };
    Ok(ObjectKey {
        resource: resource.clone(),
        namespace,
        name: name.to_string(),
    })
}

fn check_name(key: &ObjectKey, body: &Value) -> Result<(), StatusError> {
    match body.pointer("/metadata/name").and_then(Value::as_str) {
        Some(name) if name != key.name => Err(StatusError::new(
            400,
            "BadRequest",
            format!(
                "the name of the object ({name}) does not match the name in the URL ({})",
                key.name
            ),
        )),
        _ => Ok(()),
    }
}

/// A body's `metadata.resourceVersion`, when given, must be the stored one.
fn check_precondition(key: &ObjectKey, old: &Value, body: &Value) -> Result<(), StatusError> {
    let wanted = body
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str);
    let current = old
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str);
    match wanted {
        Some(wanted) if !wanted.is_empty() && Some(wanted) != current => Err(StatusError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {:?}: the object has been modified; please apply your changes to the latest version and try again",
                key.resource.plural, key.name
            ),
        )),
        _ => Ok(()),
    }
}

/// The main resource keeps the stored status; `/status` changes only the status.
fn merge_subresource(old: &Value, mut body: Value, status: bool) -> Value {
    if status {
        let mut obj = old.clone();
        match body.get_mut("status").map(Value::take) {
            Some(s) => obj["status"] = s,
            None => strip_status(&mut obj),
        }
        obj
    } else {
        match old.get("status") {
            Some(s) => body["status"] = s.clone(),
            None => strip_status(&mut body),
        }
        body
    }
}

fn strip_status(obj: &mut Value) {
    if let Some(map) = obj.as_object_mut() {
        map.remove("status");
    }
}

/// Everything but `metadata` and `status`: a change here bumps `metadata.generation`.
fn spec_of(obj: &Value) -> Map<String, Value> {
    let mut map = obj.as_object().cloned().unwrap_or_default();
    map.remove("metadata");
    map.remove("status");
    map
}

fn set_meta(obj: &mut Value, field: &str, value: Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(field.to_string(), value);
    }
}

/// RFC 7386 JSON merge patch: objects merge recursively, `null` removes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(map) = target {
        for (k, v) in patch {
            if v.is_null() {
                map.remove(k);
            } else {
                merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// A bookmark object: kind, apiVersion and the resourceVersion (and, ending a streaming list's
/// initial events, the `k8s.io/initial-events-end` annotation).
fn bookmark(resource: &ResourceType, revision: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": revision.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": resource.kind, "apiVersion": resource.api_version(), "metadata": meta})
}

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map_or_else(|_| jiff::Timestamp::now().to_string(), |t| t.to_string())
}
