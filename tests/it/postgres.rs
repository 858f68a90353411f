//! Replicas sharing one PostgreSQL task store: in-process servers (`server::run`) on the same
//! database, each a replica of its own. A write acknowledged by one is served by the others; an
//! `If-Match` race across replicas has one winner; `max_tasks` holds across them; a replica
//! started later serves everything; with PostgreSQL down predictions go on and writes answer
//! 503; a lost LISTEN connection is made again and the replica catches up. Waits poll with a
//! deadline and never assert how long anything took.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use deltaspace::secret::Secret;
use deltaspace::server::{Options, StoreLocation};
use serde_json::{Value, json};

use crate::api::helpers::{D, Fixture, TestApp, assert_error, ok_json, task_body};
use crate::api::jobs::{tune_body, wait_for_end};
use crate::pg::{self, Postgres};
use crate::reliability::process::{self, Server, Setup};

/// How long another replica may take to serve a write.
const PROPAGATION: Duration = Duration::from_secs(10);

/// Options for replica `name` on the store at `url`.
fn replica(fixture: &Fixture, url: &str, name: &str) -> Options {
    Options {
        store: StoreLocation::Postgres(Secret::new(url)),
        replica: name.into(),
        ..fixture.options()
    }
}

fn body(z0: f32) -> Value {
    task_body("lora", [z0, 0.0, 0.0, 0.0], &["sports", "music"])
}

/// Polls `check` until it holds or `limit` passes; panics then with `what`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: not within {limit:?}");
}

/// The generation `app` serves for `name`, if any.
async fn generation(app: &TestApp, name: &str) -> Option<u64> {
    let response = app.get(&format!("/v1/tasks/{name}")).await;
    if response.status() != 200 {
        return None;
    }
    response.json::<Value>().await.unwrap()["generation"].as_u64()
}

async fn served_at(app: &TestApp, name: &str, wanted: u64) {
    eventually(
        PROPAGATION,
        &format!("{name} at generation {wanted}"),
        || async { generation(app, name).await == Some(wanted) },
    )
    .await;
}

