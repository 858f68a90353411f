//! Where the task store keeps tasks durably: a [`Backend`]. [`super::TaskStore`] holds one behind
//! a lock and does not know which: the embedded SQLite database ([`super::Database`]) for one
//! machine, and, for replicas that share tasks, a database server. Every write a backend returns
//! from is committed; the precondition of a write (and the `max_tasks` bound) is checked in the
//! same transaction.

use std::collections::HashMap;

use ndarray::Array2;

use deltaspace_core::task::Task;

use super::db::{LabelCache, Record};
use super::jobs::JobRecord;
use super::{Precondition, StoreError};

/// The durable side of the task store. Blocking: call from a blocking thread.
pub trait Backend: Send {
    /// Calls `visit` on every stored task, in name order, a row or a page of rows at a time (a
    /// million tasks never sit in memory as rows); stops at the first error `visit` returns.
    fn each(
        &self,
        visit: &mut dyn FnMut(Record) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;

    /// Commits `task` as the next generation if `expect` holds and, when the task is new, fewer
    /// than `max_tasks` tasks of `subspace_id` are stored; with its label embeddings. Returns the
    /// committed row and whether the task is new.
    fn write(
        &mut self,
        task: &Task,
        subspace_id: &str,
        labels: LabelCache<'_>,
        expect: &Precondition,
        max_tasks: usize,
    ) -> Result<(Record, bool), StoreError>;

    /// Commits many tasks in one transaction (each replaces any task of its name), for bulk
    /// imports; label embeddings are made when a server next loads them. Returns how many were new.
    fn write_many(&mut self, tasks: &[Task], subspace_id: &str) -> Result<usize, StoreError>;

    /// Deletes a task of `subspace_id` if `expect` holds; returns the change number of the
    /// deletion (0 for a store that counts no changes). A task stored for another subspace is not
    /// served, so it is not found here either: it stays untouched.
    fn delete(
        &mut self,
        name: &str,
        subspace_id: &str,
        expect: &Precondition,
    ) -> Result<u64, StoreError>;

    /// Every cached label-embedding set made by `model`, by label-set key.
    fn label_embeddings(&self, model: &str) -> Result<HashMap<String, Vec<f32>>, StoreError>;

    /// One cached label-embedding set, if `model` made it.
    fn label_embedding(&self, model: &str, key: &str) -> Result<Option<Vec<f32>>, StoreError>;

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

    /// The subspace id of the stored task `name`, whichever subspace it belongs to; `None` when
    /// no task of that name is stored.
    fn stored_subspace(&self, name: &str) -> Result<Option<String>, StoreError>;

    /// Records a tune job, replacing its previous record as [`JobRecord::saved_over`] says (an
    /// ended job's record stays, a cancel asked stays asked), in one transaction; its place in
    /// the list stays.
    fn save_job(&mut self, job: &JobRecord) -> Result<(), StoreError>;

    /// The job `id`, if recorded.
    fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError>;

    /// Up to `limit` jobs, newest first, after the job `after` (a cursor from the previous page).
    fn jobs(&self, after: Option<&str>, limit: usize) -> Result<Vec<JobRecord>, StoreError>;

    /// Every job queued or running, on any replica (to find those whose lease has expired).
    fn unfinished_jobs(&self) -> Result<Vec<JobRecord>, StoreError>;

    /// Marks every job of `owner` that is queued or running as failed with `reason` (a restart
    /// ends what the replica was doing); returns how many.
    fn fail_unfinished_jobs(&mut self, owner: &str, reason: &str) -> Result<usize, StoreError>;

    /// The last change committed to a store that other processes write too (every task write
    /// and delete is one change, numbered in commit order); `None` for a store only this process
    /// writes, which nothing needs to follow.
    fn last_change(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// What changed after change `since`, at most `limit` changes of it (a page: a replica far
    /// behind catches up a page at a time rather than holding every changed row at once): the
    /// rows written (with their change numbers) and the names deleted, for a replica to catch up
    /// with the others.
    fn changes_since(&self, since: u64, limit: usize) -> Result<Changes, StoreError> {
        let _ = (since, limit);
        Ok(Changes::default())
    }
}

/// The tasks changed after some change number, as [`Backend::changes_since`] reads them.
#[derive(Debug, Default)]
pub struct Changes {
    /// Rows written since, each at its latest change.
    pub written: Vec<Record>,
    /// Names deleted since, each with the change that deleted it.
    pub deleted: Vec<(String, u64)>,
    /// The last change the answer covers.
    pub last: u64,
    /// Whether changes after `last` were committed already: the next page has them.
    pub more: bool,
}
