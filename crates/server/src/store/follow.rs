//! Replicas follow each other: a tokio task keeps a `LISTEN deltaspace_changes` connection to
//! PostgreSQL and, on every notification, reads what changed since the last change it applied
//! and applies it to the served tasks ([`TaskStore::apply`]). A notification is only a wake-up:
//! what is applied is always read back from the store, so notifications lost while disconnected
//! cost nothing; on every (re)connection the follower catches up from its counter. It reconnects
//! with exponential backoff, and [`StoreStatus`] tells `/health/ready` and the metrics where it is.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use deltaspace_core::classifier::LabelSet;
use deltaspace_core::secret::Secret;
use deltaspace_core::task::Task;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use super::postgres::{CHANNEL, connection_config, tls_connector};
use super::{Applicable, Record, StoreError, TaskStore, error_chain};
use crate::metrics::Metrics;

/// The first wait after a failed connection; each failure doubles it, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Catch up at least this often even without notifications: a safety net, never the main path.
const POLL: Duration = Duration::from_secs(30);

/// Changes a replica reads and applies at a time while it catches up.
const CHANGES_PAGE: usize = 1000;

/// Turns a stored row into a task this replica serves, with its label set. Blocking (it may run
/// the encoder).
///
/// `Ok(None)`: a row this replica does not serve (another subspace, invalid), for good. `Err`:
/// it could not be made now (the store or the encoder failed); the catch-up stops there, so that
/// change is read again at the next one rather than skipped.
pub type Prepare = Arc<
    dyn Fn(
            &Record,
        )
            -> Result<Option<(Task, Arc<LabelSet>)>, Box<dyn std::error::Error + Send + Sync>>
        + Send
        + Sync,
>;

/// Where the store stands, as `/health/ready` reports it.
#[derive(Debug)]
pub struct StoreStatus {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// True while the follower holds its LISTEN connection (always true for SQLite).
    pub connected: AtomicBool,
    /// The last change applied to the served tasks.
    pub change: AtomicU64,
}

impl StoreStatus {
    pub fn new(backend: &'static str) -> Self {
        Self {
            backend,
            connected: AtomicBool::new(backend == "sqlite"),
            change: AtomicU64::new(0),
        }
    }

    /// The `store` object of `/health/ready`.
    pub fn to_json(&self) -> serde_json::Value {
        if self.backend == "sqlite" {
            return serde_json::json!({"backend": self.backend});
        }
        serde_json::json!({
            "backend": self.backend,
            "connected": self.connected.load(Ordering::Relaxed),
            "change": self.change.load(Ordering::Relaxed),
        })
    }
}

/// What the follower works with.
pub struct Follower {
    pub url: Secret,
    pub store: Arc<TaskStore>,
    pub prepare: Prepare,
    pub status: Arc<StoreStatus>,
    pub metrics: Arc<Metrics>,
}

impl Follower {
    /// Follows the store from change `since` (read before the tasks were loaded) until aborted.
    /// A lost connection is sought again at once; failures back off exponentially.
    pub async fn run(self, since: u64) {
        self.status.change.store(since, Ordering::Relaxed);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let failure = match self.listen().await {
                Ok((_client, notes)) => {
                    self.set_connected(true);
                    let followed = self.follow(notes).await;
                    self.set_connected(false);
                    self.metrics.store_reconnects.inc();
                    followed.err()
                }
                Err(error) => Some(error),
            };
            match failure {
                None => backoff = FIRST_BACKOFF,
                Some(error) => {
                    tracing::warn!(
                        error = %error_chain(&error),
                        retry_in_ms = backoff.as_millis(),
                        "cannot follow the task store"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Catches up, then once more after every notification (or [`POLL`]), until the LISTEN
    /// connection ends; a failed catch-up ends it too, to start again from a fresh connection.
    async fn follow(&self, mut notes: mpsc::UnboundedReceiver<()>) -> Result<(), StoreError> {
        loop {
            self.catch_up().await?;
            tokio::select! {
                note = notes.recv() => if note.is_none() {
                    return Ok(());
                },
                () = tokio::time::sleep(POLL) => {}
            }
            // Notifications that came meanwhile are covered by the next catch-up.
            while notes.try_recv().is_ok() {}
        }
    }

    /// Applies every change after the last one applied, a page ([`CHANGES_PAGE`]) at a time.
    async fn catch_up(&self) -> Result<(), StoreError> {
        loop {
            let since = self.status.change.load(Ordering::Relaxed);
            let (store, prepare) = (self.store.clone(), self.prepare.clone());
            let (last, applied, more) =
                tokio::task::spawn_blocking(move || apply_since(&store, &prepare, since))
                    .await
                    .map_err(|error| StoreError::Visit(Box::new(error)))??;
            self.status.change.store(last, Ordering::Relaxed);
            self.metrics
                .store_change
                .set(i64::try_from(last).unwrap_or(i64::MAX));
            if applied > 0 {
                self.metrics.tasks_registered.set(self.store.len() as i64);
                tracing::debug!(since, last, applied, "applied changes from the task store");
            }
            if !more {
                return Ok(());
            }
        }
    }

    fn set_connected(&self, connected: bool) {
        self.status.connected.store(connected, Ordering::Relaxed);
        self.metrics.store_connected.set(i64::from(connected));
    }

    /// A LISTEN connection: its notifications arrive on the channel, which closes when the
    /// connection ends. The connection lives as long as the client returned.
    async fn listen(
        &self,
    ) -> Result<(tokio_postgres::Client, mpsc::UnboundedReceiver<()>), StoreError> {
        let config = connection_config(&self.url)?;
        let (client, mut connection) = config.connect(tls_connector()?).await?;
        let (sender, notes) = mpsc::unbounded_channel();
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => {
                        if sender.send(()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "the task store's LISTEN connection ended");
                        return;
                    }
                }
            }
        });
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        Ok((client, notes))
    }
}

/// Reads a page of the changes after `since`, makes the served tasks outside the database lock,
/// then applies them under it. Returns the last change covered, how many served tasks changed,
/// and whether more changes follow.
fn apply_since(
    store: &TaskStore,
    prepare: &Prepare,
    since: u64,
) -> Result<(u64, usize, bool), StoreError> {
    let changes = store.with_db(|db| db.changes_since(since, CHANGES_PAGE))?;
    let written: Vec<Applicable> = changes
        .written
        .into_iter()
        .filter(|record| {
            store
                .get(&record.name)
                .is_none_or(|task| task.change < record.change)
        })
        .map(|record| {
            let served = prepare(&record).map_err(StoreError::Visit)?;
            Ok(Applicable { served, record })
        })
        .collect::<Result<_, StoreError>>()?;
    let applied = store.apply(written, &changes.deleted, changes.last);
    Ok((changes.last, applied, changes.more))
}
