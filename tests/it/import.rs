//! `deltaspace import` on the tiny model: tasks from JSON lines and TASK.json files go into a
//! server's database in bulk, a bad task stops the import before anything is written, and the
//! server then serves them, embedding each distinct label set once.

use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};

use crate::reliability::process::{Server, Setup};

fn import(setup: &Setup, files: &[&Path]) -> Output {
    let args = std::iter::once(Path::new("import")).chain(files.iter().copied());
    setup.command(args, "info").output().unwrap()
}

/// Task `i` of a bulk set: its own z, DETs in turn, one of two label sets.
fn task(i: usize) -> Value {
    let labels = if i.is_multiple_of(2) {
        json!([{"name": "no", "description": "No."}, {"name": "yes", "description": "Yes."}])
    } else {
        json!([{"name": "neg", "description": "Bad."}, {"name": "pos", "description": "Good."}])
    };
    let det = ["lora", "adapter", "prefix"][i % 3];
    let z = [i as f32 / 10.0, -0.5, 0.25, 1.0];
    json!({"name": format!("bulk-{i:03}"), "det": det, "z": z, "labels": labels})
}

async fn get_json(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// One prediction of `task` on "fine", answered 200.
async fn predict(server: &Server, task: &str) -> Value {
    let response = reqwest::Client::new()
        .post(server.url(&format!("/v1/tasks/{task}/predict")))
        .json(&json!({"inputs": ["fine"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn write_lines(path: &Path, tasks: impl Iterator<Item = Value>) {
    let text: Vec<String> = tasks.map(|t| t.to_string()).collect();
    std::fs::write(path, text.join("\n") + "\n").unwrap();
}

/// Moves the stored task `name` to an older subspace, as an upgrade of the default leaves it.
fn as_if_tuned_for_an_older_subspace(setup: &Setup, name: &str) {
    rusqlite::Connection::open(setup.database())
        .unwrap()
        .execute(
            "UPDATE tasks SET subspace_id = 'old-default@0123456789ab' WHERE name = ?1",
            [name],
        )
        .unwrap();
}

/// The status `GET /v1/tasks/{task}` answers.
async fn get_status(server: &Server, task: &str) -> reqwest::StatusCode {
    reqwest::get(server.url(&format!("/v1/tasks/{task}")))
        .await
        .unwrap()
        .status()
}

fn count_tasks(setup: &Setup) -> i64 {
    rusqlite::Connection::open(setup.database())
        .unwrap()
        .query_row("SELECT count(*) FROM tasks", [], |row| row.get(0))
        .unwrap()
}

#[tokio::test]
async fn imported_tasks_are_served_and_share_label_sets() {
    let setup = Setup::new();
    let lines = setup.dir.path().join("tasks.jsonl");
    write_lines(&lines, (0..40).map(task));
    let single = setup.dir.path().join("one.json");
    std::fs::write(&single, task(40).to_string()).unwrap();

    let output = import(&setup, &[&lines, &single]);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(
        log.contains("written=41") && log.contains("created=41"),
        "{log}"
    );

    let server = Server::start(&setup, "info").await;
    let info = get_json(&server.url("/v1/info")).await;
    assert_eq!(info["tasks"], 41);
    assert_eq!(info["label_sets"], 2, "41 tasks, 2 distinct label sets");
    assert!(server.log_text().contains("embedded=2"));
    let answer = predict(&server, "bulk-007").await;
    assert_eq!(answer["det"], "adapter");
    let label = answer["predictions"][0]["label"].as_str().unwrap();
    assert!(["neg", "pos"].contains(&label), "{answer}");
    let stored = get_json(&server.url("/v1/tasks/bulk-040")).await;
    assert_eq!(stored["z"], task(40)["z"]);
    assert_eq!(stored["labels"], task(40)["labels"]);
    drop(server);

    // The label sets were cached at the first start: the second embeds none.
    let server = Server::start(&setup, "info").await;
    assert!(
        server.log_text().contains("embedded=0"),
        "{}",
        server.log_text()
    );
}

#[test]
fn a_bad_task_stops_the_import_before_anything_is_written() {
    let setup = Setup::new();
    let good = setup.dir.path().join("good.jsonl");
    write_lines(&good, (0..5).map(task));
    assert!(import(&setup, &[&good]).status.success());
    assert_eq!(count_tasks(&setup), 5);

    let mut wrong_d = task(7);
    wrong_d["z"] = json!([1.0, 2.0]);
    // A head is checked as an upload's is.
    let mut headed = task(8);
    headed["head"] = json!({"bias": [0.5, -0.5, 0.0]});
    let cases = [
        (wrong_d.to_string(), "bulk-007"),
        ("{\"name\": \"half".to_string(), "bad.jsonl:3"),
        (headed.to_string(), "bias has 3 values for 2 labels"),
    ];
    for (bad_line, named) in cases {
        let bad = setup.dir.path().join("bad.jsonl");
        let lines = [task(5).to_string(), task(6).to_string(), bad_line];
        std::fs::write(&bad, lines.join("\n")).unwrap();
        let output = import(&setup, &[&bad]);
        let message = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{message}");
        assert!(message.contains(named), "{message}");
        assert_eq!(
            count_tasks(&setup),
            5,
            "nothing of a failed import is written"
        );
    }
    let output = import(&setup, &[&setup.dir.path().join("missing.jsonl")]);
    assert_eq!(output.status.code(), Some(2));
}

/// An export holds the tasks of every subspace its store kept; importing it with the loaded
/// subspace leaves out the others, says so, and writes the rest.
#[test]
fn tasks_naming_another_subspace_are_left_out_and_counted() {
    let setup = Setup::new();
    let lines = setup.dir.path().join("mixed.jsonl");
    let old = |i: usize| {
        let mut task = task(i);
        task["subspace"] = json!("old-default@0123456789ab");
        task
    };
    write_lines(&lines, [task(0), old(1), task(2), old(3)].into_iter());
    let output = import(&setup, &[&lines]);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(
        log.contains("written=2") && log.contains("skipped=2"),
        "{log}"
    );
    assert!(
        log.contains("another subspace") && log.contains("old-default@0123456789ab"),
        "{log}"
    );
    assert_eq!(count_tasks(&setup), 2);
}

#[tokio::test]
async fn label_sets_no_task_uses_are_forgotten_at_the_next_start() {
    let setup = Setup::new();
    let lines = setup.dir.path().join("two.jsonl");
    write_lines(&lines, (0..2).map(task));
    assert!(import(&setup, &[&lines]).status.success());
    let cached = || -> i64 {
        rusqlite::Connection::open(setup.database())
            .unwrap()
            .query_row("SELECT count(*) FROM label_embeddings", [], |row| {
                row.get(0)
            })
            .unwrap()
    };
    let server = Server::start(&setup, "info").await;
    assert_eq!(cached(), 2);
    let deleted = reqwest::Client::new()
        .delete(server.url("/v1/tasks/bulk-001"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    drop(server);
    let server = Server::start(&setup, "info").await;
    assert!(
        server.log_text().contains("forgotten=1"),
        "{}",
        server.log_text()
    );
    assert_eq!(cached(), 1, "only the label set of bulk-000 stays cached");
}

#[tokio::test]
async fn a_damaged_cached_label_set_is_embedded_again_and_rewritten() {
    let setup = Setup::new();
    let lines = setup.dir.path().join("one.jsonl");
    write_lines(&lines, (0..1).map(task));
    assert!(import(&setup, &[&lines]).status.success());
    drop(Server::start(&setup, "info").await);
    let blob_bytes = || -> i64 {
        rusqlite::Connection::open(setup.database())
            .unwrap()
            .query_row("SELECT length(embeddings) FROM label_embeddings", [], |r| {
                r.get(0)
            })
            .unwrap()
    };
    let whole = blob_bytes();
    rusqlite::Connection::open(setup.database())
        .unwrap()
        .execute("UPDATE label_embeddings SET embeddings = x'00000000'", [])
        .unwrap();
    let server = Server::start(&setup, "info").await;
    assert!(
        server.log_text().contains("embedded=1"),
        "{}",
        server.log_text()
    );
    assert_eq!(blob_bytes(), whole, "the damaged row was replaced");
    let answer = predict(&server, "bulk-000").await;
    assert!(answer["predictions"][0]["label"].is_string(), "{answer}");
}

#[tokio::test]
async fn tasks_of_another_subspace_are_kept_and_the_log_says_how_to_serve_them() {
    let setup = Setup::new();
    let lines = setup.dir.path().join("two.jsonl");
    write_lines(&lines, (0..2).map(task));
    assert!(import(&setup, &[&lines]).status.success());
    as_if_tuned_for_an_older_subspace(&setup, "bulk-000");
    let server = Server::start(&setup, "info").await;
    let log = server.log_text();
    assert!(
        log.contains("made for another subspace") && log.contains("old-default@0123456789ab"),
        "{log}"
    );
    assert_eq!(get_status(&server, "bulk-000").await, 404);
    get_json(&server.url("/v1/tasks/bulk-001")).await;
    drop(server);
    assert_eq!(count_tasks(&setup), 2, "the other subspace's task is kept");
}

#[tokio::test]
async fn a_seed_task_stored_for_another_subspace_is_named_at_start_and_import_brings_it_back() {
    let seeds = tempfile::tempdir().unwrap();
    let seed = seeds.path().join("bulk-005.json");
    std::fs::write(&seed, task(5).to_string()).unwrap();
    let setup = Setup::new().server("seed_tasks_dir", seeds.path().display());
    let server = Server::start(&setup, "info").await;
    predict(&server, "bulk-005").await;
    drop(server);
    as_if_tuned_for_an_older_subspace(&setup, "bulk-005");
    let server = Server::start(&setup, "info").await;
    let log = server.log_text();
    assert!(
        log.contains("seed tasks imported before are stored for another subspace")
            && log.contains("bulk-005.json"),
        "{log}"
    );
    assert_eq!(
        get_status(&server, "bulk-005").await,
        404,
        "seeded once: not imported again"
    );
    drop(server);

    // What the warning says to do: import the seed file for the loaded subspace.
    let output = import(&setup, &[&seed]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let server = Server::start(&setup, "info").await;
    predict(&server, "bulk-005").await;
    let log = server.log_text();
    assert!(!log.contains("another subspace"), "{log}");

    // A seed task deleted on purpose stays deleted, and the log does not nag about it.
    let deleted = reqwest::Client::new()
        .delete(server.url("/v1/tasks/bulk-005"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    drop(server);
    let server = Server::start(&setup, "info").await;
    assert_eq!(get_status(&server, "bulk-005").await, 404);
    assert!(!server.log_text().contains("seed tasks imported before"));
}

/// Cached label embeddings name how they were made: a re-export of the same model that truncates
/// descriptions elsewhere (another `max_seq_len`) embeds the label sets again at its first start,
/// rather than scoring against embeddings of the old export.
#[tokio::test]
async fn a_re_export_that_truncates_otherwise_embeds_the_label_sets_again() {
    let mut setup = Setup::new();
    let lines = setup.dir.path().join("tasks.jsonl");
    write_lines(&lines, (0..2).map(task));
    assert!(import(&setup, &[&lines]).status.success());
    drop(Server::start(&setup, "info").await);
    let server = Server::start(&setup, "info").await;
    assert!(
        server.log_text().contains("embedded=0"),
        "{}",
        server.log_text()
    );
    drop(server);

    let re_export = setup.dir.path().join("re-export");
    std::fs::create_dir(&re_export).unwrap();
    for entry in std::fs::read_dir(&setup.model).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, re_export.join(path.file_name().unwrap())).unwrap();
    }
    let manifest = re_export.join("manifest.json");
    let mut json: Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    json["max_seq_len"] = json!(16);
    std::fs::write(&manifest, json.to_string()).unwrap();
    setup.model = re_export;
    let server = Server::start(&setup, "info").await;
    assert!(
        server.log_text().contains("embedded=2"),
        "{}",
        server.log_text()
    );
    predict(&server, "bulk-001").await;
}

/// A write that waits past SQLite's busy timeout behind another writer (an import, here a
/// transaction held open) answers 503 `store_unavailable` with `Retry-After`, as PostgreSQL's lock
/// timeout does, and the same write lands once the database is free.
#[tokio::test]
async fn a_write_behind_a_busy_database_answers_503_and_lands_once_it_is_free() {
    let setup = Setup::new();
    let server = Server::start(&setup, "info").await;
    let holder = rusqlite::Connection::open(setup.database()).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut body = task(0);
    body.as_object_mut().unwrap().remove("name");
    let put = || {
        reqwest::Client::new()
            .put(server.url("/v1/tasks/bulk-000"))
            .json(&body)
            .send()
    };
    let refused = put().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("busy"),
        "{body}"
    );
    holder.execute_batch("COMMIT").unwrap();
    assert!(put().await.unwrap().status().is_success());
    assert_eq!(count_tasks(&setup), 1);
}
