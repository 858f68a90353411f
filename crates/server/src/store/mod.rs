//! The task store: every task in memory for serving, each write committed to the backend (SQLite
//! with WAL and `synchronous = FULL`, or PostgreSQL shared by replicas) before it is acknowledged
//! or served. Each write makes a new generation with a fresh etag; `If-Match` compares against
//! the committed row. With PostgreSQL, [`follow`] applies what other replicas commit.
//!
//! A served task is small: its name, DET, z (in f16), generation, etag and time, plus a shared
//! [`LabelSet`]. Label embeddings (1.5 KB per label at H = 384) depend only on the labels, so
//! tasks with the same labels share one set in memory ([`LabelSets`]) and one row in the
//! database, keyed by the model that made them: a restart does not recompute them.

mod backend;
mod code;
mod db;
mod export;
pub(crate) mod follow;
mod head;
mod jobs;
mod location;
mod postgres;

pub use backend::{Backend, Changes};
pub use code::ServedCode;
pub(crate) use db::now_ms;
pub use db::{Database, Record};
pub use export::export_tasks;
pub use head::ServedHead;
pub use jobs::{JobRecord, JobResult, JobState};
pub use location::{DATABASE_FILE, LocationError, StoreLocation};
pub use postgres::{PostgresStore, SCHEMA_VERSION as POSTGRES_SCHEMA_VERSION};

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

use sha2::{Digest, Sha256};

use deltaspace_core::classifier::LabelSet;
use deltaspace_core::det::DetKind;
use deltaspace_core::task::{Label, Task};

