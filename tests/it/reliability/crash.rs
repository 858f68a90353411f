//! Crash safety: SIGKILL the server in the middle of a stream of uploads (creates, replacements,
//! deletes from several clients at once), restart it on the same data directory, and check that
//! every acknowledged write is there, intact, and that nothing half-written is: each task served
//! (and each row stored) is exactly one of the states a client sent, the last acknowledged one
//! unless a later write to it was in flight at the kill.
//!
//! The same soak runs on the embedded SQLite store and on PostgreSQL (`[store] url`), where the
//! store outlives the killed replica.
//!
//! `DELTASPACE_CRASH_KILLS` sets the number of kills (CI: 5; `scripts/soak-crash.sh`: 200).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use deltaspace::secret::Secret;
use deltaspace::server::{Backend, Database, StoreLocation, labels_key, open_store};
use deltaspace::task::Task;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::process::{Server, Setup, env_number};
use crate::pg;

/// Concurrent uploading clients.
const CLIENTS: usize = 4;

/// What a client believes about one task name.
#[derive(Debug, Clone, Default)]
struct NameLog {
    /// The state after the last acknowledged write: the task body, or `None` for absent.
    acked: Option<Value>,
    /// A write sent but not answered when the server died: it may or may not have committed.
    in_flight: Option<Option<Value>>,
}

/// Every name's log, shared by the clients (each name belongs to one client).
type Logs = Arc<Mutex<BTreeMap<String, NameLog>>>;

/// The body a client sends for one write: det, z and labels vary with `version`.
fn body(version: u64) -> Value {
    let dets = ["lora", "adapter", "prefix"];
    let v = version as f32;
    let z = [
        (v * 0.37).sin(),
        (v * 0.11).cos(),
        0.001 * v,
        -0.5 + (version % 7) as f32 * 0.125,
    ];
    // A new label set every third version, so some writes embed labels and some reuse them.
    let labels: Vec<Value> = (0..2 + version % 3)
        .map(|i| {
            json!({
                "name": format!("label{i}"),
                "description": format!("Description {i} of version {}.", version / 3),
            })
        })
        .collect();
    json!({"det": dets[(version % 3) as usize], "z": z, "labels": labels})
}

/// The part of a served task that a client wrote, z read as the f16 values the server keeps.
fn written_part(task: &Value) -> Value {
    let z: Vec<f32> = task["z"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| half::f16::from_f64(v.as_f64().unwrap()).to_f32())
        .collect();
    json!({"det": task["det"], "z": z, "labels": task["labels"]})
}

/// One client: writes to its own names until the server goes away.
async fn client(base: String, id: usize, logs: Logs, seed: u64, acked: Arc<Mutex<u64>>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    loop {
        let mine: Vec<(String, bool)> = logs
            .lock()
            .unwrap()
            .iter()
            .filter(|(name, _)| name.starts_with(&format!("c{id}-")))
            .map(|(name, log)| (name.clone(), log.acked.is_some()))
            .collect();
        let existing: Vec<&String> = mine.iter().filter(|(_, e)| *e).map(|(n, _)| n).collect();
        let roll = rng.random_range(0..10);
        let version = rng.random_range(0..1_000_000u64);
        let (name, state, request) = if roll < 2 && !existing.is_empty() {
            let name = existing[rng.random_range(0..existing.len())].clone();
            let request = http.delete(format!("{base}/v1/tasks/{name}"));
            (name, None, request)
        } else {
            let name = if roll < 5 && !existing.is_empty() {
                existing[rng.random_range(0..existing.len())].clone()
            } else {
                format!("c{id}-{}", mine.len())
            };
            let body = body(version);
            let request = http
                .put(format!("{base}/v1/tasks/{name}"))
                .json(&body)
                .header("authorization", "Bearer crash-token");
            (name, Some(written_part(&body)), request)
        };
        let request = request.header("authorization", "Bearer crash-token");
        logs.lock()
            .unwrap()
            .entry(name.clone())
            .or_default()
            .in_flight = Some(state.clone());
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                let mut logs = logs.lock().unwrap();
                let log = logs.get_mut(&name).unwrap();
                log.acked = state;
                log.in_flight = None;
                *acked.lock().unwrap() += 1;
            }
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                // An answer other than success that still came whole: the server is alive and
                // refused; that is a bug in this test or the server.
                if !text.is_empty() {
                    panic!("{name}: {status} {text}");
                }
                return;
            }
            // The server died with this write unanswered: its outcome is unknown.
            Err(_) => return,
        }
    }
}

