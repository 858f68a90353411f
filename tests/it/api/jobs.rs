//! Tune jobs over HTTP on the tiny model: labeled examples in, a served task out; progress,
//! listing, cancelling, preconditions at acceptance and at completion, every bad input, the
//! queue bound, and a restart that cuts a job short.

use std::time::Duration;

use deltaspace::server::{Backend, DATABASE_FILE, Database, JobRecord, JobState, TuneLimits};
use serde_json::{Value, json};

use super::helpers::{Fixture, TestApp, assert_error, ok_json, task_body};

/// A two-label task: `per_label` short examples of each label.
pub(crate) fn tune_body(per_label: usize) -> Value {
    let examples: Vec<Value> = (0..per_label)
        .flat_map(|i| {
            [
                json!({"text": format!("the match ended {i} to nil in the final"), "label": "sports"}),
                json!({"text": format!("the band played song number {i} on stage"), "label": "music"}),
            ]
        })
        .collect();
    json!({
        "labels": [
            {"name": "sports", "description": "The text is about sports."},
            {"name": "music", "description": "The text is about music."},
        ],
        "examples": examples,
    })
}

/// A job that trains until `seconds` have passed (or it is cancelled): no early stopping.
fn long_body(seconds: u64) -> Value {
    let mut body = tune_body(8);
    body["budget"] = json!({"steps": 10_000, "seconds": seconds, "patience": 0});
    body
}

/// The fixture server's SQLite database, opened beside it (as another writer would).
fn database(fixture: &Fixture) -> rusqlite::Connection {
    rusqlite::Connection::open(fixture.path("data").join(DATABASE_FILE)).unwrap()
}

/// Posts a tune request; returns the response.
async fn post_tune(app: &TestApp, name: &str, body: &Value) -> reqwest::Response {
    app.post(&format!("/v1/tasks/{name}/tune"), body).await
}