/// What can go wrong storing tasks.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("task database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("task database {path}: {message}")]
    Open { path: String, message: String },
    /// PostgreSQL refused a statement (not a lost connection: that is [`StoreError::Unavailable`]).
    #[error("task store (PostgreSQL)")]
    Postgres(#[source] ::postgres::Error),
    /// The shared store cannot be reached now; nothing was committed by the call that met it, or
    /// its commit was not confirmed. Writes are refused until it is back.
    #[error("the task store is unavailable ({reason})")]
    Unavailable {
        reason: String,
        #[source]
        source: Option<::postgres::Error>,
    },
    /// The store's schema is newer than this build can use.
    #[error(
        "the task store's schema is at version {found} and needs a deltaspace that knows version \
         {needs} or later; this build knows {ours}: upgrade this replica"
    )]
    SchemaTooNew { found: i32, needs: i32, ours: i32 },
    #[error(transparent)]
    Location(#[from] LocationError),
    /// A TLS connector for PostgreSQL could not be made.
    #[error("TLS for the task store")]
    Tls(#[source] native_tls::Error),
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
    #[error("stored job {id:?} is unreadable: {message}")]
    CorruptJob { id: String, message: String },
    #[error("the server already serves max_tasks = {max} tasks; delete one first")]
    Full { max: usize },
    /// What a visitor of [`Backend::each`] stopped the scan with.
    #[error(transparent)]
    Visit(Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// Why the store cannot take a call now, where that is what failed (503 and `Retry-After`
    /// rather than 500): PostgreSQL unreachable or past a session bound, or SQLite's file held by
    /// another writer (a `deltaspace import`, say) past its busy timeout.
    pub fn unavailable(&self) -> Option<&str> {
        use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
        match self {
            StoreError::Unavailable { reason, .. } => Some(reason),
            StoreError::Sqlite(error)
                if matches!(
                    error.sqlite_error_code(),
                    Some(DatabaseBusy | DatabaseLocked)
                ) =>
            {
                Some("the task database is busy: another writer held it past the busy timeout")
            }
            _ => None,
        }
    }
}

/// An error with its causes, for one log line.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
    pub(crate) fn check(&self, name: &str, current: Option<&str>) -> Result<(), StoreError> {
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

/// A task as served: validated, at one generation, its labels embedded.
#[derive(Debug)]
pub struct StoredTask {
    pub name: Arc<str>,
    /// The DET z was found with; predictions use it unless they name another.
    pub det: DetKind,
    /// The task's code, in f16 (`ServedCode`).
    pub z: ServedCode,
    /// Labels and their embeddings, shared by every task with the same labels.
    pub labels: Arc<LabelSet>,
    /// Class priors and tuned prototypes, when the task has a head.
    pub head: Option<Box<ServedHead>>,
    /// 1 for a new task, +1 per replacement.
    pub generation: u64,
    /// Names this exact generation; `If-Match` takes it.
    pub etag: String,
    /// When this generation was committed, in milliseconds since the Unix epoch.
    pub updated_at_ms: i64,
    /// The store-wide change that committed it (0 for a store that counts none): a replica
    /// applies another's change only over an older one.
    pub change: u64,
}

impl StoredTask {
    fn new(task: Task, labels: Arc<LabelSet>, record: &Record) -> Self {
        Self {
            name: Arc::from(task.name),
            det: task.det,
            z: ServedCode::new(&task.z),
            labels,
            head: task.head.as_ref().map(|h| Box::new(ServedHead::new(h))),
            generation: record.generation,
            etag: record.etag.clone(),
            updated_at_ms: record.updated_at_ms,
            change: record.change,
        }
    }

    /// The task as uploaded, for `subspace_id` (every served task belongs to the loaded one).
    pub fn to_task(&self, subspace_id: &str) -> Task {
        Task {
            name: self.name.to_string(),
            det: self.det,
            z: self.z.to_vec(),
            labels: self.labels.labels.clone(),
            head: self.head.as_ref().map(|h| h.to_head()),
            subspace: Some(subspace_id.to_string()),
        }
    }
}

/// Names a list of labels (names and descriptions, in order): the key under which their
/// embeddings are shared in memory and cached in the database.
pub fn labels_key(labels: &[Label]) -> String {
    let mut hasher = Sha256::new();
    for label in labels {
        for text in [&label.name, &label.description] {
            hasher.update((text.len() as u64).to_le_bytes());
            hasher.update(text.as_bytes());
        }
    }
    format!("{:x}", hasher.finalize())
}

/// The label sets in use, one per distinct list of labels, held weakly: a set lives as long as
/// some served task (or request) holds it.
#[derive(Debug, Default)]
pub struct LabelSets {
    inner: Mutex<WeakSets>,
    /// One lock per set being made (`admit::label_set`), so concurrent makers of one set take
    /// turns and only the first embeds it.
    turns: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Sets the frozen model embedded since the server started (the rest came from memory or
    /// the store's cache): `deltaspace_label_sets_embedded_total`.
    embedded: AtomicU64,
}

#[derive(Debug, Default)]
struct WeakSets {
    sets: HashMap<String, Weak<LabelSet>>,
    /// Sweep out dead entries when the table reaches this size.
    sweep_at: usize,
}

impl LabelSets {
    /// The set in use under `key` ([`labels_key`]), if any task holds one.
    pub fn get(&self, key: &str) -> Option<Arc<LabelSet>> {
        self.lock().sets.get(key).and_then(Weak::upgrade)
    }

    /// The set in use under `key`, or `set` itself, now registered.
    pub fn intern(&self, key: &str, set: Arc<LabelSet>) -> Arc<LabelSet> {
        let mut inner = self.lock();
        if let Some(existing) = inner.sets.get(key).and_then(Weak::upgrade) {
            return existing;
        }
        // Sweep when the table has grown to twice what was alive at the last sweep: amortized
        // O(1) per insert, and at most about twice the sets in use, however tasks churn.
        if inner.sets.len() >= inner.sweep_at {
            inner.sets.retain(|_, weak| weak.strong_count() > 0);
            inner.sweep_at = (2 * inner.sets.len()).max(64);
        }
        inner.sets.insert(key.to_string(), Arc::downgrade(&set));
        set
    }

    /// The lock to hold while making the set `key`: the same for every caller until none holds
    /// it.
    pub fn turn(&self, key: &str) -> Arc<Mutex<()>> {
        let mut turns = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
        // Only the table holds a finished turn: forget it (there are as many as sets being made).
        turns.retain(|_, turn| Arc::strong_count(turn) > 1);
        turns.entry(key.to_string()).or_default().clone()
    }

    /// Counts a set the frozen model has just embedded.
    pub fn count_embedded(&self) {
        self.embedded.fetch_add(1, Ordering::Relaxed);
    }

    /// How many sets the frozen model has embedded since the server started.
    pub fn embedded(&self) -> u64 {
        self.embedded.load(Ordering::Relaxed)
    }

    /// How many distinct label sets are in use.
    pub fn len(&self) -> usize {
        self.lock()
            .sets
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    /// True when no label set is in use.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WeakSets> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Opens the backend `location` names; the caller does not learn which kind it got.
pub fn open(location: &StoreLocation) -> Result<Box<dyn Backend>, StoreError> {
    Ok(match location {
        StoreLocation::Sqlite(path) => Box::new(Database::open(path)?),
        StoreLocation::Postgres(url) => Box::new(PostgresStore::open(url)?),
    })
}

/// The served tasks: a sorted map (for paging) behind a lock, and the backend behind another.
///
/// Both are std locks: neither is held across an await, and writes take the database lock first,
/// then the map's, so a reader never sees a task that is not committed. Changes other replicas
/// commit are applied under the database lock too ([`TaskStore::apply`]), so they never overtake
/// this replica's own writes.
pub struct TaskStore {
    db: Mutex<Box<dyn Backend>>,
    tasks: RwLock<BTreeMap<Arc<str>, Arc<StoredTask>>>,
    labels: LabelSets,
    /// New tasks beyond this many are refused (tasks loaded at start are served regardless).
    max_tasks: usize,
    /// Names this replica deleted, with the deleting change, until the follower has applied
    /// everything up to it: an older write of the name read before the delete must not bring it
    /// back.
    deleted: Mutex<HashMap<Arc<str>, u64>>,
    /// The store's last change when the tasks were loaded, for a store other replicas write.
    loaded_at: Option<u64>,
}

/// A change from another replica, ready to serve: the row and, for a task this replica can
/// serve, the task and its labels ([`follow`] makes them outside the database lock).
pub struct Applicable {
    pub record: Record,
    /// `None` when the row cannot be served here (another subspace, invalid): the name stops
    /// being served, as at start-up.
    pub served: Option<(Task, Arc<LabelSet>)>,
}

impl TaskStore {
    /// Wraps an open backend; tasks are added with [`TaskStore::insert_loaded`].
    pub fn new(db: Box<dyn Backend>) -> Self {
        Self {
            db: Mutex::new(db),
            tasks: RwLock::new(BTreeMap::new()),
            labels: LabelSets::default(),
            max_tasks: usize::MAX,
            deleted: Mutex::new(HashMap::new()),
            loaded_at: None,
        }
    }

    /// Records the store's last change before the tasks were loaded: following other replicas
    /// starts there.
    #[must_use]
    pub fn with_loaded_at(mut self, change: Option<u64>) -> Self {
        self.loaded_at = change;
        self
    }

    /// The store's last change before the tasks were loaded; `None` for a store that only this
    /// process writes.
    pub fn loaded_at(&self) -> Option<u64> {
        self.loaded_at
    }

    /// Whether other processes write this store too (replicas on PostgreSQL). Then memory may lag
    /// the database by a write another replica made and this one has not yet applied, and only
    /// the database can check a precondition.
    pub fn shared(&self) -> bool {
        self.loaded_at.is_some()
    }

    /// Refuses to create tasks beyond `max` ([`StoreError::Full`]); replacing one still works.
    #[must_use]
    pub fn with_max_tasks(mut self, max: usize) -> Self {
        self.max_tasks = max;
        self
    }

    /// Runs `f` on the backend (blocking: call from a blocking thread).
    pub fn with_db<T>(&self, f: impl FnOnce(&mut dyn Backend) -> T) -> T {
        f(self
            .db
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut())
    }

    /// The label sets of the served tasks.
    pub fn label_sets(&self) -> &LabelSets {
        &self.labels
    }

    /// The task being served under `name`.
    pub fn get(&self, name: &str) -> Option<Arc<StoredTask>> {
        self.read().get(name).cloned()
    }

    /// How many tasks are served.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Refuses ([`StoreError::Full`]) when `new` more tasks would exceed `max_tasks`, as served
    /// now; a write checks again against the database, where replicas' tasks count too.
    pub fn check_room(&self, new: usize) -> Result<(), StoreError> {
        match self.len().saturating_add(new) > self.max_tasks {
            true => Err(StoreError::Full {
                max: self.max_tasks,
            }),
            false => Ok(()),
        }
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
        let start = after.map_or(Unbounded, Excluded);
        let mut page: Vec<Arc<StoredTask>> = tasks
            .range::<str, _>((start, Unbounded))
            .take(limit + 1)
            .map(|(_, task)| task.clone())
            .collect();
        let next = (page.len() > limit).then(|| {
            page.truncate(limit);
            page.last().map(|t| t.name.to_string()).unwrap_or_default()
        });
        (page, next)
    }

    /// Commits a task with its label set (embedded by `model_key`), then serves it; returns it
    /// and whether it is new.
    pub fn put(
        &self,
        task: Task,
        labels: Arc<LabelSet>,
        subspace_id: &str,
        model_key: &str,
        expect: &Precondition,
    ) -> Result<(Arc<StoredTask>, bool), StoreError> {
        let mut db = self.db.lock().unwrap_or_else(PoisonError::into_inner);
        let key = labels_key(&labels.labels);
        let labels = self.labels.intern(&key, labels);
        let cache = (model_key, key.as_str(), &labels.embeddings);
        // The backend counts stored tasks inside the write's transaction, so racing uploads (to
        // this replica or another) cannot overshoot the bound.
        let (record, created) = db.write(&task, subspace_id, cache, expect, self.max_tasks)?;
        let stored = Arc::new(StoredTask::new(task, labels, &record));
        self.write().insert(stored.name.clone(), stored.clone());
        Ok((stored, created))
    }

    /// Deletes a task of `subspace_id` from the database, then stops serving it.
    pub fn delete(
        &self,
        name: &str,
        subspace_id: &str,
        expect: &Precondition,
    ) -> Result<(), StoreError> {
        let mut db = self.db.lock().unwrap_or_else(PoisonError::into_inner);
        let change = db.delete(name, subspace_id, expect)?;
        self.write().remove(name);
        // Remembered even when this replica did not serve the name yet: a catch-up that read
        // another replica's create before this delete must not bring the task back.
        if change > 0 {
            self.deleted_names().insert(Arc::from(name), change);
        }
        Ok(())
    }

    /// Applies changes other replicas committed (and this one's, which it skips), up to change
    /// `last`: a row is served unless this replica already serves the name at that change or
    /// later, or deleted it since; a name deleted is dropped unless served at a later change.
    /// Returns how many served tasks changed.
    pub fn apply(&self, written: Vec<Applicable>, deleted: &[(String, u64)], last: u64) -> usize {
        let _db = self.db.lock().unwrap_or_else(PoisonError::into_inner);
        let mut tombstones = self.deleted_names();
        let mut tasks = self.write();
        let mut applied = 0;
        for Applicable { record, served } in written {
            let newer = |at: u64| at >= record.change;
            let current = tasks.get(record.name.as_str()).map(|t| t.change);
            if current.is_some_and(newer)
                || tombstones
                    .get(record.name.as_str())
                    .is_some_and(|&c| newer(c))
            {
                continue;
            }
            applied += 1;
            match served {
                Some((task, labels)) => {
                    let stored = Arc::new(StoredTask::new(task, labels, &record));
                    tasks.insert(stored.name.clone(), stored);
                }
                None => {
                    tasks.remove(record.name.as_str());
                }
            }
        }
        for (name, change) in deleted {
            if tasks.get(name.as_str()).is_some_and(|t| t.change < *change) {
                tasks.remove(name.as_str());
                applied += 1;
            }
        }
        // A tombstone at or below `last` has done its work: every change read from now on is
        // later than it.
        tombstones.retain(|_, change| *change > last);
        applied
    }

    /// Serves a task read from the database at start-up, with its label set from
    /// [`TaskStore::label_sets`] (got or interned there).
    pub fn insert_loaded(&self, record: &Record, task: Task, labels: Arc<LabelSet>) {
        let stored = Arc::new(StoredTask::new(task, labels, record));
        self.write().insert(stored.name.clone(), stored);
    }

    fn deleted_names(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, u64>> {
        self.deleted.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Arc<str>, Arc<StoredTask>>> {
        self.tasks.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<Arc<str>, Arc<StoredTask>>> {
        self.tasks.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::db::tests::{embeddings, task};
    use super::*;

    fn label_set(task: &Task) -> Arc<LabelSet> {
        Arc::new(LabelSet {
            labels: task.labels.clone(),
            embeddings: embeddings(),
        })
    }

    fn put(store: &TaskStore, task: Task) -> Result<(Arc<StoredTask>, bool), StoreError> {
        let labels = label_set(&task);
        store.put(task, labels, "s@1", "m", &Precondition::None)
    }

    fn store(dir: &tempfile::TempDir) -> TaskStore {
        TaskStore::new(Box::new(
            Database::open(&dir.path().join("t.sqlite3")).unwrap(),
        ))
    }

    /// Makers of one set share its lock while any holds it, so the second waits for the first;
    /// another set's maker does not wait; a turn nobody holds is forgotten.
    #[test]
    fn makers_of_one_label_set_take_turns() {
        let sets = LabelSets::default();
        let first = sets.turn("a");
        let held = first.lock().unwrap();
        let second = sets.turn("a");
        assert!(Arc::ptr_eq(&first, &second));
        assert!(second.try_lock().is_err(), "the second maker waits");
        assert!(
            sets.turn("b").try_lock().is_ok(),
            "another set is not held up"
        );
        drop(held);
        assert!(second.try_lock().is_ok());
        drop((first, second));
        let _c = sets.turn("c");
        let turns = sets.turns.lock().unwrap();
        assert_eq!(
            turns.keys().collect::<Vec<_>>(),
            ["c"],
            "finished turns are forgotten"
        );
    }

    #[test]
    fn pages_follow_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        for name in ["c", "a", "b"] {
            put(&store, task(name, 1.0)).unwrap();
        }
        let (page, next) = store.page(None, 2);
        assert_eq!(page.len(), 2);
        assert_eq!(next.as_deref(), Some("b"));
        let (page, next) = store.page(next.as_deref(), 2);
        assert_eq!(&*page[0].name, "c");
        assert_eq!(next, None);
        store.delete("a", "s@1", &Precondition::None).unwrap();
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn max_tasks_bounds_creation_but_not_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).with_max_tasks(2);
        put(&store, task("a", 1.0)).unwrap();
        put(&store, task("b", 1.0)).unwrap();
        assert!(matches!(
            put(&store, task("c", 1.0)),
            Err(StoreError::Full { max: 2 })
        ));
        let (replaced, created) = put(&store, task("a", 1.0)).unwrap();
        assert!(!created);
        assert_eq!(replaced.generation, 2);
        store.delete("b", "s@1", &Precondition::None).unwrap();
        put(&store, task("c", 1.0)).unwrap();
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn tasks_with_the_same_labels_share_one_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let (a, _) = put(&store, task("a", 1.0)).unwrap();
        let (b, _) = put(&store, task("b", 2.0)).unwrap();
        assert!(Arc::ptr_eq(&a.labels, &b.labels));
        let mut other = task("c", 1.0);
        other.labels[0].description = "something else.".into();
        let (c, _) = put(&store, other).unwrap();
        assert!(!Arc::ptr_eq(&a.labels, &c.labels));
        assert_eq!(store.label_sets().len(), 2);
        // A set lives while a task holds it.
        drop(c);
        store.delete("c", "s@1", &Precondition::None).unwrap();
        assert_eq!(store.label_sets().len(), 1);
        let embeddings = store.with_db(|db| db.label_embeddings("m")).unwrap();
        assert_eq!(embeddings.len(), 2, "the database keeps both sets");
    }

    #[test]
    fn a_stored_task_reads_back_as_uploaded() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let (stored, created) = put(&store, task("a", 1.5)).unwrap();
        assert!(created);
        assert_eq!(stored.to_task("s@1"), task("a", 1.5));
    }

    /// A row another replica committed at `change`.
    fn record(name: &str, generation: u64, change: u64) -> Record {
        Record {
            name: name.into(),
            task_json: String::new(),
            generation,
            etag: format!("e{change}"),
            subspace_id: "s@1".into(),
            updated_at_ms: 0,
            embeddings: None,
            change,
        }
    }

    fn served(name: &str, generation: u64, change: u64) -> Applicable {
        let task = task(name, generation as f32);
        let labels = label_set(&task);
        Applicable {
            record: record(name, generation, change),
            served: Some((task, labels)),
        }
    }

    #[test]
    fn changes_apply_in_change_order_whatever_order_they_arrive_in() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        assert_eq!(
            store.apply(vec![served("a", 2, 5), served("b", 1, 6)], &[], 6),
            2
        );
        assert_eq!(store.get("a").unwrap().generation, 2);
        // An older change of a name read late does not replace a newer one.
        assert_eq!(store.apply(vec![served("a", 1, 3)], &[], 6), 0);
        assert_eq!(store.get("a").unwrap().change, 5);
        // A deletion removes what it follows, not what came after it.
        assert_eq!(
            store.apply(vec![], &[("a".into(), 4), ("b".into(), 7)], 7),
            1
        );
        assert_eq!(store.get("a").unwrap().generation, 2);
        assert!(store.get("b").is_none());
        // A row this replica cannot serve stops being served.
        let unserved = Applicable {
            record: record("a", 3, 8),
            served: None,
        };
        assert_eq!(store.apply(vec![unserved], &[], 8), 1);
        assert!(store.is_empty());
    }

    #[test]
    fn labels_key_separates_names_from_descriptions() {
        let label = |name: &str, description: &str| Label {
            name: name.into(),
            description: description.into(),
        };
        assert_ne!(
            labels_key(&[label("ab", "c")]),
            labels_key(&[label("a", "bc")])
        );
        // Order is part of a set (its embeddings are rows in label order).
        assert_ne!(
            labels_key(&[label("a", "A."), label("b", "B.")]),
            labels_key(&[label("b", "B."), label("a", "A.")])
        );
        // Stored keys name cached embeddings in every database: the key must not change.
        assert_eq!(
            labels_key(&[label("a", "b")]),
            "cf6ab613e3942391f88ed698557e1680f160bd10e88c6b668c50360c10930e2b"
        );
    }
}
