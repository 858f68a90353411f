//! The SQLite side of the store: one connection, a `tasks` table (the task as JSON, its
//! generation, etag and subspace id), a `label_embeddings` table (label-description embeddings
//! by model and label set, shared by every task with those labels) and a `seeded` table. Every
//! write is one transaction that checks its precondition against the committed row.
//!
//! Schema version 1 kept each task's label embeddings in its own row (`tasks.embeddings`); version
//! 2 reads them from there when `label_embeddings` lacks them, and writes them only to
//! `label_embeddings`.

use std::collections::HashMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use ndarray::Array2;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use sha2::{Digest, Sha256};

use super::jobs::{JobRecord, JobState};
use super::{Backend, Precondition, StoreError};
use deltaspace_core::task::Task;

/// Writes take the write lock when they begin, so a read-then-write transaction never meets
/// another writer's commit in between (SQLITE_BUSY at once, busy timeout or not): a server and a
/// `deltaspace import` can share a database.
const IMMEDIATE: TransactionBehavior = TransactionBehavior::Immediate;

/// The schema this build writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 2;

/// A row of the database, before validation.
#[derive(Debug, Clone)]
pub struct Record {
    pub name: String,
    pub task_json: String,
    pub generation: u64,
    pub etag: String,
    pub subspace_id: String,
    pub updated_at_ms: i64,
    /// (model key, values) of label embeddings a version-1 database kept in the row.
    pub embeddings: Option<(String, Vec<f32>)>,
    /// The store-wide change that wrote this row ([`super::Backend::last_change`]); 0 in a store
    /// that counts no changes.
    pub change: u64,
}

/// Label embeddings to cache with a write: (model key, label-set key, [labels, H]).
pub type LabelCache<'a> = (&'a str, &'a str, &'a Array2<f32>);

/// The SQLite side: one connection; writes run in a transaction that checks the precondition.
pub struct Database {
    connection: Connection,
    /// Stored tasks per subspace id, for `max_tasks` (a concurrent `deltaspace import` is not
    /// bounded by it anyway).
    counts: Counts,
}

impl Database {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_error = |message: String| StoreError::Open {
            path: path.display().to_string(),
            message,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| open_error(e.to_string()))?;
        }
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = connection.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(open_error(format!(
                "schema version {version} is newer than this build's {SCHEMA_VERSION}"
            )));
        }
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS tasks (
                name TEXT PRIMARY KEY,
                generation INTEGER NOT NULL,
                etag TEXT NOT NULL,
                subspace_id TEXT NOT NULL,
                task_json TEXT NOT NULL,
                updated_at_ms INTEGER NOT NULL,
                embeddings_model TEXT,
                embeddings BLOB
            );
            CREATE TABLE IF NOT EXISTS label_embeddings (
                model TEXT NOT NULL,
                labels_key TEXT NOT NULL,
                embeddings BLOB NOT NULL,
                PRIMARY KEY (model, labels_key)
            );
            CREATE TABLE IF NOT EXISTS seeded (
                name TEXT PRIMARY KEY,
                at_ms INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS jobs (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                id TEXT NOT NULL UNIQUE,
                owner TEXT NOT NULL,
                state TEXT NOT NULL,
                record TEXT NOT NULL
            );",
        )?;
        connection.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(Self {
            connection,
            counts: Counts::default(),
        })
    }
}

/// Stored tasks per subspace id: counted on first need, then moved by this connection's writes,
/// and counted again once another connection (a `deltaspace import` beside the server) has
/// committed, which SQLite's `data_version` tells.
#[derive(Debug, Default)]
struct Counts {
    by_subspace: HashMap<String, usize>,
    /// The `data_version` the counts were made at.
    data_version: Option<i64>,
}

