//! Where the task store keeps tasks durably: a [`Backend`]. [`super::TaskStore`] holds one behind
//! a lock and does not know which: the embedded SQLite database ([`super::Database`]) for one
//! machine, and, for replicas that share tasks, a database server. Every write a backend returns
//! from is committed; the precondition of a write is checked in the same transaction.

use std::collections::HashMap;
use std::path::Path;

use ndarray::Array2;

use deltaspace_core::task::Task;

use super::db::{Database, LabelCache, Record};
use super::jobs::JobRecord;
use super::{Precondition, StoreError};

/// The durable side of the task store. Blocking: call from a blocking thread.
pub trait Backend: Send {
    /// Calls `visit` on every stored task, in name order, one row at a time (a million tasks never
    /// sit in memory as rows); stops at the first error `visit` returns.
    fn each(
        &self,
        visit: &mut dyn FnMut(Record) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;

    /// Commits `task` as the next generation if `expect` holds, with its label embeddings;
    /// returns the committed row and whether the task is new.
    fn write(
        &mut self,
        task: &Task,
        subspace_id: &str,
        labels: LabelCache<'_>,
        expect: &Precondition,
    ) -> Result<(Record, bool), StoreError>;

    /// Commits many tasks in one transaction (each replaces any task of its name), for bulk
    /// imports; label embeddings are made when a server next loads them. Returns how many were new.
    fn write_many(&mut self, tasks: &[Task], subspace_id: &str) -> Result<usize, StoreError>;

    /// Deletes a task if `expect` holds.
    fn delete(&mut self, name: &str, expect: &Precondition) -> Result<(), StoreError>;

    /// Every cached label-embedding set made by `model`, by label-set key.
    fn label_embeddings(&self, model: &str) -> Result<HashMap<String, Vec<f32>>, StoreError>;

    /// Caches label embeddings made outside a write (at start-up), replacing any copy of the same
    /// key (a damaged one), in one transaction.
    fn save_label_embeddings(
        &mut self,
        model: &str,
        sets: &[(&str, &Array2<f32>)],
    ) -> Result<(), StoreError>;

    /// Drops cached label embeddings of `model` that no stored task uses any more; returns how many.
    fn forget_label_embeddings(
        &mut self,
        model: &str,
        keys: &[String],
    ) -> Result<usize, StoreError>;

    /// Drops label embeddings an older schema kept in the task rows of `subspace_id` made by
    /// `model`, once the cache holds them.
    fn drop_row_embeddings(&mut self, model: &str, subspace_id: &str) -> Result<(), StoreError>;

    /// Records that the seed task `name` was imported; false if it had been before.
    fn mark_seeded(&self, name: &str) -> Result<bool, StoreError>;

    /// True when the seed task `name` was imported before (even if since deleted).
    fn was_seeded(&self, name: &str) -> Result<bool, StoreError>;

    /// Records a tune job, replacing its previous record; its place in the list stays.
    fn save_job(&mut self, job: &JobRecord) -> Result<(), StoreError>;

    /// The job `id`, if recorded.
    fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError>;

    /// Up to `limit` jobs, newest first, after the job `after` (a cursor from the previous page).
    fn jobs(&self, after: Option<&str>, limit: usize) -> Result<Vec<JobRecord>, StoreError>;

    /// Marks every job of `owner` that is queued or running as failed with `reason` (a restart
    /// ends what the replica was doing); returns how many.
    fn fail_unfinished_jobs(&mut self, owner: &str, reason: &str) -> Result<usize, StoreError>;
}

/// The database file of the embedded store, under the data directory.
pub const DATABASE_FILE: &str = "tasks.sqlite3";

/// Opens the backend the server is configured with: today the embedded SQLite database in
/// `data_dir`.
pub fn open(data_dir: &Path) -> Result<Box<dyn Backend>, StoreError> {
    Ok(Box::new(Database::open(&data_dir.join(DATABASE_FILE))?))
}
