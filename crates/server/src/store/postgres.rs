//! The PostgreSQL side of the store, for replicas that share their tasks. The tables have the
//! SQLite store's shape (`tasks`, `label_embeddings`, `seeded`, `jobs`) plus what sharing needs:
//!
//! - `changes`: one row holding the last change number. Every task write and delete takes its
//!   row lock first (`UPDATE … RETURNING`), so writers from every replica run one at a time,
//!   change numbers follow commit order, and the `max_tasks` count read under that lock is exact.
//! - `tasks.change` and `deletions` (name, change): what changed after a given number, so a
//!   replica that missed notifications (disconnected, restarted) catches up from its counter.
//! - `task_counts`: stored tasks per subspace, kept by every write, so `max_tasks` costs one row
//!   read whatever the number of tasks.
//!
//! Each commit also sends `pg_notify('deltaspace_changes', {name, generation, change, kind})`,
//! delivered to listeners only if the transaction commits. Schema migrations are numbered, run
//! under an advisory lock (replicas that start together migrate once), and each records the
//! oldest schema version whose code still works on it: a replica refuses to start on a schema
//! that needs a newer build, and keeps working when a newer replica adds to the schema.

use std::cell::RefCell;
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use ndarray::Array2;
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Config, IsolationLevel, Row, Statement, Transaction};
use postgres_native_tls::MakeTlsConnector;
use serde_json::json;

use deltaspace_core::secret::Secret;
use deltaspace_core::task::Task;

use super::backend::{Backend, Changes};
use super::db::{
    CurrentRow, LabelCache, Record, from_le_bytes, job_text, next_generation, now_ms, parse_job,
    readable_job, to_le_bytes,
};
use super::jobs::{JobRecord, JobState};
use super::location::LocationError;
use super::{Precondition, StoreError};

/// The schema this build writes.
pub const SCHEMA_VERSION: i32 = 1;

/// The channel every commit notifies and every follower listens on.
pub const CHANNEL: &str = "deltaspace_changes";

/// Held (per session) while migrating, so replicas starting together migrate one at a time.
const MIGRATION_LOCK: i64 = 0x6465_6c74_6173_0001;

/// How long to wait for a connection when the URL does not say (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long sent data may go unacknowledged before the connection counts as lost, when the URL
/// does not say (`tcp_user_timeout`): a write to a server that vanished from the network answers
/// 503 after this rather than after the kernel's retransmissions (about 15 minutes).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);

/// Server-side bounds of every session, when the URL sets no `options`: a statement waits at most
/// 10 s for a lock (the change counter's, held by a replica cut off mid-write) and runs at most
/// 60 s, and a transaction left idle is ended after 30 s. Past them a write answers 503.
const SESSION_TIMEOUTS: &str =
    "-c lock_timeout=10s -c statement_timeout=60s -c idle_in_transaction_session_timeout=30s";

/// TCP keepalive idle time, unless the URL sets one: a connection whose peer vanished in silence
/// (the LISTEN connection sends nothing) is found dead within a minute or so, not 2 hours.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);

/// Rows [`Backend::each`] reads per statement. Each page is a statement of its own, read whole
/// before its rows are visited, so a scan of any size never meets `statement_timeout` while its
/// visitor works (a replica starting embeds label sets as it goes). The pages are not one
/// snapshot: a row written meanwhile may be read at its newer version or missed, and the follower,
/// which starts from the change read before the scan, applies it either way.
const SCAN_PAGE: i64 = 1000;