impl Counts {
    /// How many tasks of `subspace_id` are stored.
    fn of(&mut self, connection: &Connection, subspace_id: &str) -> rusqlite::Result<usize> {
        let version: i64 = connection.pragma_query_value(None, "data_version", |row| row.get(0))?;
        if self.data_version != Some(version) {
            self.by_subspace.clear();
            self.data_version = Some(version);
        }
        if let Some(&count) = self.by_subspace.get(subspace_id) {
            return Ok(count);
        }
        let count: i64 = connection.query_row(
            "SELECT count(*) FROM tasks WHERE subspace_id = ?1",
            [subspace_id],
            |row| row.get(0),
        )?;
        let count = usize::try_from(count).unwrap_or(0);
        self.by_subspace.insert(subspace_id.to_string(), count);
        Ok(count)
    }

    /// A committed write moved one task from subspace `from` (none: it was new) to `to` (none:
    /// deleted).
    fn moved(&mut self, from: Option<&str>, to: Option<&str>) {
        if from == to {
            return;
        }
        if let Some(count) = from.and_then(|id| self.by_subspace.get_mut(id)) {
            *count = count.saturating_sub(1);
        }
        if let Some(count) = to.and_then(|id| self.by_subspace.get_mut(id)) {
            *count += 1;
        }
    }
}

