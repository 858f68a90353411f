//! The task store: every task in memory for serving, each write committed to SQLite (WAL,
//! `synchronous = FULL`) before it is acknowledged or served. Each write makes a new generation
//! with a fresh etag; `If-Match` compares against the committed row. Label embeddings are kept
//! with the task, keyed by the model that made them, so a restart does not recompute them.

mod db;

pub use db::{Database, Record};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use ndarray::Array2;

use crate::classifier::PreparedTask;
use crate::task::Task;

/// What can go wrong storing tasks.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("task database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("task database {path}: {message}")]
    Open { path: String, message: String },
    #[error("stored task {name:?} is unreadable: {message}")]
    Corrupt { name: String, message: String },
    #[error("task {name:?} is at etag {found}, not {expected}")]
    EtagMismatch {
        name: String,
        expected: String,
        found: String,
    },
    #[error("no task named {0:?}")]
    NotFound(String),
    #[error("the server already serves max_tasks = {max} tasks; delete one first")]
    Full { max: usize },
}

/// A condition on the stored task for a write, from `If-Match` / `If-None-Match`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// Write whatever is there.
    None,
    /// The task must exist (`If-Match: *`).
    Exists,
    /// The task must not exist (`If-None-Match: *`).
    Absent,
    /// The task must be at this etag (`If-Match: "etag"`).
    Etag(String),
}

impl Precondition {
    pub(super) fn check(&self, name: &str, current: Option<&str>) -> Result<(), StoreError> {
        let mismatch = |expected: &str| StoreError::EtagMismatch {
            name: name.to_string(),
            expected: expected.to_string(),
            found: current.unwrap_or("(none: no such task)").to_string(),
        };
        match (self, current) {
            (Self::None, _) | (Self::Exists, Some(_)) | (Self::Absent, None) => Ok(()),
            (Self::Etag(etag), Some(found)) if etag == found => Ok(()),
            (Self::Exists, None) => Err(mismatch("*")),
            (Self::Absent, Some(_)) => Err(mismatch("(none, If-None-Match: *)")),
            (Self::Etag(etag), _) => Err(mismatch(etag)),
        }
    }
}

/// A task as served: validated, its labels embedded, at one generation.
#[derive(Debug)]
pub struct StoredTask {
    pub prepared: PreparedTask,
    /// The task's z, shared with the batcher's jobs without copying.
    pub z: Arc<[f32]>,
    /// 1 for a new task, +1 per replacement.
    pub generation: u64,
    /// Names this exact generation; `If-Match` takes it.
    pub etag: String,
    /// When this generation was committed, in milliseconds since the Unix epoch.
    pub updated_at_ms: i64,
}

impl StoredTask {
    /// The task itself.
    pub fn task(&self) -> &Task {
        &self.prepared.task
    }
}

/// The served tasks: a sorted map (for paging) behind a lock, and the database behind another.
///
/// Both are std locks: neither is held across an await, and writes take the database lock first,
/// then the map's, so a reader never sees a task that is not committed.
pub struct TaskStore {
    db: Mutex<Database>,
    tasks: RwLock<BTreeMap<String, Arc<StoredTask>>>,
    /// New tasks beyond this many are refused (tasks loaded at start are served regardless).
    max_tasks: usize,
}

impl TaskStore {
    /// Wraps an open database; tasks are added with [`TaskStore::insert_loaded`].
    pub fn new(db: Database) -> Self {
        Self {
            db: Mutex::new(db),
            tasks: RwLock::new(BTreeMap::new()),
            max_tasks: usize::MAX,
        }
    }

    /// Refuses to create tasks beyond `max` ([`StoreError::Full`]); replacing one still works.
    #[must_use]
    pub fn with_max_tasks(mut self, max: usize) -> Self {
        self.max_tasks = max;
        self
    }