/// One step of the schema.
struct Migration {
    version: i32,
    /// The oldest schema version whose code still works once this step is applied: unchanged by
    /// a step that only adds, raised by one that changes what older code reads or writes.
    oldest_reader: i32,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    oldest_reader: 1,
    sql: "CREATE TABLE tasks (
            name TEXT PRIMARY KEY,
            generation BIGINT NOT NULL,
            etag TEXT NOT NULL,
            subspace_id TEXT NOT NULL,
            task_json TEXT NOT NULL,
            updated_at_ms BIGINT NOT NULL,
            change BIGINT NOT NULL
        );
        CREATE INDEX tasks_by_change ON tasks (change);
        CREATE TABLE deletions (name TEXT PRIMARY KEY, change BIGINT NOT NULL);
        CREATE INDEX deletions_by_change ON deletions (change);
        CREATE TABLE changes (
            singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
            last BIGINT NOT NULL
        );
        INSERT INTO changes (last) VALUES (0);
        CREATE TABLE task_counts (subspace_id TEXT PRIMARY KEY, tasks BIGINT NOT NULL);
        CREATE TABLE label_embeddings (
            model TEXT NOT NULL,
            labels_key TEXT NOT NULL,
            embeddings BYTEA NOT NULL,
            PRIMARY KEY (model, labels_key)
        );
        CREATE TABLE seeded (name TEXT PRIMARY KEY, at_ms BIGINT NOT NULL);
        CREATE TABLE jobs (
            seq BIGSERIAL PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            owner TEXT NOT NULL,
            state TEXT NOT NULL,
            record TEXT NOT NULL
        );",
}];

/// The PostgreSQL store: one connection, made again on the next call after it is lost.
pub struct PostgresStore {
    config: Config,
    tls: MakeTlsConnector,
    /// `None` after the connection was lost; `&self` reads need it mutably, hence the cell.
    session: RefCell<Option<Session>>,
}

/// A connection and the statements prepared on it (writes run under the store-wide lock, so
/// each round trip saved is throughput for every replica).
struct Session {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

/// A write transaction that prepares each statement once per connection.
struct Tx<'a> {
    transaction: Transaction<'a>,
    statements: &'a mut HashMap<&'static str, Statement>,
}

impl Tx<'_> {
    fn prepared(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.transaction.prepare(sql)?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let statement = self.prepared(sql)?;
        Ok(self.transaction.execute(&statement, params)?)
    }

    fn query_one(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, StoreError> {
        let statement = self.prepared(sql)?;
        Ok(self.transaction.query_one(&statement, params)?)
    }

    fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        let statement = self.prepared(sql)?;
        Ok(self.transaction.query_opt(&statement, params)?)
    }
}

impl PostgresStore {
    /// Connects to `url` and brings the schema up to this build's version.
    pub fn open(url: &Secret) -> Result<Self, StoreError> {
        let config = Config::from(connection_config(url)?);
        let tls = tls_connector()?;
        let mut client = connect(&config, &tls)?;
        migrate(&mut client)?;
        Ok(Self {
            config,
            tls,
            session: RefCell::new(Some(Session {
                client,
                statements: HashMap::new(),
            })),
        })
    }

    /// Runs `work` on the connection.
    fn run<T>(
        &self,
        work: impl FnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.in_session(|session| work(&mut session.client))
    }

    /// Runs `work` in one transaction and commits it, with the connection's prepared statements.
    fn in_transaction<T>(
        &self,
        work: impl FnOnce(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.in_session(|session| {
            let mut tx = Tx {
                transaction: session.client.transaction()?,
                statements: &mut session.statements,
            };
            let value = work(&mut tx)?;
            tx.transaction.commit()?;
            Ok(value)
        })
    }

    /// Runs `work` on the session, connecting first if the connection was lost; a call that
    /// finds the connection lost drops it (and its statements), so the next call connects again.
    fn in_session<T>(
        &self,
        work: impl FnOnce(&mut Session) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut slot = self.session.borrow_mut();
        let session = match slot.take().filter(|session| !session.client.is_closed()) {
            Some(session) => slot.insert(session),
            None => slot.insert(Session {
                client: connect(&self.config, &self.tls)?,
                statements: HashMap::new(),
            }),
        };
        let result = work(session);
        if matches!(result, Err(StoreError::Unavailable { .. })) {
            *slot = None;
        }
        result
    }
}

/// Closing a connection blocks on its own small runtime, which cannot run inside another: a store
/// dropped on an async thread (the server's state at shutdown) closes it on a thread of its own.
impl Drop for PostgresStore {
    fn drop(&mut self) {
        let Some(session) = self.session.get_mut().take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::spawn(move || drop(session));
        }
    }
}