impl Backend for Database {
    fn each(
        &self,
        visit: &mut dyn FnMut(Record) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT name, task_json, generation, etag, subspace_id, updated_at_ms,
                embeddings_model, embeddings FROM tasks ORDER BY name",
        )?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let model: Option<String> = row.get(6)?;
            let blob: Option<Vec<u8>> = row.get(7)?;
            visit(Record {
                name: row.get(0)?,
                task_json: row.get(1)?,
                generation: row.get(2)?,
                etag: row.get(3)?,
                subspace_id: row.get(4)?,
                updated_at_ms: row.get(5)?,
                embeddings: model.zip(blob).map(|(m, b)| (m, from_le_bytes(&b))),
                change: 0,
            })?;
        }
        Ok(())
    }

    fn label_embeddings(&self, model: &str) -> Result<HashMap<String, Vec<f32>>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT labels_key, embeddings FROM label_embeddings WHERE model = ?1")?;
        let rows = statement.query_map([model], |row| {
            let blob: Vec<u8> = row.get(1)?;
            Ok((row.get(0)?, from_le_bytes(&blob)))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn label_embedding(&self, model: &str, key: &str) -> Result<Option<Vec<f32>>, StoreError> {
        let blob: Option<Vec<u8>> = self
            .connection
            .query_row(
                "SELECT embeddings FROM label_embeddings WHERE model = ?1 AND labels_key = ?2",
                params![model, key],
                |row| row.get(0),
            )
            .optional()?;
        Ok(blob.map(|b| from_le_bytes(&b)))
    }

    fn forget_label_embeddings(
        &mut self,
        model: &str,
        keys: &[String],
    ) -> Result<usize, StoreError> {
        let transaction = self.connection.transaction_with_behavior(IMMEDIATE)?;
        let mut forgotten = 0;
        for key in keys {
            forgotten += transaction.execute(
                "DELETE FROM label_embeddings WHERE model = ?1 AND labels_key = ?2",
                params![model, key],
            )?;
        }
        transaction.commit()?;
        Ok(forgotten)
    }

    fn save_label_embeddings(
        &mut self,
        model: &str,
        sets: &[(&str, &Array2<f32>)],
    ) -> Result<(), StoreError> {
        let transaction = self.connection.transaction_with_behavior(IMMEDIATE)?;
        for &(key, values) in sets {
            let values: Vec<f32> = values.iter().copied().collect();
            transaction.execute(
                "INSERT OR REPLACE INTO label_embeddings (model, labels_key, embeddings)
                 VALUES (?1, ?2, ?3)",
                params![model, key, to_le_bytes(&values)],
            )?;
        }
        transaction.commit()?;
        Ok(())
    }

    fn drop_row_embeddings(&mut self, model: &str, subspace_id: &str) -> Result<(), StoreError> {
        self.connection.execute(
            "UPDATE tasks SET embeddings_model = NULL, embeddings = NULL
             WHERE embeddings_model = ?1 AND subspace_id = ?2",
            params![model, subspace_id],
        )?;
        Ok(())
    }

    fn write(
        &mut self,
        task: &Task,
        subspace_id: &str,
        labels: LabelCache<'_>,
        expect: &Precondition,
        max_tasks: usize,
    ) -> Result<(Record, bool), StoreError> {
        let transaction = self.connection.transaction_with_behavior(IMMEDIATE)?;
        let current = current_row(&transaction, &task.name)?;
        let joins = current
            .as_ref()
            .is_none_or(|row| row.subspace_id != subspace_id);
        if joins && self.counts.of(&transaction, subspace_id)? >= max_tasks {
            return Err(StoreError::Full { max: max_tasks });
        }
        let (record, created) = upsert(&transaction, task, subspace_id, expect, current.as_ref())?;
        insert_label_embeddings(&transaction, labels)?;
        transaction.commit()?;
        let from = current.as_ref().map(|row| row.subspace_id.as_str());
        self.counts.moved(from, Some(subspace_id));
        Ok((record, created))
    }

    fn write_many(&mut self, tasks: &[Task], subspace_id: &str) -> Result<usize, StoreError> {
        let transaction = self.connection.transaction_with_behavior(IMMEDIATE)?;
        let mut created = 0;
        for task in tasks {
            let current = current_row(&transaction, &task.name)?;
            let none = &Precondition::None;
            created +=
                usize::from(upsert(&transaction, task, subspace_id, none, current.as_ref())?.1);
        }
        transaction.commit()?;
        // Bulk writes move tasks between subspaces too: count again when next needed.
        self.counts = Counts::default();
        Ok(created)
    }

    fn delete(
        &mut self,
        name: &str,
        subspace_id: &str,
        expect: &Precondition,
    ) -> Result<u64, StoreError> {
        let transaction = self.connection.transaction_with_behavior(IMMEDIATE)?;
        let current = current_row(&transaction, name)?;
        let Some(current) = current.filter(|row| row.subspace_id == subspace_id) else {
            return Err(StoreError::NotFound(name.to_string()));
        };
        expect.check(name, Some(&current.etag))?;
        transaction.execute("DELETE FROM tasks WHERE name = ?1", [name])?;
        transaction.commit()?;
        self.counts.moved(Some(&current.subspace_id), None);
        Ok(0)
    }

    fn mark_seeded(&self, name: &str) -> Result<bool, StoreError> {
        let inserted = self.connection.execute(
            "INSERT OR IGNORE INTO seeded (name, at_ms) VALUES (?1, ?2)",
            params![name, now_ms()],
        )?;
        Ok(inserted == 1)
    }

    fn was_seeded(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .connection
            .query_row("SELECT 1 FROM seeded WHERE name = ?1", [name], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn stored_subspace(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .connection
            .query_row(
                "SELECT subspace_id FROM tasks WHERE name = ?1",
                [name],
                |row| row.get(0),
            )
            .optional()?)
    }

    fn save_job(&mut self, job: &JobRecord) -> Result<(), StoreError> {
        let transaction = self.connection.transaction_with_behavior(IMMEDIATE)?;
        let stored = transaction
            .query_row("SELECT record FROM jobs WHERE id = ?1", [&job.job], |row| {
                row.get::<_, String>(0)
            })
            .optional()?
            .map(|text| parse_job(&job.job, &text))
            .transpose()?;
        let Some(job) = job.saved_over(stored.as_ref()) else {
            return Ok(());
        };
        let record = job_text(&job)?;
        transaction.execute(
            "INSERT INTO jobs (id, owner, state, record) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET owner = ?2, state = ?3, record = ?4",
            params![job.job, job.owner, job.state.name(), record],
        )?;
        transaction.commit()?;
        Ok(())
    }

    fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.connection
            .query_row("SELECT record FROM jobs WHERE id = ?1", [id], |row| {
                row.get::<_, String>(0)
            })
            .optional()?
            .map(|text| parse_job(id, &text))
            .transpose()
    }

    fn jobs(&self, after: Option<&str>, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT id, record FROM jobs
             WHERE ?1 IS NULL OR seq < (SELECT seq FROM jobs WHERE id = ?1)
             ORDER BY seq DESC LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        read_jobs(&mut statement, params![after, limit])
    }

    fn unfinished_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT id, record FROM jobs WHERE state IN ('queued', 'running') ORDER BY seq",
        )?;
        read_jobs(&mut statement, [])
    }

    fn fail_unfinished_jobs(&mut self, owner: &str, reason: &str) -> Result<usize, StoreError> {
        let transaction = self.connection.transaction_with_behavior(IMMEDIATE)?;
        let unfinished: Vec<(String, String)> = {
            let mut statement = transaction.prepare(
                "SELECT id, record FROM jobs WHERE owner = ?1 AND state IN ('queued', 'running')",
            )?;
            let rows = statement.query_map([owner], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut failed = 0;
        for (id, text) in &unfinished {
            let Some(mut job) = readable_job(id, text) else {
                continue;
            };
            job.state = JobState::Failed;
            job.error = Some(reason.to_string());
            let record = job_text(&job)?;
            transaction.execute(
                "UPDATE jobs SET state = ?2, record = ?3 WHERE id = ?1",
                params![id, job.state.name(), record],
            )?;
            failed += 1;
        }
        transaction.commit()?;
        Ok(failed)
    }
}

/// The jobs a `SELECT id, record` statement returns, parsed.
fn read_jobs(
    statement: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<JobRecord>, StoreError> {
    let rows = statement.query_map(params, |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
    })?;
    let mut jobs = Vec::new();
    for row in rows {
        let (id, text) = row?;
        jobs.extend(readable_job(&id, &text));
    }
    Ok(jobs)
}

/// The job record `text` of row `id`, if this build can read it. A row it cannot (one written
/// by a newer build, or damaged) is left as it is and skipped with a warning, so that it
/// neither hides the other jobs nor stops their leases from expiring.
pub(super) fn readable_job(id: &str, text: &str) -> Option<JobRecord> {
    match parse_job(id, text) {
        Ok(job) => Some(job),
        Err(error) => {
            tracing::warn!(job = id, %error, "a job record this build cannot read; skipped");
            None
        }
    }
}

/// A job record as the `record` column holds it.
pub(super) fn job_text(job: &JobRecord) -> Result<String, StoreError> {
    serde_json::to_string(job).map_err(|e| StoreError::CorruptJob {
        id: job.job.clone(),
        message: e.to_string(),
    })
}

pub(super) fn parse_job(id: &str, text: &str) -> Result<JobRecord, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::CorruptJob {
        id: id.to_string(),
        message: e.to_string(),
    })
}