/// Checks the database file itself after a kill, before any server opens it again.
fn check_database(setup: &Setup) -> usize {
    let connection = rusqlite::Connection::open(setup.database()).unwrap();
    let integrity: String = connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let label_sets: HashMap<String, usize> = connection
        .prepare("SELECT labels_key, length(embeddings) FROM label_embeddings")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    drop(connection);
    check_rows(&Database::open(&setup.database()).unwrap(), &label_sets)
}

/// Checks the PostgreSQL store at `url` after a kill, as [`check_database`] checks SQLite.
fn check_postgres(url: &str) -> usize {
    let query = "SELECT labels_key, length(embeddings) FROM label_embeddings";
    let label_sets: HashMap<String, usize> = pg::with_client(url, |admin| {
        let rows = admin.query(query, &[]).unwrap();
        rows.iter()
            .map(|row| (row.get(0), usize::try_from(row.get::<_, i32>(1)).unwrap()))
            .collect()
    });
    let location = StoreLocation::Postgres(Secret::new(url));
    pg::off_runtime(|| check_rows(open_store(&location).unwrap().as_ref(), &label_sets))
}

/// Every stored row is a whole task, and its label set has its embeddings (committed in the same
/// transaction as the task), given the bytes of each cached set. Returns how many rows.
fn check_rows(store: &dyn Backend, label_sets: &HashMap<String, usize>) -> usize {
    let mut records = Vec::new();
    store
        .each(&mut |record| {
            records.push(record);
            Ok(())
        })
        .unwrap();
    for record in &records {
        let task: Task = serde_json::from_str(&record.task_json)
            .unwrap_or_else(|e| panic!("{}: half-written row: {e}", record.name));
        assert_eq!(task.name, record.name);
        assert!(record.generation >= 1);
        let bytes = label_sets
            .get(&labels_key(&task.labels))
            .unwrap_or_else(|| panic!("{}: no label embeddings committed", record.name));
        assert_eq!(*bytes, task.labels.len() * 32 * 4, "{}", record.name);
    }
    records.len()
}