/// The connection settings of `url`, with a connect timeout, a TCP user timeout and an
/// application name unless the URL sets them (the follower's async connection takes them too).
pub(crate) fn connection_config(url: &Secret) -> Result<tokio_postgres::Config, StoreError> {
    let mut config =
        tokio_postgres::Config::from_str(url.expose()).map_err(LocationError::Postgres)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("deltaspace");
    }
    // A replica cut off mid-write must not hold the change counter's lock for good, nor a
    // silent connection look alive: bounded waits and keepalives, unless the URL says otherwise.
    if config.get_options().is_none() {
        config.options(SESSION_TIMEOUTS);
    }
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config.keepalives_idle(KEEPALIVE_IDLE);
    }
    Ok(config)
}

/// TLS as libpq's `sslmode` asks: `disable` never, `prefer` when the server offers it, `require`
/// always. Like libpq in those modes, the server's certificate is not checked: they protect
/// against eavesdropping, not against a server impersonated on the network.
pub(crate) fn tls_connector() -> Result<MakeTlsConnector, StoreError> {
    let connector = native_tls::TlsConnector::builder()
        .danger_accept_invalid_certs(true)
        .danger_accept_invalid_hostnames(true)
        .build()
        .map_err(StoreError::Tls)?;
    Ok(MakeTlsConnector::new(connector))
}

fn connect(config: &Config, tls: &MakeTlsConnector) -> Result<Client, StoreError> {
    config
        .connect(tls.clone())
        .map_err(|error| StoreError::Unavailable {
            reason: "cannot connect to PostgreSQL".into(),
            source: Some(error),
        })
}

/// A lost or refused connection makes the store unavailable; any other error is the statement's.
impl From<postgres::Error> for StoreError {
    fn from(error: postgres::Error) -> Self {
        if connection_lost(&error) {
            StoreError::Unavailable {
                reason: "lost the connection to PostgreSQL".into(),
                source: Some(error),
            }
        } else {
            StoreError::Postgres(error)
        }
    }
}

/// True when `error` is about the connection rather than the statement: closed, an I/O error, a
/// server shutting down, a standby that cannot write, too many connections, or a session bound
/// (a lock or statement timeout).
pub(crate) fn connection_lost(error: &postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    let io = std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>());
    match error.code() {
        None => io,
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::READ_ONLY_SQL_TRANSACTION,
                    SqlState::TOO_MANY_CONNECTIONS,
                    // The session bounds above: a lock or a statement that waited too long.
                    SqlState::LOCK_NOT_AVAILABLE,
                    SqlState::QUERY_CANCELED,
                    SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                ]
                .contains(code)
        }
    }
}

/// Applies every migration newer than the stored schema, under the migration lock.
fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let migrated = migrate_locked(client);
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    migrated?;
    unlocked?;
    Ok(())
}

fn migrate_locked(client: &mut Client) -> Result<(), StoreError> {
    // Created only when missing: CREATE ... IF NOT EXISTS would need the right to create tables
    // even on a migrated database, which a runtime role may lack.
    let exists: bool = client
        .query_one("SELECT to_regclass('deltaspace_schema') IS NOT NULL", &[])?
        .get(0);
    if !exists {
        create_schema_table(client)?;
    }
    read_and_migrate(client)
}

fn create_schema_table(client: &mut Client) -> Result<(), StoreError> {
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS deltaspace_schema (
            singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
            version INTEGER NOT NULL,
            oldest_reader INTEGER NOT NULL
        )",
    )?;
    Ok(())
}

fn read_and_migrate(client: &mut Client) -> Result<(), StoreError> {
    let stored = client.query_opt("SELECT version, oldest_reader FROM deltaspace_schema", &[])?;
    let (found, oldest_reader): (i32, i32) = stored.map_or((0, 0), |row| (row.get(0), row.get(1)));
    let mut version = found;
    if oldest_reader > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            needs: oldest_reader,
            ours: SCHEMA_VERSION,
        });
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version > found) {
        let mut transaction = client.transaction()?;
        transaction.batch_execute(migration.sql)?;
        transaction.execute(
            "INSERT INTO deltaspace_schema (version, oldest_reader) VALUES ($1, $2)
             ON CONFLICT (singleton) DO UPDATE
             SET version = EXCLUDED.version, oldest_reader = EXCLUDED.oldest_reader",
            &[&migration.version, &migration.oldest_reader],
        )?;
        transaction.commit()?;
        tracing::info!(version = migration.version, "task store schema migrated");
        version = migration.version;
    }
    if version > SCHEMA_VERSION {
        tracing::info!(
            stored = version,
            ours = SCHEMA_VERSION,
            "the task store's schema is newer than this build's and still compatible with it"
        );
    }
    Ok(())
}