/// What a write needs to know of the row it replaces.
pub(super) struct CurrentRow {
    pub(super) generation: u64,
    pub(super) etag: String,
    pub(super) subspace_id: String,
}

/// The committed row of `name`, read inside the write's transaction.
fn current_row(connection: &Connection, name: &str) -> rusqlite::Result<Option<CurrentRow>> {
    connection
        .query_row(
            "SELECT generation, etag, subspace_id FROM tasks WHERE name = ?1",
            [name],
            |row| {
                Ok(CurrentRow {
                    generation: row.get(0)?,
                    etag: row.get(1)?,
                    subspace_id: row.get(2)?,
                })
            },
        )
        .optional()
}

/// A task's row as its next generation: its JSON, generation, etag and time, once `expect` holds
/// against `current`. Both backends write what this makes.
pub(super) fn next_generation(
    task: &Task,
    subspace_id: &str,
    expect: &Precondition,
    current: Option<&CurrentRow>,
) -> Result<Record, StoreError> {
    let task_json = serde_json::to_string(task).map_err(|e| StoreError::Corrupt {
        name: task.name.clone(),
        message: e.to_string(),
    })?;
    expect.check(&task.name, current.map(|row| row.etag.as_str()))?;
    let generation = current.map_or(1, |row| row.generation + 1);
    let updated_at_ms = now_ms();
    Ok(Record {
        name: task.name.clone(),
        etag: etag(&task_json, generation, updated_at_ms),
        task_json,
        generation,
        subspace_id: subspace_id.to_string(),
        updated_at_ms,
        embeddings: None,
        change: 0,
    })
}

