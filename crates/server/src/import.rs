//! Bulk import into a server's task database (`deltaspace import`): every task is checked against
//! the model and subspace first, then all are committed in large transactions, with no encoder:
//! the server embeds each new label set once at its next start. Uploading through HTTP commits
//! (and fsyncs) one task per request; this is how a million tasks get in.

use std::collections::BTreeMap;

use super::ServerError;
use super::admit::{AdmitError, admit};
use super::store::{self, StoreLocation};
use deltaspace_core::model::Manifest;
use deltaspace_core::subspace::Subspace;
use deltaspace_core::task::{Task, TaskLimits};

/// Tasks per transaction: large enough that commits do not dominate (a task of a few labels is
/// about 1 KB of JSON, so about 10 MB of journal), small enough to hold in memory.
const TASKS_PER_TRANSACTION: usize = 10_000;

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    /// Tasks written.
    pub written: usize,
    /// Of those, tasks that were not stored before.
    pub created: usize,
    /// Tasks left out because they name another subspace, counted by its id (an export holds
    /// the tasks of every subspace its store kept).
    pub skipped: BTreeMap<String, usize>,
}

/// Writes `tasks` into the store at `location` (a data directory names its SQLite database)
/// after checking each (as an upload is checked); a
/// task replaces any stored task of its name. Tasks that name another subspace than `subspace`
/// are left out and counted (`skipped`): they cannot be checked against it, and the store would
/// not serve them. `tasks` is called twice, to check and then to write,
/// so a bad task stops the import before anything is written and no more than one transaction of
/// tasks is ever held in memory. Errors name the failing item (`source` says how).
pub fn import_tasks<I>(
    location: impl Into<StoreLocation>,
    manifest: &Manifest,
    subspace: &Subspace,
    limits: &TaskLimits,
    tasks: impl Fn() -> I,
) -> Result<ImportSummary, ImportError>
where
    I: Iterator<Item = Result<Task, ImportError>>,
{
    let mut summary = ImportSummary {
        written: 0,
        created: 0,
        skipped: BTreeMap::new(),
    };
    let mut count = 0;
    for task in tasks() {
        let task = task?;
        match subspace.other(task.subspace.as_deref()) {
            Some(id) => *summary.skipped.entry(id.to_string()).or_default() += 1,
            None => {
                check(task, manifest, subspace, limits)?;
                count += 1;
            }
        }
    }
    let mut db = store::open(&location.into()).map_err(ServerError::from)?;
    let subspace_id = subspace.id();
    let mut chunk = Vec::with_capacity(TASKS_PER_TRANSACTION.min(count));
    let mut tasks = tasks()
        .filter(|task| {
            !task
                .as_ref()
                .is_ok_and(|t| subspace.other(t.subspace.as_deref()).is_some())
        })
        .peekable();
    while tasks.peek().is_some() {
        chunk.clear();
        for task in tasks.by_ref().take(TASKS_PER_TRANSACTION) {
            chunk.push(check(task?, manifest, subspace, limits)?);
        }
        summary.created += db
            .write_many(&chunk, &subspace_id)
            .map_err(ServerError::from)?;
        summary.written += chunk.len();
    }
    Ok(summary)
}

fn check(
    task: Task,
    manifest: &Manifest,
    subspace: &Subspace,
    limits: &TaskLimits,
) -> Result<Task, ImportError> {
    let name = task.name.clone();
    admit(task, manifest, subspace, limits)
        .map_err(|source| ImportError::Invalid { task: name, source })
}

/// Why an import stopped. A bad task found while checking stops it before anything is written;
/// `Store` errors (and files changed while importing) may leave the transactions before them.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file or line that is not a task (`at` names it: `FILE` or `FILE:LINE`).
    #[error("{at}")]
    Unreadable {
        at: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("task {task:?}")]
    Invalid {
        task: String,
        #[source]
        source: AdmitError,
    },
    #[error(transparent)]
    Store(#[from] ServerError),
}