/// Takes the write lock (the `changes` row) and returns the next change number.
fn next_change(tx: &mut Tx<'_>) -> Result<u64, StoreError> {
    let row = tx.query_one("UPDATE changes SET last = last + 1 RETURNING last", &[])?;
    Ok(as_u64(row.get(0)))
}

fn current_row(tx: &mut Tx<'_>, name: &str) -> Result<Option<CurrentRow>, StoreError> {
    let row = tx.query_opt(
        "SELECT generation, etag, subspace_id FROM tasks WHERE name = $1",
        &[&name],
    )?;
    Ok(row.map(|row| CurrentRow {
        generation: as_u64(row.get(0)),
        etag: row.get(1),
        subspace_id: row.get(2),
    }))
}

fn stored_tasks(tx: &mut Tx<'_>, subspace_id: &str) -> Result<usize, StoreError> {
    let row = tx.query_opt(
        "SELECT tasks FROM task_counts WHERE subspace_id = $1",
        &[&subspace_id],
    )?;
    Ok(row.map_or(0, |row| usize::try_from(row.get::<_, i64>(0)).unwrap_or(0)))
}

/// Moves `by` tasks from subspace `from` (none: new tasks) to `to` (none: deleted) in the counts.
fn move_count(
    tx: &mut Tx<'_>,
    from: Option<&str>,
    to: Option<&str>,
    by: i64,
) -> Result<(), StoreError> {
    if from == to || by == 0 {
        return Ok(());
    }
    if let Some(from) = from {
        tx.execute(
            "UPDATE task_counts SET tasks = tasks - $2 WHERE subspace_id = $1",
            &[&from, &by],
        )?;
    }
    if let Some(to) = to {
        tx.execute(
            "INSERT INTO task_counts (subspace_id, tasks) VALUES ($1, $2)
             ON CONFLICT (subspace_id) DO UPDATE SET tasks = task_counts.tasks + $2",
            &[&to, &by],
        )?;
    }
    Ok(())
}

/// Writes `record` as the row of its name, and forgets any deletion of the name.
fn upsert(tx: &mut Tx<'_>, record: &Record) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO tasks (name, generation, etag, subspace_id, task_json, updated_at_ms, change)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (name) DO UPDATE SET generation = $2, etag = $3, subspace_id = $4,
            task_json = $5, updated_at_ms = $6, change = $7",
        &[
            &record.name,
            &as_i64(record.generation),
            &record.etag,
            &record.subspace_id,
            &record.task_json,
            &record.updated_at_ms,
            &as_i64(record.change),
        ],
    )?;
    tx.execute("DELETE FROM deletions WHERE name = $1", &[&record.name])?;
    Ok(())
}

/// Tells every follower, once the transaction commits, what it changed.
fn notify(tx: &mut Tx<'_>, payload: serde_json::Value) -> Result<(), StoreError> {
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &payload.to_string()],
    )?;
    Ok(())
}

fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn as_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

const RECORD_COLUMNS: &str =
    "name, task_json, generation, etag, subspace_id, updated_at_ms, change";

fn record(row: &postgres::Row) -> Record {
    Record {
        name: row.get(0),
        task_json: row.get(1),
        generation: as_u64(row.get(2)),
        etag: row.get(3),
        subspace_id: row.get(4),
        updated_at_ms: row.get(5),
        embeddings: None,
        change: as_u64(row.get(6)),
    }
}

/// PostgreSQL's text cannot hold NUL, so no stored task name or job id contains one: a key with
/// one names nothing (where PostgreSQL would fail the statement, SQLSTATE 22021, as a 500).
fn storable(key: &str) -> bool {
    !key.contains('\0')
}

