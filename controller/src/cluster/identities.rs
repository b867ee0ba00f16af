//! Persistence of the identity allocation table in a ConfigMap (key [`TABLE_KEY`], the table as
//! JSON), so that a restarted or newly elected controller keeps every identity number.
//!
//! The table only grows (keys are never forgotten). The run loop writes it *before* it publishes
//! a revision that uses a new number: a crash can then lose only numbers no enforcer holds.
//! Writes are optimistic (`metadata.resourceVersion`): on a conflict the stored table is read
//! again; if every stored entry is also in ours (a previous leader's write we already loaded, or
//! an equal one), ours is written over it; if the stored table has an entry ours lacks or
//! numbers differently, another controller allocated numbers this one does not know: the write
//! fails with [`StoreError::Diverged`] and the controller must restart to load them.
//!
//! A ConfigMap holds at most 1 MiB: at a few hundred bytes per workload identity (its key is its
//! labels as JSON), that is some thousands of distinct label sets; a larger table is refused by
//! the API server and the write fails with its message.

use bulkhead_policy::AllocationTable;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

/// The ConfigMap key holding the table.
pub const TABLE_KEY: &str = "identities.json";

/// Conflict retries per write.
const CONFLICT_RETRIES: usize = 5;

/// Why the table could not be loaded or stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The API request failed.
    #[error("ConfigMap {namespace}/{name}: {source}")]
    Api {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The stored table is not a table.
    #[error("ConfigMap {namespace}/{name}: data.{TABLE_KEY}: {source}")]
    Parse {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The stored table has numbers this controller does not know.
    #[error(
        "ConfigMap {namespace}/{name}: data.{TABLE_KEY}: another controller allocated identity {key:?} (restart to load it)"
    )]
    Diverged {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// A stored key that ours lacks or numbers differently.
        key: String,
    },
    /// Every retry met a conflict.
    #[error("ConfigMap {namespace}/{name}: still conflicting after {CONFLICT_RETRIES} attempts")]
    Contended {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
}

/// The ConfigMap holding the table, and what this controller last read or wrote there.
pub struct IdentityStore {
    api: Api<ConfigMap>,
    namespace: String,
    name: String,
    /// The ConfigMap's resource version as last seen (None: it does not exist).
    resource_version: Option<String>,
    stored: AllocationTable,
}

impl IdentityStore {
    /// Reads the table from ConfigMap `namespace/name` (a missing ConfigMap, or one without the
    /// key, is an empty table; the first write creates the ConfigMap).
    pub async fn load(
        client: kube::Client,
        namespace: &str,
        name: &str,
    ) -> Result<(IdentityStore, AllocationTable), StoreError> {
        let mut store = IdentityStore {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            resource_version: None,
            stored: AllocationTable::new(),
        };
        let table = store.read().await?;
        store.stored = table.clone();
        tracing::info!(configmap = %name, namespace, identities = table.entries().len(), "identity table loaded");
        Ok((store, table))
    }

    /// The table as last stored or loaded.
    pub fn stored(&self) -> &AllocationTable {
        &self.stored
    }

    fn api_error(&self, source: kube::Error) -> StoreError {
        StoreError::Api {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }

    /// Reads the ConfigMap, remembering its resource version.
    async fn read(&mut self) -> Result<AllocationTable, StoreError> {
        let cm = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.api_error(e))?;
        let Some(cm) = cm else {
            self.resource_version = None;
            return Ok(AllocationTable::new());
        };
        self.resource_version = cm.metadata.resource_version.clone();
        match cm.data.as_ref().and_then(|d| d.get(TABLE_KEY)) {
            None => Ok(AllocationTable::new()),
            Some(json) => serde_json::from_str(json).map_err(|source| StoreError::Parse {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                source,
            }),
        }
    }

    /// Writes `table` unless it equals the stored one; returns whether it wrote.
    pub async fn store(&mut self, table: &AllocationTable) -> Result<bool, StoreError> {
        if *table == self.stored {
            return Ok(false);
        }
        let json = serde_json::to_string(table).map_err(|source| StoreError::Parse {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        })?;
        for _ in 0..CONFLICT_RETRIES {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    resource_version: self.resource_version.clone(),
                    ..ObjectMeta::default()
                },
                data: Some([(TABLE_KEY.to_owned(), json.clone())].into()),
                ..ConfigMap::default()
            };
            let pp = PostParams::default();
            let written = match &self.resource_version {
                Some(_) => self.api.replace(&self.name, &pp, &cm).await,
                None => self.api.create(&pp, &cm).await,
            };
            match written {
                Ok(cm) => {
                    self.resource_version = cm.metadata.resource_version;
                    self.stored = table.clone();
                    tracing::info!(configmap = %self.name, identities = table.entries().len(), "identity table stored");
                    return Ok(true);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    tracing::info!(configmap = %self.name, "identity table write conflicted; reading it again");
                    let theirs = self.read().await?;
                    if let Some((key, _)) = theirs
                        .entries()
                        .iter()
                        .find(|(k, n)| table.get(k) != Some(**n))
                    {
                        return Err(StoreError::Diverged {
                            namespace: self.namespace.clone(),
                            name: self.name.clone(),
                            key: key.clone(),
                        });
                    }
                }
                Err(e) => return Err(self.api_error(e)),
            }
        }
        Err(StoreError::Contended {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        })
    }
}