/// Posts a tune request that must be accepted; returns the job id.
async fn start(app: &TestApp, name: &str, body: &Value) -> String {
    let response = post_tune(app, name, body).await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let accepted = ok_json(response).await;
    let job = accepted["job"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/jobs/{job}"));
    assert_eq!(accepted["status_url"], location);
    job
}

/// Polls a job until it has ended (60 s at most); returns its last record.
pub(crate) async fn wait_for_end(app: &TestApp, job: &str) -> Value {
    for _ in 0..1200 {
        let record = ok_json(app.get(&format!("/v1/jobs/{job}")).await).await;
        if ["succeeded", "failed", "cancelled"].contains(&record["state"].as_str().unwrap()) {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {job} did not end in 60 s");
}

/// Polls a job until it runs.
async fn wait_running(app: &TestApp, job: &str) {
    for _ in 0..1200 {
        let record = ok_json(app.get(&format!("/v1/jobs/{job}")).await).await;
        if record["state"] == "running" && record["step"].as_u64().unwrap() > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("job {job} did not start in 30 s");
}

#[tokio::test]
async fn a_tune_job_turns_labeled_examples_into_a_served_task() {
    let fixture = Fixture::new();
    let app = TestApp::spawn(fixture.options()).await;
    let mut body = tune_body(8);
    body["test_examples"] = tune_body(3)["examples"].clone();
    body["budget"] = json!({"steps": 20});
    body["seed"] = json!(3);
    let job = start(&app, "topic", &body).await;
    let record = wait_for_end(&app, &job).await;
    assert_eq!(record["state"], "succeeded", "{record}");
    assert_eq!(record["task"], "topic");
    assert!(record["step"].as_u64().unwrap() > 0, "{record}");
    assert_eq!(record["steps"], 20);
    let result = &record["result"];
    assert_eq!(result["generation"], 1);
    assert!(result["test_accuracy"].as_f64().is_some(), "{record}");
    assert!(result["dev_accuracy"].as_f64().is_some(), "{record}");

    // Served as PUT serves: the etag, a head, and predictions at once.
    let task = ok_json(app.get("/v1/tasks/topic").await).await;
    assert_eq!(task["etag"], result["etag"]);
    assert_eq!(task["det"], result["det"]);
    assert_eq!(task["head"]["bias"].as_array().unwrap().len(), 2);
    let prediction = app
        .predict("topic", &json!({"inputs": ["the band played on"]}))
        .await;
    assert_eq!(prediction["generation"], 1);
    assert_eq!(
        prediction["predictions"][0]["scores"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // The list has it; the metrics counted it.
    let page = ok_json(app.get("/v1/jobs").await).await;
    assert_eq!(page["jobs"][0]["job"], job.as_str());
    assert_eq!(page["jobs"][0]["state"], "succeeded");
    let metrics = app.metrics().await;
    assert_eq!(
        metrics.get(r#"deltaspace_tune_jobs_total{result="succeeded"}"#),
        1.0
    );
    assert!(metrics.get("deltaspace_tune_steps_total") > 0.0);
    assert_eq!(
        metrics.present(r#"deltaspace_tune_jobs{state="running"}"#),
        0.0
    );
    assert_eq!(metrics.get("deltaspace_tune_duration_seconds_count"), 1.0);
    // Its new labels: once for the prototypes' start, once for the served set.
    assert_eq!(metrics.get("deltaspace_label_sets_embedded_total"), 2.0);
    app.stop().await.unwrap();
}

/// `init: ["normal", "upstream"]` tunes from both starts and keeps the better on dev (the warm one
/// only by more than tune's 1-point margin); the job's result names the start kept. Without `init`
/// a job tunes from the same two starts, so the same request makes the same task. /openapi.json
/// offers "upstream" only where the subspace carries codes with their label descriptions, and
/// defaults to it there. (Which code is nearest: `tune_from_upstream_starts_at_the_nearest_code`.)
#[tokio::test]
async fn a_tune_job_can_start_from_the_nearest_upstream_code() {
    let fixture = Fixture::with_upstream_codes(true);
    let app = TestApp::spawn(fixture.options()).await;
    let mut body = tune_body(6);
    body["budget"] = json!({"steps": 10});
    body["init"] = json!(["normal", "upstream"]);
    let job = start(&app, "guarded", &body).await;
    let record = wait_for_end(&app, &job).await;
    assert_eq!(record["state"], "succeeded", "{record}");
    let kept = record["result"]["start"].as_str().unwrap();
    let init = |openapi: &Value| {
        openapi["components"]["schemas"]["TuneRequest"]["properties"]["init"]["items"]["enum"]
            .clone()
    };
    let by_start = record["result"]["dev_by_start"].as_object().unwrap();
    let tuned: Vec<&String> = by_start.keys().collect();
    assert_eq!(tuned.len(), 2, "{record}");
    assert_eq!(tuned[0], "normal");
    assert!(
        ["upstream:news", "upstream:reviews"].contains(&tuned[1].as_str()),
        "{record}"
    );
    let dev = |start: &str| by_start[start].as_f64().unwrap();
    let warm_leads = dev(tuned[1]) - dev("normal") > 0.01 + 1e-6;
    let expected = if warm_leads {
        tuned[1].as_str()
    } else {
        "normal"
    };
    assert_eq!(kept, expected, "{record}");
    assert_eq!(record["result"]["dev_accuracy"].as_f64(), Some(dev(kept)));
    body.as_object_mut().unwrap().remove("init");
    let by_default = wait_for_end(&app, &start(&app, "default", &body).await).await;
    for field in ["start", "det", "dev_accuracy", "dev_by_start"] {
        assert_eq!(
            by_default["result"][field], record["result"][field],
            "{field}"
        );
    }
    let default_task = ok_json(app.get("/v1/tasks/default").await).await;
    let guarded_task = ok_json(app.get("/v1/tasks/guarded").await).await;
    assert_eq!(default_task["z"], guarded_task["z"]);
    let served = ok_json(app.get("/openapi.json").await).await;
    assert_eq!(init(&served), json!(["normal", "upstream"]));
    let default = |openapi: &Value| {
        openapi["components"]["schemas"]["TuneRequest"]["properties"]["init"]["default"].clone()
    };
    assert_eq!(default(&served), json!(["normal", "upstream"]));
    app.stop().await.unwrap();

    let without = Fixture::new();
    let app = TestApp::spawn(without.options()).await;
    let served = ok_json(app.get("/openapi.json").await).await;
    assert_eq!(
        init(&served),
        json!(["normal"]),
        "a random subspace has no codes"
    );
    app.stop().await.unwrap();

    // Codes without their label descriptions: nothing to choose a code by.
    let undescribed = Fixture::with_upstream_codes(false);
    let app = TestApp::spawn(undescribed.options()).await;
    let served = ok_json(app.get("/openapi.json").await).await;
    assert_eq!(init(&served), json!(["normal"]));
    assert_eq!(default(&served), json!(["normal"]));
    body["init"] = json!(["normal", "upstream"]);
    let refused = post_tune(&app, "guarded", &body).await;
    let message = assert_error(refused, 422, "invalid_tune").await;
    assert!(
        message.contains("carries no label descriptions"),
        "{message}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_same_examples_and_seed_make_the_same_task() {
    let fixture = Fixture::new();
    let app = TestApp::spawn(fixture.options()).await;
    let mut body = tune_body(6);
    body["budget"] = json!({"steps": 10});
    body["det"] = json!("adapter");
    let first = start(&app, "a", &body).await;
    assert_eq!(wait_for_end(&app, &first).await["state"], "succeeded");
    let second = start(&app, "b", &body).await;
    assert_eq!(wait_for_end(&app, &second).await["state"], "succeeded");
    let (a, b) = (
        ok_json(app.get("/v1/tasks/a").await).await,
        ok_json(app.get("/v1/tasks/b").await).await,
    );
    assert_eq!(a["det"], "adapter");
    assert_eq!(a["z"], b["z"]);
    assert_eq!(a["head"], b["head"]);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn bad_tune_requests_are_refused_with_the_reason() {
    let fixture = Fixture::new();
    let mut options = fixture.options();
    options.tune = TuneLimits {
        max_examples: 20,
        max_seconds: 30,
        ..TuneLimits::default()
    };
    let app = TestApp::spawn(options).await;
    let good = tune_body(2);
    let with = |change: &dyn Fn(&mut Value)| {
        let mut body = good.clone();
        change(&mut body);
        body
    };
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            with(&|b| b["labels"] = json!([{"name": "a", "description": "A."}])),
            422,
            "invalid_tune",
            "labels",
        ),
        (
            with(&|b| b["examples"][0]["label"] = json!("chess")),
            422,
            "invalid_tune",
            "examples[0]: label \"chess\"",
        ),
        (
            with(&|b| b["examples"] = json!([{"text": "goal!", "label": "sports"}])),
            422,
            "invalid_tune",
            "\"music\" has no example",
        ),
        (tune_body(11), 422, "invalid_tune", "max_tune_examples = 20"),
        (
            with(&|b| b["examples"][1]["text"] = json!(" ")),
            422,
            "invalid_tune",
            "examples[1]: text is empty",
        ),
        (
            with(&|b| b["examples"][1]["text"] = json!("x".repeat(10_001))),
            422,
            "invalid_tune",
            "max_text_chars",
        ),
        (
            with(&|b| b["budget"] = json!({"seconds": 31})),
            422,
            "invalid_tune",
            "max_tune_seconds = 30",
        ),
        (
            with(&|b| b["budget"] = json!({"steps": 0})),
            422,
            "invalid_tune",
            "budget.steps",
        ),
        (
            with(&|b| b["det"] = json!("bitfit")),
            422,
            "invalid_tune",
            "bitfit",
        ),
        (
            with(&|b| b["dev_examples"] = json!([])),
            422,
            "invalid_tune",
            "dev_examples is empty",
        ),
        (
            tune_body(1),
            422,
            "invalid_tune",
            "one example per label leaves none",
        ),
        (
            with(&|b| b["init"] = json!(["warm"])),
            422,
            "invalid_tune",
            "init[0]: \"warm\" is not a start",
        ),
        (
            with(&|b| b["init"] = json!([])),
            422,
            "invalid_tune",
            "init must name 1 or 2 starts",
        ),
        (
            with(&|b| b["init"] = json!(["normal", "normal"])),
            422,
            "invalid_tune",
            "init[1]: \"normal\" is given twice",
        ),
        // The fixture's subspace is random: it carries no upstream codes.
        (
            with(&|b| b["init"] = json!(["normal", "upstream"])),
            422,
            "invalid_tune",
            "carries no upstream codes",
        ),
        (
            with(&|b| b["extra"] = json!(1)),
            400,
            "invalid_json",
            "extra",
        ),
        (json!("not an object"), 400, "invalid_json", ""),
    ];
    for (body, status, code, says) in cases {
        let message = assert_error(post_tune(&app, "t", &body).await, status, code).await;
        assert!(message.contains(says), "{message} should say {says}");
    }
    assert_error(
        post_tune(&app, "no*stars", &good).await,
        422,
        "invalid_task",
    )
    .await;
    assert_error(
        app.get("/v1/jobs/0123456789abcdef").await,
        404,
        "job_not_found",
    )
    .await;
    let wrong = app
        .client
        .put(app.url("/v1/tasks/t/tune"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.headers()["allow"], "POST");
    assert_error(wrong, 405, "method_not_allowed").await;
    assert_error(app.get("/v1/jobs?limit=0").await, 422, "invalid_request").await;
    // Nothing was accepted, so nothing was recorded or served.
    assert_eq!(ok_json(app.get("/v1/jobs").await).await["jobs"], json!([]));
    assert_error(app.get("/v1/tasks/t").await, 404, "task_not_found").await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_full_queue_answers_429_and_cancelling_ends_a_job_without_a_task() {
    let fixture = Fixture::new();
    let mut options = fixture.options();
    options.tune = TuneLimits {
        max_jobs: 1,
        max_queued: 1,
        ..TuneLimits::default()
    };
    let app = TestApp::spawn(options).await;
    let long = long_body(60);
    let running = start(&app, "first", &long).await;
    let queued = start(&app, "second", &long).await;
    wait_running(&app, &running).await;
    let refused = post_tune(&app, "third", &long).await;
    assert!(refused.headers().contains_key("retry-after"));
    assert_error(refused, 429, "too_many_jobs").await;
    assert_eq!(
        ok_json(app.get(&format!("/v1/jobs/{queued}")).await).await["state"],
        "queued"
    );

    // A queued job ends at once, a running one at its next step; neither serves a task.
    for job in [&queued, &running] {
        let cancelled = app
            .client
            .delete(app.url(&format!("/v1/jobs/{job}")))
            .send()
            .await
            .unwrap();
        ok_json(cancelled).await;
        let record = wait_for_end(&app, job).await;
        assert_eq!(record["state"], "cancelled", "{record}");
        assert!(record["error"].as_str().unwrap().contains("cancelled"));
    }
    for name in ["first", "second"] {
        assert_error(
            app.get(&format!("/v1/tasks/{name}")).await,
            404,
            "task_not_found",
        )
        .await;
    }
    // Cancelling an ended job leaves it as it is.
    let again = app
        .client
        .delete(app.url(&format!("/v1/jobs/{running}")))
        .send()
        .await
        .unwrap();
    assert_eq!(ok_json(again).await["state"], "cancelled");
    let metrics = app.metrics().await;
    assert_eq!(
        metrics.get(r#"deltaspace_tune_jobs_total{result="cancelled"}"#),
        2.0
    );
    // The list pages through both, one at a time.
    let page = ok_json(app.get("/v1/jobs?limit=1").await).await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    let next = page["next"].as_str().unwrap();
    let rest = ok_json(app.get(&format!("/v1/jobs?after={next}")).await).await;
    assert_eq!(rest["jobs"].as_array().unwrap().len(), 1);
    assert!(rest["next"].is_null());
    // With both slots free, a job is taken again.
    let again = start(&app, "again", &tune_body(6)).await;
    assert_eq!(wait_for_end(&app, &again).await["state"], "succeeded");
    app.stop().await.unwrap();
}

/// On a full server, a tune job for a new name is refused at once, as a PUT would be, not after
/// its budget; jobs already queued or running for other new names count as taking their room.
/// One that replaces a served task is still taken.
#[tokio::test]
async fn a_full_server_refuses_a_tune_job_for_a_new_task_at_once() {
    let fixture = Fixture::new();
    let mut options = fixture.options();
    options.max_tasks = 2;
    let app = TestApp::spawn(options).await;
    let body = task_body("lora", [0.0; 4], &["sports", "music"]);
    assert_eq!(app.put_task("topic", &body).await.status(), 201);
    let running = start(&app, "another", &long_body(60)).await;
    let message = assert_error(
        post_tune(&app, "third", &tune_body(2)).await,
        409,
        "too_many_tasks",
    )
    .await;
    assert!(message.contains("max_tasks"), "{message}");
    let page = ok_json(app.get("/v1/jobs").await).await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1, "{page}");
    let cancel = app.client.delete(app.url(&format!("/v1/jobs/{running}")));
    assert_eq!(cancel.send().await.unwrap().status(), 200);
    assert_eq!(wait_for_end(&app, &running).await["state"], "cancelled");
    let job = start(&app, "topic", &tune_body(2)).await;
    assert_eq!(wait_for_end(&app, &job).await["state"], "succeeded");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn if_match_is_checked_when_a_job_is_accepted_and_again_when_it_serves() {
    let fixture = Fixture::new();
    let app = TestApp::spawn(fixture.options()).await;
    let put = app
        .put_task("topic", &task_body("lora", [0.0; 4], &["sports", "music"]))
        .await;
    let first_etag = ok_json(put).await["etag"].as_str().unwrap().to_string();
    // The job trains for 5 s (no early stopping), then serves: long enough to change the task.
    let body = long_body(5);
    let tune = |etag: &str| {
        app.client
            .post(app.url("/v1/tasks/topic/tune"))
            .header("If-Match", format!("\"{etag}\""))
            .json(&body)
            .send()
    };
    assert_error(tune("stale").await.unwrap(), 409, "etag_mismatch").await;
    let response = tune(&first_etag).await.unwrap();
    assert_eq!(response.status(), 202);
    let job = ok_json(response).await["job"].as_str().unwrap().to_string();
    wait_running(&app, &job).await;
    // The task changes while the job runs: the job fails, the newer task stays.
    let newer = app
        .put_task(
            "topic",
            &task_body("prefix", [0.1; 4], &["sports", "music"]),
        )
        .await;
    let newer_etag = ok_json(newer).await["etag"].as_str().unwrap().to_string();
    let record = wait_for_end(&app, &job).await;
    assert_eq!(record["state"], "failed", "{record}");
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("changed while the job ran"),
        "{record}"
    );
    let task = ok_json(app.get("/v1/tasks/topic").await).await;
    assert_eq!(task["etag"], newer_etag.as_str());
    assert_eq!(task["generation"], 2);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_restart_marks_the_jobs_it_cut_short_as_failed() {
    let fixture = Fixture::new();
    let app = TestApp::spawn(fixture.options()).await;
    let long = long_body(60);
    let job = start(&app, "topic", &long).await;
    wait_running(&app, &job).await;
    app.stop().await.unwrap();

    // A crash leaves a job recorded as running; this replica's restart ends it.
    let mut db = Database::open(&fixture.path("data").join(DATABASE_FILE)).unwrap();
    let mut crashed = JobRecord::queued("c0ffee".into(), "other".into(), 10, "test".into(), 1);
    crashed.state = JobState::Running;
    db.save_job(&crashed).unwrap();
    // Another replica's jobs: one renewing its lease, one whose replica is gone.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let alive = JobRecord::queued("beef".into(), "x".into(), 10, "replica-2".into(), now);
    db.save_job(&alive).unwrap();
    let gone = JobRecord::queued("dead".into(), "y".into(), 10, "replica-3".into(), 2);
    db.save_job(&gone).unwrap();
    drop(db);

    let app = TestApp::spawn(fixture.options()).await;
    for id in [&job, "c0ffee"] {
        let record = ok_json(app.get(&format!("/v1/jobs/{id}")).await).await;
        assert_eq!(record["state"], "failed", "{record}");
        assert_eq!(record["error"], "interrupted", "{record}");
    }
    let mut expired = Value::Null;
    for _ in 0..200 {
        expired = ok_json(app.get("/v1/jobs/dead").await).await;
        if expired["state"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(expired["state"], "failed", "{expired}");
    assert!(
        expired["error"].as_str().unwrap().contains("lease"),
        "{expired}"
    );
    // A live lease is left alone; a cancel is passed to its replica through the store.
    assert_eq!(
        ok_json(app.get("/v1/jobs/beef").await).await["state"],
        "queued"
    );
    let cancel = app
        .client
        .delete(app.url("/v1/jobs/beef"))
        .send()
        .await
        .unwrap();
    let asked = ok_json(cancel).await;
    assert_eq!(asked["state"], "queued");
    assert_eq!(asked["cancel_requested"], true);
    let stored = ok_json(app.get("/v1/jobs/beef").await).await;
    assert_eq!(stored["cancel_requested"], true);
    assert_error(app.get("/v1/tasks/topic").await, 404, "task_not_found").await;
    app.stop().await.unwrap();
}

/// A client that leaves while its job is being recorded (here: the database is locked by another
/// writer for a moment) drops its request, not the job: once recorded, the job runs and ends. It
/// stayed "queued" for good, holding a place in the queue, until 2026-12-02.
#[tokio::test]
async fn a_job_whose_client_left_while_it_was_recorded_still_runs() {
    let fixture = Fixture::new();
    let app = TestApp::spawn(fixture.options()).await;
    let database = fixture.path("data").join(DATABASE_FILE);
    let writer = rusqlite::Connection::open(&database).unwrap();
    writer.execute_batch("BEGIN IMMEDIATE").unwrap();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let left = impatient
        .post(app.url("/v1/tasks/left/tune"))
        .json(&tune_body(4))
        .send()
        .await;
    assert!(
        left.as_ref().is_err_and(reqwest::Error::is_timeout),
        "the client gave up first: {left:?}"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    writer.execute_batch("COMMIT").unwrap();

    for _ in 0..1200 {
        let page = ok_json(app.get("/v1/jobs").await).await;
        if let Some(job) = page["jobs"].as_array().unwrap().first() {
            let record = wait_for_end(&app, job["job"].as_str().unwrap()).await;
            assert_eq!(record["state"], "succeeded", "{record}");
            ok_json(app.get("/v1/tasks/left").await).await;
            app.stop().await.unwrap();
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the job was never recorded");
}

/// A job row this build cannot read (written by a newer one, say) is skipped with a warning: it
/// hides no other job from the list, stops no lease from expiring, and stops no start.
#[tokio::test]
async fn a_job_row_this_build_cannot_read_is_skipped() {
    let fixture = Fixture::new();
    let options = fixture.options();
    let app = TestApp::spawn(options.clone()).await;
    let writer = database(&fixture);
    for (id, owner) in [("00000000000000aa", "other"), ("00000000000000bb", "test")] {
        writer
            .execute(
                "INSERT INTO jobs (id, owner, state, record) VALUES (?1, ?2, 'running', ?3)",
                rusqlite::params![id, owner, r#"{"from": "a newer build"}"#],
            )
            .unwrap();
    }
    let job = start(&app, "readable", &tune_body(8)).await;
    let record = wait_for_end(&app, &job).await;
    assert_eq!(record["state"], "succeeded", "{record}");
    let page = ok_json(app.get("/v1/jobs").await).await;
    let listed: Vec<&str> = (page["jobs"].as_array().unwrap().iter())
        .map(|j| j["job"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [job.as_str()]);
    // A readable job of a replica gone for good, beside them: its lease still expires.
    let mut db = Database::open(&fixture.path("data").join(DATABASE_FILE)).unwrap();
    let gone = JobRecord::queued("dead".into(), "y".into(), 10, "replica-3".into(), 2);
    db.save_job(&gone).unwrap();
    drop(db);
    let expired = wait_for_end(&app, "dead").await;
    assert_eq!(expired["state"], "failed", "{expired}");
    assert!(
        expired["error"].as_str().unwrap().contains("lease"),
        "{expired}"
    );
    app.stop().await.unwrap();
    // The next start fails this replica's unfinished jobs it can read, and leaves the others.
    let app = TestApp::spawn(options).await;
    let page = ok_json(app.get("/v1/jobs").await).await;
    let listed: Vec<&str> = (page["jobs"].as_array().unwrap().iter())
        .map(|j| j["job"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&job.as_str()), "{page}");
    let kept: String = writer
        .query_row(
            "SELECT record FROM jobs WHERE id = '00000000000000bb'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(kept, r#"{"from": "a newer build"}"#);
    app.stop().await.unwrap();
}

/// A job whose record another replica ended meanwhile (its lease expired while the owner could
/// not reach the store) keeps that end and serves no task.
#[tokio::test]
async fn a_job_whose_record_ended_elsewhere_does_not_serve_its_task() {
    let fixture = Fixture::new();
    let app = TestApp::spawn(fixture.options()).await;
    let job = start(&app, "orphan", &long_body(6)).await;
    wait_running(&app, &job).await;
    // As another replica does when the owner's lease expired while it could not reach the store.
    let writer = database(&fixture);
    let text: String = writer
        .query_row("SELECT record FROM jobs WHERE id = ?1", [&job], |row| {
            row.get(0)
        })
        .unwrap();
    let mut record: Value = serde_json::from_str(&text).unwrap();
    record["state"] = json!("failed");
    record["error"] = json!("interrupted: its replica stopped renewing the job's lease");
    writer
        .execute(
            "UPDATE jobs SET state = 'failed', record = ?2 WHERE id = ?1",
            rusqlite::params![job, record.to_string()],
        )
        .unwrap();
    let ended = wait_for_end(&app, &job).await;
    assert_eq!(ended["state"], "failed", "{ended}");
    assert_eq!(ended["error"], record["error"], "the stored end stands");
    assert_error(app.get("/v1/tasks/orphan").await, 404, "task_not_found").await;
    app.stop().await.unwrap();
}

/// A store that fails for a while (here: another writer holds SQLite's lock past the busy
/// timeout) costs a running job its progress records, not its result: it runs on, and serves its
/// task once the store is back. Such a failure ended the job as failed until 2026-12-02.
#[tokio::test]
async fn a_job_outlives_a_store_that_fails_while_it_runs() {
    let fixture = Fixture::new();
    let app = TestApp::spawn(fixture.options()).await;
    let job = start(&app, "outlives", &long_body(14)).await;
    wait_running(&app, &job).await;
    let writer = database(&fixture);
    writer.execute_batch("BEGIN IMMEDIATE").unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    writer.execute_batch("COMMIT").unwrap();
    let record = wait_for_end(&app, &job).await;
    assert_eq!(record["state"], "succeeded", "{record}");
    ok_json(app.get("/v1/tasks/outlives").await).await;
    app.stop().await.unwrap();
}