impl Backend for PostgresStore {
    fn each(
        &self,
        visit: &mut dyn FnMut(Record) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let query = format!(
            "SELECT {RECORD_COLUMNS} FROM tasks
             WHERE $1::TEXT IS NULL OR name > $1 ORDER BY name LIMIT $2"
        );
        let mut after: Option<String> = None;
        loop {
            let rows =
                self.run(|client| Ok(client.query(query.as_str(), &[&after, &SCAN_PAGE])?))?;
            for row in &rows {
                visit(record(row))?;
            }
            if rows.len() < SCAN_PAGE as usize {
                return Ok(());
            }
            after = rows.last().map(|row| row.get(0));
        }
    }

    fn write(
        &mut self,
        task: &Task,
        subspace_id: &str,
        (model, key, embeddings): LabelCache<'_>,
        expect: &Precondition,
        max_tasks: usize,
    ) -> Result<(Record, bool), StoreError> {
        self.in_transaction(|tx| {
            let change = next_change(tx)?;
            let current = current_row(tx, &task.name)?;
            let from = current.as_ref().map(|row| row.subspace_id.as_str());
            if from != Some(subspace_id) && stored_tasks(tx, subspace_id)? >= max_tasks {
                return Err(StoreError::Full { max: max_tasks });
            }
            let record = Record {
                change,
                ..next_generation(task, subspace_id, expect, current.as_ref())?
            };
            upsert(tx, &record)?;
            move_count(tx, from, Some(subspace_id), 1)?;
            let values: Vec<f32> = embeddings.iter().copied().collect();
            tx.execute(
                "INSERT INTO label_embeddings (model, labels_key, embeddings) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&model, &key, &to_le_bytes(&values)],
            )?;
            let kind = "write";
            let (name, generation) = (&record.name, record.generation);
            notify(
                tx,
                json!({"name": name, "generation": generation, "change": change, "kind": kind}),
            )?;
            Ok((record, current.is_none()))
        })
    }

    fn write_many(&mut self, tasks: &[Task], subspace_id: &str) -> Result<usize, StoreError> {
        self.in_transaction(|tx| {
            // Takes the write lock; the changes are numbered after it, one per task.
            let base = as_u64(
                tx.query_one("UPDATE changes SET last = last RETURNING last", &[])?
                    .get(0),
            );
            let mut created = 0;
            let mut moved: HashMap<Option<String>, i64> = HashMap::new();
            for (task, change) in tasks.iter().zip(base + 1..) {
                let current = current_row(tx, &task.name)?;
                let record = Record {
                    change,
                    ..next_generation(task, subspace_id, &Precondition::None, current.as_ref())?
                };
                upsert(tx, &record)?;
                created += usize::from(current.is_none());
                *moved.entry(current.map(|row| row.subspace_id)).or_default() += 1;
            }
            for (from, by) in &moved {
                move_count(tx, from.as_deref(), Some(subspace_id), *by)?;
            }
            let last = base + tasks.len() as u64;
            tx.execute("UPDATE changes SET last = $1", &[&as_i64(last)])?;
            notify(
                tx,
                json!({"change": last, "count": tasks.len(), "kind": "bulk"}),
            )?;
            Ok(created)
        })
    }

    fn delete(
        &mut self,
        name: &str,
        subspace_id: &str,
        expect: &Precondition,
    ) -> Result<u64, StoreError> {
        if !storable(name) {
            return Err(StoreError::NotFound(name.to_string()));
        }
        self.in_transaction(|tx| {
            let change = next_change(tx)?;
            let current = current_row(tx, name)?;
            let Some(current) = current.filter(|row| row.subspace_id == subspace_id) else {
                return Err(StoreError::NotFound(name.to_string()));
            };
            expect.check(name, Some(&current.etag))?;
            tx.execute("DELETE FROM tasks WHERE name = $1", &[&name])?;
            tx.execute(
                "INSERT INTO deletions (name, change) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET change = $2",
                &[&name, &as_i64(change)],
            )?;
            move_count(tx, Some(&current.subspace_id), None, 1)?;
            let generation = current.generation;
            notify(
                tx,
                json!({"name": name, "generation": generation, "change": change, "kind": "delete"}),
            )?;
            Ok(change)
        })
    }

