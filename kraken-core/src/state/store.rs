//! Durable storage of the orchestrator's state in one redb file.
//!
//! redb is synchronous: every call here blocks and is made from `spawn_blocking`.

use super::StateError;
use crate::model::{Deployment, DeploymentId};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};

const DEPLOYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("deployments");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const EPOCH_KEY: &str = "epoch";

/// What was stored.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub(crate) deployments: Vec<Deployment>,
    pub(crate) epoch: Option<u64>,
    /// Records that could not be read (kept on disk, reported).
    pub(crate) unreadable: usize,
}

pub(crate) struct Store {
    db: redb::Database,
    path: PathBuf,
}

fn storage<E: std::fmt::Display>(path: &Path, what: &str) -> impl FnOnce(E) -> StateError {
    let path = path.to_path_buf();
    let what = what.to_owned();
    move |e| StateError::Storage {
        path,
        reason: format!("{what}: {e}"),
    }
}

impl Store {
    pub(crate) fn open(path: &Path) -> Result<Self, StateError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(storage(path, "create data dir"))?;
        }
        let db = match redb::Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StateError::Locked {
                    path: path.to_path_buf(),
                });
            }
            Err(e) => return Err(storage(path, "open")(e)),
        };
        let store = Store {
            db,
            path: path.to_path_buf(),
        };
        // Make sure the tables exist so reads of a new file succeed.
        let tx = store.db.begin_write().map_err(storage(path, "begin"))?;
        tx.open_table(DEPLOYMENTS)
            .map_err(storage(path, "open table"))?;
        tx.open_table(META).map_err(storage(path, "open table"))?;
        tx.commit().map_err(storage(path, "commit"))?;
        Ok(store)
    }

    pub(crate) fn load(&self) -> Result<Loaded, StateError> {
        let p = &self.path;
        let tx = self.db.begin_read().map_err(storage(p, "begin read"))?;
        let table = tx
            .open_table(DEPLOYMENTS)
            .map_err(storage(p, "open table"))?;
        let mut loaded = Loaded::default();
        for row in table.iter().map_err(storage(p, "iterate"))? {
            let (key, value) = row.map_err(storage(p, "read"))?;
            match serde_json::from_slice::<Deployment>(value.value()) {
                Ok(d) => loaded.deployments.push(d),
                Err(err) => {
                    loaded.unreadable += 1;
                    tracing::error!(deployment = key.value(), cause = %err, "stored deployment cannot be read; left on disk");
                }
            }
        }
        let meta = tx.open_table(META).map_err(storage(p, "open table"))?;
        if let Some(v) = meta.get(EPOCH_KEY).map_err(storage(p, "read"))? {
            let bytes: [u8; 8] = v.value().try_into().map_err(|_| StateError::Storage {
                path: p.clone(),
                reason: "stored epoch is not 8 bytes".into(),
            })?;
            loaded.epoch = Some(u64::from_le_bytes(bytes));
        }
        Ok(loaded)
    }

    /// Writes these deployments (and removes those given as removed) in one transaction.
    pub(crate) fn write(
        &self,
        upserts: &[Deployment],
        removed: &[DeploymentId],
        epoch: Option<u64>,
    ) -> Result<(), StateError> {
        let p = &self.path;
        let tx = self.db.begin_write().map_err(storage(p, "begin"))?;
        {
            let mut table = tx
                .open_table(DEPLOYMENTS)
                .map_err(storage(p, "open table"))?;
            for d in upserts {
                let bytes = serde_json::to_vec(d).map_err(storage(p, "encode"))?;
                table
                    .insert(d.id.as_str(), bytes.as_slice())
                    .map_err(storage(p, "insert"))?;
            }
            for id in removed {
                table.remove(id.as_str()).map_err(storage(p, "remove"))?;
            }
            if let Some(epoch) = epoch {
                let mut meta = tx.open_table(META).map_err(storage(p, "open table"))?;
                meta.insert(EPOCH_KEY, epoch.to_le_bytes().as_slice())
                    .map_err(storage(p, "insert"))?;
            }
        }
        tx.commit().map_err(storage(p, "commit"))
    }
}