    /// Runs `f` on the database (blocking: call from a blocking thread).
    pub fn with_db<T>(&self, f: impl FnOnce(&mut Database) -> T) -> T {
        f(&mut self.db.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The task being served under `name`.
    pub fn get(&self, name: &str) -> Option<Arc<StoredTask>> {
        self.read().get(name).cloned()
    }

    /// How many tasks are served.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// True when no task is served.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `limit` tasks whose names sort after `after`, and the cursor for the next page.
    pub fn page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<Arc<StoredTask>>, Option<String>) {
        use std::ops::Bound::{Excluded, Unbounded};
        let tasks = self.read();
        let start = after.map_or(Unbounded, |a| Excluded(a.to_string()));
        let mut page: Vec<Arc<StoredTask>> = tasks
            .range((start, Unbounded))
            .take(limit + 1)
            .map(|(_, task)| task.clone())
            .collect();
        let next = (page.len() > limit).then(|| {
            page.truncate(limit);
            page.last()
                .map(|t| t.task().name.clone())
                .unwrap_or_default()
        });
        (page, next)
    }

    /// Commits a prepared task, then serves it; returns it and whether it is new.
    pub fn put(
        &self,
        prepared: PreparedTask,
        subspace_id: &str,
        model_key: &str,
        expect: &Precondition,
    ) -> Result<(Arc<StoredTask>, bool), StoreError> {
        let mut db = self.db.lock().unwrap_or_else(PoisonError::into_inner);
        // Checked under the database lock, which every writer holds, so racing uploads cannot
        // overshoot the bound.
        {
            let tasks = self.read();
            if tasks.len() >= self.max_tasks && !tasks.contains_key(&prepared.task.name) {
                return Err(StoreError::Full {
                    max: self.max_tasks,
                });
            }
        }
        let (record, created) = db.write(
            &prepared.task,
            subspace_id,
            (model_key, &prepared.label_embeddings),
            expect,
        )?;
        let stored = Arc::new(StoredTask {
            z: prepared.task.z.clone().into(),
            prepared,
            generation: record.generation,
            etag: record.etag,
            updated_at_ms: record.updated_at_ms,
        });
        self.write().insert(record.name, stored.clone());
        Ok((stored, created))
    }

    /// Deletes a task from the database, then stops serving it.
    pub fn delete(&self, name: &str, expect: &Precondition) -> Result<(), StoreError> {
        let mut db = self.db.lock().unwrap_or_else(PoisonError::into_inner);
        db.delete(name, expect)?;
        self.write().remove(name);
        Ok(())
    }

    /// Serves a task read from the database at start-up.
    pub fn insert_loaded(&self, record: &Record, prepared: PreparedTask) {
        let stored = Arc::new(StoredTask {
            z: prepared.task.z.clone().into(),
            prepared,
            generation: record.generation,
            etag: record.etag.clone(),
            updated_at_ms: record.updated_at_ms,
        });
        self.write().insert(record.name.clone(), stored);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<StoredTask>>> {
        self.tasks.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<StoredTask>>> {
        self.tasks.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Restores cached label embeddings [labels, hidden] if they were made by `model_key`.
pub fn cached_embeddings(
    record: &Record,
    model_key: &str,
    labels: usize,
    hidden: usize,
) -> Option<Array2<f32>> {
    let (model, values) = record.embeddings.as_ref()?;
    if model != model_key {
        return None;
    }
    Array2::from_shape_vec((labels, hidden), values.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::db::tests::{embeddings, task};
    use super::*;

    #[test]
    fn pages_follow_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = TaskStore::new(Database::open(&dir.path().join("t.sqlite3")).unwrap());
        for name in ["c", "a", "b"] {
            let prepared = PreparedTask {
                task: task(name, 1.0),
                label_embeddings: embeddings(),
            };
            store
                .put(prepared, "s@1", "m", &Precondition::None)
                .unwrap();
        }
        let (page, next) = store.page(None, 2);
        assert_eq!(page.len(), 2);
        assert_eq!(next.as_deref(), Some("b"));
        let (page, next) = store.page(next.as_deref(), 2);
        assert_eq!(page[0].task().name, "c");
        assert_eq!(next, None);
        store.delete("a", &Precondition::None).unwrap();
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn max_tasks_bounds_creation_but_not_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let store = TaskStore::new(Database::open(&dir.path().join("t.sqlite3")).unwrap())
            .with_max_tasks(2);
        let put = |name: &str| {
            let prepared = PreparedTask {
                task: task(name, 1.0),
                label_embeddings: embeddings(),
            };
            store.put(prepared, "s@1", "m", &Precondition::None)
        };
        put("a").unwrap();
        put("b").unwrap();
        assert!(matches!(put("c"), Err(StoreError::Full { max: 2 })));
        let (replaced, created) = put("a").unwrap();
        assert!(!created);
        assert_eq!(replaced.generation, 2);
        store.delete("b", &Precondition::None).unwrap();
        put("c").unwrap();
        assert_eq!(store.len(), 2);
    }
}