    fn label_embeddings(&self, model: &str) -> Result<HashMap<String, Vec<f32>>, StoreError> {
        self.run(|client| {
            let rows = client.query(
                "SELECT labels_key, embeddings FROM label_embeddings WHERE model = $1",
                &[&model],
            )?;
            Ok(rows
                .iter()
                .map(|row| (row.get(0), from_le_bytes(row.get(1))))
                .collect())
        })
    }

    fn label_embedding(&self, model: &str, key: &str) -> Result<Option<Vec<f32>>, StoreError> {
        self.run(|client| {
            let row = client.query_opt(
                "SELECT embeddings FROM label_embeddings WHERE model = $1 AND labels_key = $2",
                &[&model, &key],
            )?;
            Ok(row.map(|row| from_le_bytes(row.get(0))))
        })
    }

    fn save_label_embeddings(
        &mut self,
        model: &str,
        sets: &[(&str, &Array2<f32>)],
    ) -> Result<(), StoreError> {
        // In key order, so two replicas caching overlapping sets at start take their row locks
        // in the same order and cannot deadlock.
        let mut sets = sets.to_vec();
        sets.sort_by_key(|&(key, _)| key);
        self.run(|client| {
            let mut transaction = client.transaction()?;
            for &(key, values) in &sets {
                let values: Vec<f32> = values.iter().copied().collect();
                transaction.execute(
                    "INSERT INTO label_embeddings (model, labels_key, embeddings) VALUES ($1, $2, $3)
                     ON CONFLICT (model, labels_key) DO UPDATE SET embeddings = EXCLUDED.embeddings",
                    &[&model, &key, &to_le_bytes(&values)],
                )?;
            }
            transaction.commit()?;
            Ok(())
        })
    }

    fn forget_label_embeddings(
        &mut self,
        model: &str,
        keys: &[String],
    ) -> Result<usize, StoreError> {
        self.run(|client| {
            let forgotten = client.execute(
                "DELETE FROM label_embeddings WHERE model = $1 AND labels_key = ANY($2)",
                &[&model, &keys],
            )?;
            Ok(usize::try_from(forgotten).unwrap_or(usize::MAX))
        })
    }

    /// Nothing to do: this store never kept label embeddings in task rows.
    fn drop_row_embeddings(&mut self, _model: &str, _subspace_id: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn mark_seeded(&self, name: &str) -> Result<bool, StoreError> {
        self.run(|client| {
            let inserted = client.execute(
                "INSERT INTO seeded (name, at_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&name, &now_ms()],
            )?;
            Ok(inserted == 1)
        })
    }

    fn was_seeded(&self, name: &str) -> Result<bool, StoreError> {
        self.run(|client| {
            Ok(client
                .query_opt("SELECT 1 FROM seeded WHERE name = $1", &[&name])?
                .is_some())
        })
    }

    fn stored_subspace(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.run(|client| {
            Ok(client
                .query_opt("SELECT subspace_id FROM tasks WHERE name = $1", &[&name])?
                .map(|row| row.get(0)))
        })
    }

    fn save_job(&mut self, job: &JobRecord) -> Result<(), StoreError> {
        self.run(|client| {
            let mut transaction = client.transaction()?;
            let stored = transaction
                .query_opt(
                    "SELECT record FROM jobs WHERE id = $1 FOR UPDATE",
                    &[&job.job],
                )?
                .map(|row| parse_job(&job.job, row.get(0)))
                .transpose()?;
            let Some(job) = job.saved_over(stored.as_ref()) else {
                return Ok(());
            };
            transaction.execute(
                "INSERT INTO jobs (id, owner, state, record) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET owner = $2, state = $3, record = $4",
                &[&job.job, &job.owner, &job.state.name(), &job_text(&job)?],
            )?;
            transaction.commit()?;
            Ok(())
        })
    }

    fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        if !storable(id) {
            return Ok(None);
        }
        let text = self.run(|client| {
            let row = client.query_opt("SELECT record FROM jobs WHERE id = $1", &[&id])?;
            Ok(row.map(|row| row.get::<_, String>(0)))
        })?;
        text.map(|text| parse_job(id, &text)).transpose()
    }