async fn put_if_match(app: &TestApp, name: &str, etag: &str, body: &Value) -> reqwest::Response {
    app.client
        .put(app.url(&format!("/v1/tasks/{name}")))
        .header("if-match", format!("\"{etag}\""))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn delete(app: &TestApp, name: &str) -> reqwest::Response {
    app.client
        .delete(app.url(&format!("/v1/tasks/{name}")))
        .send()
        .await
        .unwrap()
}

async fn predict(app: &TestApp, name: &str) -> reqwest::Response {
    app.post(
        &format!("/v1/tasks/{name}/predict"),
        &json!({"inputs": ["The striker scored twice."]}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_write_on_one_replica_is_served_by_the_other() {
    let fixture = Fixture::new();
    let url = pg::off_runtime(|| pg::shared().database());
    let a = TestApp::spawn(replica(&fixture, &url, "a")).await;
    let b = TestApp::spawn(replica(&fixture, &url, "b")).await;

    let created = ok_json(a.put_task("topic", &body(0.5)).await).await;
    assert_eq!(created["generation"], 1);
    served_at(&b, "topic", 1).await;
    assert_eq!(predict(&b, "topic").await.status(), 200);
    ok_json(a.put_task("topic", &body(0.75)).await).await;
    served_at(&b, "topic", 2).await;
    let on_b = ok_json(b.get("/v1/tasks/topic").await).await;
    assert_eq!(on_b["z"][0], 0.75);

    assert_eq!(delete(&b, "topic").await.status(), 204);
    eventually(PROPAGATION, "the delete reaches a", || async {
        a.get("/v1/tasks/topic").await.status() == 404
    })
    .await;
    assert_error(predict(&a, "topic").await, 404, "task_not_found").await;

    let ready = ok_json(b.get("/health/ready").await).await;
    assert_eq!(ready["store"]["backend"], "postgres");
    assert_eq!(ready["store"]["connected"], true);
    // Three changes: two writes and a delete, b's own delete included once it follows it.
    eventually(PROPAGATION, "b applied change 3", || async {
        ok_json(b.get("/health/ready").await).await["store"]["change"] == 3
    })
    .await;
    assert_eq!(b.metrics().await.get("deltaspace_store_connected"), 1.0);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_racing_if_match_writes_on_two_replicas_have_one_winner() {
    let fixture = Fixture::new();
    let url = pg::off_runtime(|| pg::shared().database());
    let a = TestApp::spawn(replica(&fixture, &url, "a")).await;
    let b = TestApp::spawn(replica(&fixture, &url, "b")).await;
    for round in 0..5 {
        let name = format!("race-{round}");
        let first = ok_json(a.put_task(&name, &body(0.1)).await).await;
        served_at(&b, &name, 1).await;
        let etag = first["etag"].as_str().unwrap();
        let (body_a, body_b) = (body(0.2), body(0.3));
        let (on_a, on_b) = tokio::join!(
            put_if_match(&a, &name, etag, &body_a),
            put_if_match(&b, &name, etag, &body_b),
        );
        let statuses = [on_a.status().as_u16(), on_b.status().as_u16()];
        let winners = statuses.iter().filter(|&&s| s == 200).count();
        assert_eq!(winners, 1, "{statuses:?}");
        assert!(statuses.contains(&409), "{statuses:?}");
        served_at(&a, &name, 2).await;
        served_at(&b, &name, 2).await;
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// A client may write on one replica with the etag another one gave it: `If-Match` is checked in
/// the database, whether or not the second replica has followed the first write yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_if_match_is_checked_against_the_store_not_a_replicas_copy() {
    let fixture = Fixture::new();
    let url = pg::off_runtime(|| pg::shared().database());
    let a = TestApp::spawn(replica(&fixture, &url, "a")).await;
    let b = TestApp::spawn(replica(&fixture, &url, "b")).await;
    ok_json(a.put_task("shared", &body(0.0)).await).await;
    served_at(&b, "shared", 1).await;
    for round in 1..=5 {
        let on_a = ok_json(a.put_task("shared", &body(round as f32)).await).await;
        let etag = on_a["etag"].as_str().unwrap();
        let on_b = ok_json(put_if_match(&b, "shared", etag, &body(-(round as f32))).await).await;
        assert_eq!(on_b["generation"], 2 * round + 1);
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_max_tasks_holds_across_replicas_and_a_late_replica_sees_every_task() {
    let fixture = Fixture::new();
    let url = pg::off_runtime(|| pg::shared().database());
    let bounded = |name: &str| Options {
        max_tasks: 3,
        ..replica(&fixture, &url, name)
    };
    let a = TestApp::spawn(bounded("a")).await;
    let b = TestApp::spawn(bounded("b")).await;
    ok_json(a.put_task("one", &body(0.1)).await).await;
    ok_json(b.put_task("two", &body(0.2)).await).await;
    ok_json(a.put_task("three", &body(0.3)).await).await;
    // Neither replica needs to have seen the others' tasks: the store counts them.
    assert_error(b.put_task("four", &body(0.4)).await, 409, "too_many_tasks").await;
    assert_error(a.put_task("four", &body(0.4)).await, 409, "too_many_tasks").await;
    ok_json(b.put_task("one", &body(0.5)).await).await;

    let late = TestApp::spawn(bounded("c")).await;
    let page = ok_json(late.get("/v1/tasks").await).await;
    let names: Vec<&str> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["one", "three", "two"]);
    assert_eq!(generation(&late, "one").await, Some(2));
    assert_eq!(predict(&late, "two").await.status(), 200);
    for app in [a, b, late] {
        app.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_keeps_predictions_refuses_writes_and_both_converge_after() {
    let server = pg::off_runtime(Postgres::start);
    let fixture = Fixture::new();
    let url = pg::off_runtime(|| server.database());
    let a = TestApp::spawn(replica(&fixture, &url, "a")).await;
    let b = TestApp::spawn(replica(&fixture, &url, "b")).await;
    ok_json(a.put_task("kept", &body(0.5)).await).await;
    served_at(&b, "kept", 1).await;

    pg::off_runtime(|| server.stop());
    for app in [&a, &b] {
        assert_eq!(predict(app, "kept").await.status(), 200);
        let message = assert_error(
            app.put_task("new", &body(0.1)).await,
            503,
            "store_unavailable",
        )
        .await;
        assert!(message.contains("unavailable"), "{message}");
        assert_error(delete(app, "kept").await, 503, "store_unavailable").await;
        let tune = app.post("/v1/tasks/tuned/tune", &tune_body(3)).await;
        assert_error(tune, 503, "store_unavailable").await;
        let ready = app.get("/health/ready").await;
        assert_eq!(ready.status(), 200, "ready while the store is down");
    }
    eventually(PROPAGATION, "b reports the lost change feed", || async {
        ok_json(b.get("/health/ready").await).await["store"]["connected"] == false
    })
    .await;
    assert_eq!(
        generation(&a, "new").await,
        None,
        "nothing unacknowledged is served"
    );

    pg::off_runtime(|| server.start_again());
    // Writes work again once the store is back (the next call connects again).
    eventually(
        Duration::from_secs(30),
        "a write after the restart",
        || async { a.put_task("new", &body(0.2)).await.status() == 201 },
    )
    .await;
    ok_json(b.put_task("kept", &body(0.6)).await).await;
    for app in [&a, &b] {
        served_at(app, "new", 1).await;
        served_at(app, "kept", 2).await;
    }
    eventually(
        Duration::from_secs(30),
        "b follows the store again",
        || async { ok_json(b.get("/health/ready").await).await["store"]["connected"] == true },
    )
    .await;
    assert!(b.metrics().await.get("deltaspace_store_reconnects_total") >= 1.0);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// A tune job that finishes while another session holds the store's change counter past
/// `lock_timeout` (as a long import's transaction does) keeps trying to serve its task, and
/// serves it once the lock is let go, rather than losing what it tuned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_tune_job_serves_its_task_once_a_held_store_lock_is_let_go() {
    let fixture = Fixture::new();
    let url = pg::off_runtime(|| pg::shared().database());
    let with_short_locks = format!("{url}&options=-c%20lock_timeout%3D200ms");
    let app = TestApp::spawn(replica(&fixture, &with_short_locks, "a")).await;
    let (let_go, held_until) = std::sync::mpsc::channel::<()>();
    let (locked, is_locked) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        pg::with_client(&url, move |client| {
            let mut transaction = client.transaction().unwrap();
            transaction
                .query_one("SELECT last FROM changes FOR UPDATE", &[])
                .unwrap();
            locked.send(()).unwrap();
            held_until.recv().unwrap();
            transaction.commit().unwrap();
        })
    });
    is_locked.recv().unwrap();

    let accepted = ok_json(app.post("/v1/tasks/tuned/tune", &tune_body(3)).await).await;
    let job = accepted["job"].as_str().unwrap().to_string();
    eventually(
        Duration::from_secs(60),
        "the job's write meets the held lock",
        || async {
            app.metrics()
                .await
                .get("deltaspace_tune_commit_retries_total")
                >= 1.0
        },
    )
    .await;
    let record = ok_json(app.get(&format!("/v1/jobs/{job}")).await).await;
    assert_eq!(record["state"], "running", "{record}");
    assert_eq!(generation(&app, "tuned").await, None);

    let_go.send(()).unwrap();
    holder.join().unwrap();
    let record = wait_for_end(&app, &job).await;
    assert_eq!(record["state"], "succeeded", "{record}");
    assert_eq!(generation(&app, "tuned").await, Some(1));
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_replica_whose_listen_connection_is_dropped_catches_up() {
    let fixture = Fixture::new();
    let url = pg::off_runtime(|| pg::shared().database());
    let a = TestApp::spawn(replica(&fixture, &url, "a")).await;
    let b = TestApp::spawn(replica(&fixture, &url, "b")).await;
    for app in [&a, &b] {
        eventually(PROPAGATION, "the replica listens", || async {
            ok_json(app.get("/health/ready").await).await["store"]["connected"] == true
        })
        .await;
    }
    let terminated: i64 = pg::with_client(&url, |admin| {
        admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = current_database() AND query LIKE 'LISTEN%'",
                &[],
            )
            .unwrap()
            .get(0)
    });
    assert_eq!(terminated, 2, "one LISTEN connection per replica");
    // Written while b may be without its LISTEN connection: b catches up when it reconnects.
    ok_json(a.put_task("while-away", &body(0.3)).await).await;
    served_at(&b, "while-away", 1).await;
    eventually(PROPAGATION, "b listens again", || async {
        b.metrics().await.get("deltaspace_store_reconnects_total") >= 1.0
            && ok_json(b.get("/health/ready").await).await["store"]["connected"] == true
    })
    .await;
    ok_json(a.put_task("after", &body(0.4)).await).await;
    served_at(&b, "after", 1).await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// `deltaspace import` into SQLite, `deltaspace export` from it, `deltaspace import` of that file
/// into PostgreSQL: a server on PostgreSQL serves every task, and exporting from PostgreSQL gives
/// the same lines back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tasks_move_from_sqlite_by_export_and_import() {
    let url = pg::off_runtime(|| pg::shared().database());
    let sqlite = Setup::new();
    let tasks = sqlite.dir.path().join("tasks.jsonl");
    let lines: Vec<String> = (0..20)
        .map(|i| {
            let mut task = task_body("adapter", [i as f32 / 10.0, 0.5, 0.0, -0.5], &["no", "yes"]);
            task["name"] = json!(format!("moved-{i:02}"));
            task.to_string()
        })
        .collect();
    std::fs::write(&tasks, lines.join("\n")).unwrap();
    succeeds(sqlite.command([Path::new("import"), &tasks], "info"));

    let exported = sqlite.dir.path().join("exported.jsonl");
    succeeds(export(&sqlite, &exported));
    let text = std::fs::read_to_string(&exported).unwrap();
    assert_eq!(text.lines().count(), 20);

    // Same subspace file, so the exported tasks' subspace ids match.
    let shared = Setup {
        env: vec![("DELTASPACE_STORE_URL".into(), url.clone())],
        ..sqlite
    };
    succeeds(shared.command([Path::new("import"), &exported], "info"));
    let server = Server::start(&shared, "info").await;
    let info: Value = reqwest::get(server.url("/v1/info"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["tasks"], 20);
    let again = shared.dir.path().join("again.jsonl");
    succeeds(export(&shared, &again));
    let strip = |text: &str| -> Vec<Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    assert_eq!(
        strip(&std::fs::read_to_string(&again).unwrap()),
        strip(&text)
    );
    server.kill();
}

#[test]
fn postgres_a_bad_store_url_stops_the_server_with_code_2() {
    let setup = Setup::new().store_url("mysql://db/tasks");
    let output = setup
        .command(["serve", "--bind", "127.0.0.1:0"], "warn")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{log}");
    assert!(log.contains("[store] url"), "{log}");
}

/// `deltaspace export --out FILE` on `setup`'s store.
fn export(setup: &Setup, out: &Path) -> Command {
    let mut command = Command::new(process::binary());
    command
        .arg("--config")
        .arg(&setup.config)
        .args(["export", "--data-dir"])
        .arg(setup.data_dir())
        .arg("--out")
        .arg(out)
        .env_clear()
        .envs(std::env::vars().filter(|(k, _)| !k.starts_with("DELTASPACE_")))
        .envs(setup.env.iter().cloned());
    command
}

fn succeeds(mut command: Command) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `D` is the fixture's subspace dimension; the bodies above assume 4.
const _: () = assert!(D == 4);