/// Writes `task` as its next generation inside `transaction` if `expect` holds against `current`.
fn upsert(
    transaction: &Transaction<'_>,
    task: &Task,
    subspace_id: &str,
    expect: &Precondition,
    current: Option<&CurrentRow>,
) -> Result<(Record, bool), StoreError> {
    let record = next_generation(task, subspace_id, expect, current)?;
    transaction.execute(
        "INSERT INTO tasks (name, generation, etag, subspace_id, task_json, updated_at_ms,
                            embeddings_model, embeddings)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, NULL)
         ON CONFLICT(name) DO UPDATE SET generation = ?2, etag = ?3, subspace_id = ?4,
            task_json = ?5, updated_at_ms = ?6, embeddings_model = NULL, embeddings = NULL",
        params![
            record.name,
            record.generation,
            record.etag,
            record.subspace_id,
            record.task_json,
            record.updated_at_ms
        ],
    )?;
    Ok((record, current.is_none()))
}

fn insert_label_embeddings(
    connection: &Connection,
    (model, key, values): LabelCache<'_>,
) -> rusqlite::Result<usize> {
    let values: Vec<f32> = values.iter().copied().collect();
    connection.execute(
        "INSERT OR IGNORE INTO label_embeddings (model, labels_key, embeddings) VALUES (?1, ?2, ?3)",
        params![model, key, to_le_bytes(&values)],
    )
}

fn etag(task_json: &str, generation: u64, updated_at_ms: i64) -> String {
    let mut hasher = Sha256::new();
    hasher.update(task_json.as_bytes());
    hasher.update(generation.to_le_bytes());
    hasher.update(updated_at_ms.to_le_bytes());
    format!("{:x}", hasher.finalize())[..16].to_string()
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(super) fn to_le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub(super) fn from_le_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use deltaspace_core::det::DetKind;
    use deltaspace_core::task::Label;

    pub(in crate::store) fn task(name: &str, z0: f32) -> Task {
        Task {
            name: name.into(),
            det: DetKind::Adapter,
            z: vec![z0, 0.5],
            labels: ["no", "yes"]
                .map(|n| Label {
                    name: n.into(),
                    description: format!("{n}."),
                })
                .to_vec(),
            head: None,
            subspace: Some("s@1".into()),
        }
    }

    pub(in crate::store) fn embeddings() -> Array2<f32> {
        Array2::from_shape_fn((2, 3), |(r, c)| (r * 3 + c) as f32)
    }

    // Generations, preconditions, reopening, label sets, bulk writes, max_tasks and jobs: the
    // shared store suite (tests/it/store.rs) runs them on this backend and on PostgreSQL.

    #[test]
    fn a_version_1_database_opens_and_keeps_its_row_embeddings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite3");
        {
            let connection = Connection::open(&path).unwrap();
            connection
                .execute_batch(
                    "CREATE TABLE tasks (name TEXT PRIMARY KEY, generation INTEGER NOT NULL,
                        etag TEXT NOT NULL, subspace_id TEXT NOT NULL, task_json TEXT NOT NULL,
                        updated_at_ms INTEGER NOT NULL, embeddings_model TEXT, embeddings BLOB);
                     CREATE TABLE seeded (name TEXT PRIMARY KEY, at_ms INTEGER NOT NULL);
                     PRAGMA user_version = 1;",
                )
                .unwrap();
            let json = serde_json::to_string(&task("a", 1.0)).unwrap();
            connection
                .execute(
                    "INSERT INTO tasks VALUES ('a', 1, 'e1', 's@1', ?1, 0, 'm', ?2)",
                    params![json, to_le_bytes(&[1.0, 2.0])],
                )
                .unwrap();
        }
        let db = Database::open(&path).unwrap();
        let mut records = Vec::new();
        db.each(&mut |r| {
            records.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(records[0].embeddings, Some(("m".into(), vec![1.0, 2.0])));
        assert!(db.label_embeddings("m").unwrap().is_empty());
    }
}