    fn jobs(&self, after: Option<&str>, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        if !after.is_none_or(storable) {
            return Ok(Vec::new()); // after a job that cannot exist: an empty last page, as on SQLite
        }
        let rows = self.run(|client| {
            Ok(client.query(
                "SELECT id, record FROM jobs
                 WHERE $1::TEXT IS NULL OR seq < (SELECT seq FROM jobs WHERE id = $1)
                 ORDER BY seq DESC LIMIT $2",
                &[&after, &i64::try_from(limit).unwrap_or(i64::MAX)],
            )?)
        })?;
        Ok((rows.iter())
            .filter_map(|row| readable_job(row.get(0), row.get(1)))
            .collect())
    }

    fn unfinished_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let rows = self.run(|client| {
            Ok(client.query(
                "SELECT id, record FROM jobs WHERE state IN ('queued', 'running') ORDER BY seq",
                &[],
            )?)
        })?;
        Ok((rows.iter())
            .filter_map(|row| readable_job(row.get(0), row.get(1)))
            .collect())
    }

    fn fail_unfinished_jobs(&mut self, owner: &str, reason: &str) -> Result<usize, StoreError> {
        self.run(|client| {
            let mut transaction = client.transaction()?;
            let rows = transaction.query(
                "SELECT id, record FROM jobs
                 WHERE owner = $1 AND state IN ('queued', 'running') FOR UPDATE",
                &[&owner],
            )?;
            let mut failed = 0;
            for row in &rows {
                let id: &str = row.get(0);
                let Some(mut job) = readable_job(id, row.get(1)) else {
                    continue;
                };
                job.state = JobState::Failed;
                job.error = Some(reason.to_string());
                transaction.execute(
                    "UPDATE jobs SET state = $2, record = $3 WHERE id = $1",
                    &[&id, &job.state.name(), &job_text(&job)?],
                )?;
                failed += 1;
            }
            transaction.commit()?;
            Ok(failed)
        })
    }

    fn last_change(&self) -> Result<Option<u64>, StoreError> {
        self.run(|client| {
            let row = client.query_one("SELECT last FROM changes", &[])?;
            Ok(Some(as_u64(row.get(0))))
        })
    }

    fn changes_since(&self, since: u64, limit: usize) -> Result<Changes, StoreError> {
        self.run(|client| {
            // One snapshot: every change up to `newest` is committed in it, and none after.
            let mut transaction = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let newest = as_u64(
                transaction
                    .query_one("SELECT last FROM changes", &[])?
                    .get(0),
            );
            let since = as_i64(since);
            // Every change number names one row (a task's latest write, or its deletion), so
            // the page ends at the `limit`-th of them after `since`, or at the newest change.
            let page_end = transaction
                .query_opt(
                    "SELECT change FROM (
                        SELECT change FROM tasks WHERE change > $1
                        UNION ALL SELECT change FROM deletions WHERE change > $1
                     ) AS after ORDER BY change OFFSET $2 LIMIT 1",
                    &[&since, &as_i64(limit.max(1) as u64 - 1)],
                )?
                .map(|row| as_u64(row.get(0)));
            let last = page_end.unwrap_or(newest);
            let upto = as_i64(last);
            let written = transaction
                .query(
                    &format!(
                        "SELECT {RECORD_COLUMNS} FROM tasks
                         WHERE change > $1 AND change <= $2 ORDER BY change"
                    ),
                    &[&since, &upto],
                )?
                .iter()
                .map(record)
                .collect();
            let deleted = transaction
                .query(
                    "SELECT name, change FROM deletions
                     WHERE change > $1 AND change <= $2 ORDER BY change",
                    &[&since, &upto],
                )?
                .iter()
                .map(|row| (row.get(0), as_u64(row.get(1))))
                .collect();
            transaction.commit()?;
            Ok(Changes {
                written,
                deleted,
                last,
                more: last < newest,
            })
        })
    }
}
