//! [`PolicySet`]: the validated set of policy objects, keyed by `(kind, namespace, name)`.
//!
//! All or nothing: building a set from files or a batch fails as a whole on the first invalid
//! object; the caller keeps its last good set (and compiled state). Single-object edits
//! ([`PolicySet::apply`], [`PolicySet::remove`]) leave the set unchanged on error.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::model::{ObjectKey, PolicyObject};
use crate::{Error, ir, load, validate};

#[derive(Clone, Debug)]
struct Entry {
    source: String,
    object: PolicyObject,
    lowered: Arc<ir::Policy>,
}

/// A validated set of policies. Cloning is cheap-ish (objects are cloned, lowered forms shared).
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    entries: BTreeMap<ObjectKey, Entry>,
}

impl PolicySet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from `(source file, object)` pairs; any invalid object or duplicate key
    /// rejects the whole batch.
    pub fn from_objects(
        objects: impl IntoIterator<Item = (String, PolicyObject)>,
    ) -> Result<Self, Error> {
        let mut set = PolicySet::new();
        for (source, object) in objects {
            let key = object.key();
            if let Some(first) = set.entries.get(&key) {
                return Err(Error::Duplicate {
                    file: source,
                    object: key.to_string(),
                    first_file: first.source.clone(),
                });
            }
            set.apply(&source, object)?;
        }
        Ok(set)
    }

    /// Loads a file or a directory (see [`crate::load`]).
    pub fn load(path: &Path) -> Result<Self, Error> {
        Self::from_objects(load::read_path(path)?)
    }

    /// Parses a multi-document YAML text; `file` names it in errors.
    pub fn from_yaml_str(file: &str, text: &str) -> Result<Self, Error> {
        Self::from_objects(
            load::parse_documents(file, text)?
                .into_iter()
                .map(|o| (file.to_owned(), o)),
        )
    }

    /// Validates `object` and inserts it, replacing an object with the same key (an update by
    /// name replaces, it does not add). Returns the replaced object.
    pub fn apply(
        &mut self,
        source: &str,
        object: PolicyObject,
    ) -> Result<Option<PolicyObject>, Error> {
        let lowered = Arc::new(validate::lower(source, &object)?);
        let key = object.key();
        let entry = Entry {
            source: source.to_owned(),
            object,
            lowered,
        };
        Ok(self.entries.insert(key, entry).map(|e| e.object))
    }

    /// Inserts an object already validated and lowered by [`validate::lower`].
    pub(crate) fn apply_lowered(
        &mut self,
        source: &str,
        object: PolicyObject,
        lowered: Arc<ir::Policy>,
    ) {
        let key = object.key();
        let entry = Entry {
            source: source.to_owned(),
            object,
            lowered,
        };
        self.entries.insert(key, entry);
    }

    /// Removes an object; returns it if it was present.
    pub fn remove(&mut self, key: &ObjectKey) -> Option<PolicyObject> {
        self.entries.remove(key).map(|e| e.object)
    }

    /// Removes every object.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// The object with this key.
    pub fn get(&self, key: &ObjectKey) -> Option<&PolicyObject> {
        self.entries.get(key).map(|e| &e.object)
    }

    /// The objects, sorted by key.
    pub fn objects(&self) -> impl Iterator<Item = (&ObjectKey, &PolicyObject)> {
        self.entries.iter().map(|(k, e)| (k, &e.object))
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn lowered(&self) -> impl Iterator<Item = &Arc<ir::Policy>> {
        self.entries.values().map(|e| &e.lowered)
    }
}