/// After a restart: every name's state is its acked one, or its in-flight one; then the log
/// is resolved to what is there. Returns (in-flight writes that had committed, in-flight writes).
async fn check_and_resolve(server: &Server, logs: &Logs) -> (usize, usize) {
    let http = reqwest::Client::new();
    let mut served = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = server.url("/v1/tasks?limit=1000");
        if let Some(after) = &after {
            url.push_str(&format!("&after={after}"));
        }
        let page: Value = http.get(url).send().await.unwrap().json().await.unwrap();
        for task in page["tasks"].as_array().unwrap() {
            let name = task["name"].as_str().unwrap().to_string();
            let full: Value = http
                .get(server.url(&format!("/v1/tasks/{name}")))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(full["generation"], task["generation"], "{name}");
            served.insert(name, written_part(&full));
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    let mut logs = logs.lock().unwrap();
    for name in served.keys() {
        assert!(
            logs.contains_key(name),
            "{name} is served but nobody wrote it"
        );
    }
    let (mut committed, mut unknown) = (0, 0);
    for (name, log) in logs.iter_mut() {
        let found = served.get(name).cloned();
        let matches_acked = found == log.acked;
        match log.in_flight.take() {
            Some(in_flight) => {
                unknown += 1;
                if found == in_flight && !matches_acked {
                    committed += 1;
                }
                assert!(
                    matches_acked || found == in_flight,
                    "{name}: found {found:?}, acknowledged {:?}, in flight {in_flight:?}",
                    log.acked
                );
            }
            None => assert!(
                matches_acked,
                "{name}: an acknowledged write is lost: found {found:?}, acknowledged {:?}",
                log.acked
            ),
        }
        log.acked = found;
    }
    (committed, unknown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_uploads_survive_sigkill_and_nothing_half_written_is_served() {
    let setup = Setup::new().server("tokens", "crash-token");
    soak(&setup, &check_database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_acknowledged_uploads_survive_sigkill_of_a_replica() {
    let url = pg::off_runtime(|| pg::shared().database());
    let setup = Setup::new().server("tokens", "crash-token").store_url(&url);
    soak(&setup, &|_| check_postgres(&url)).await;
}

/// Kills the server on `setup` during uploads, again and again; `check_store` looks at the store
/// after each kill and returns how many rows it holds.
async fn soak(setup: &Setup, check_store: &dyn Fn(&Setup) -> usize) {
    let kills: usize = env_number("DELTASPACE_CRASH_KILLS", 5);
    let seed: u64 = env_number("DELTASPACE_CRASH_SEED", 1);
    let logs: Logs = Arc::default();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let started = Instant::now();
    let (mut total_acked, mut total_committed, mut total_unknown) = (0u64, 0, 0);
    // A probe task written once: its answers must not change across restarts (the label
    // embeddings come back from the database, not recomputed differently).
    let probe = json!({"inputs": ["a probe sentence", {"text": "a", "text_pair": "b"}]});
    let mut probe_answer: Option<Value> = None;
    for kill in 0..kills {
        let server = Server::start(setup, "warn").await;
        if kill > 0 {
            let (committed, unknown) = check_and_resolve(&server, &logs).await;
            total_committed += committed;
            total_unknown += unknown;
        }
        let http = reqwest::Client::new();
        if probe_answer.is_none() {
            let created = http
                .put(server.url("/v1/tasks/probe"))
                .bearer_auth("crash-token")
                .json(&body(1))
                .send()
                .await
                .unwrap();
            assert_eq!(created.status(), 201);
            logs.lock().unwrap().insert(
                "probe".into(),
                NameLog {
                    acked: Some(written_part(&body(1))),
                    in_flight: None,
                },
            );
        }
        let answer: Value = http
            .post(server.url("/v1/tasks/probe/predict"))
            .json(&probe)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["task"], "probe", "{answer}");
        if let Some(before) = &probe_answer {
            assert_eq!(
                &answer, before,
                "the probe's answers changed across a restart"
            );
        }
        probe_answer = Some(answer);

        let acked = Arc::new(Mutex::new(0u64));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|id| {
                tokio::spawn(client(
                    server.base.clone(),
                    id,
                    logs.clone(),
                    rng.random(),
                    acked.clone(),
                ))
            })
            .collect();
        // Let a few writes through, then kill at a random moment of the stream.
        while *acked.lock().unwrap() < 2 && !clients.iter().all(|c| c.is_finished()) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
        server.kill();
        for client in clients {
            client.await.unwrap();
        }
        total_acked += *acked.lock().unwrap();
        let rows = check_store(setup);
        if kills <= 10 || (kill + 1) % 20 == 0 {
            eprintln!(
                "kill {}/{kills}: {} acknowledged writes so far, {rows} rows, {:.0} s",
                kill + 1,
                total_acked,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let server = Server::start(setup, "warn").await;
    let (committed, unknown) = check_and_resolve(&server, &logs).await;
    total_committed += committed;
    total_unknown += unknown;
    let names = logs.lock().unwrap().len();
    eprintln!(
        "crash soak: {kills} SIGKILLs, {total_acked} acknowledged writes, all present and intact; \
         {total_unknown} writes in flight at a kill ({total_committed} of them had committed); \
         {names} task names; {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert!(total_acked >= kills as u64 * 2);
}
