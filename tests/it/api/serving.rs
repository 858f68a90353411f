//! Serving behaviour: mixed-task batching, durability across restarts, metrics, backpressure,
//! abandoned requests and graceful shutdown.

use std::time::Duration;

use deltaspace::model::{MIN_DECODED_D, ResidentChoice};
use deltaspace::server::StoreLocation;
use futures::future::join_all;
use serde_json::{Value, json};

use super::helpers::{D, Fixture, TestApp, assert_error, ok_json, task_body, write_task_file};

const PREDICT_ROUTE: &str = "/v1/tasks/{name}/predict";

/// Six tasks on three DETs (two read through another DET), two texts each of different lengths.
fn mixed_requests() -> Vec<(String, Value)> {
    let dets = ["lora", "adapter", "prefix"];
    (0..6)
        .map(|i| {
            let mut body = json!({
                "inputs": [
                    "short",
                    format!("a much longer text number {i} that pads the others in its batch"),
                ],
            });
            if i % 3 == 0 {
                body["det"] = json!(dets[(i + 1) % 3]);
            }
            (format!("task{i}"), body)
        })
        .collect()
}

fn seed_mixed_tasks(fixture: &Fixture) -> std::path::PathBuf {
    let dir = fixture.path("seeds");
    let dets = ["lora", "adapter", "prefix"];
    for i in 0..6 {
        let v = i as f32;
        let z = [0.3 * v - 0.7, 0.5 - 0.2 * v, (v * 0.9).sin(), 0.1 * v];
        write_task_file(
            &dir,
            &format!("task{i}"),
            dets[i % 3],
            z,
            &["red", "green", "blue"],
        );
    }
    dir
}

#[tokio::test]
async fn a_batch_mixing_tasks_and_dets_matches_one_by_one_requests() {
    let fixture = Fixture::new();
    let seeds = seed_mixed_tasks(&fixture);
    let requests = mixed_requests();
    let rows: usize = requests
        .iter()
        .map(|(_, b)| b["inputs"].as_array().unwrap().len())
        .sum();

    // One by one: no waiting, every request alone in its batch.
    let mut alone_options = fixture.options();
    alone_options.seed_tasks_dir = Some(seeds.clone());
    alone_options.batch.max_wait = Duration::ZERO;
    let alone_app = TestApp::spawn(alone_options).await;
    let mut alone = Vec::new();
    for (task, body) in &requests {
        alone.push(alone_app.predict(task, body).await);
    }
    let alone_metrics = alone_app.metrics().await;
    assert_eq!(
        alone_metrics.present("deltaspace_batch_rows_count"),
        requests.len() as f64
    );
    alone_app.stop().await.unwrap();

    // Together: a batch runs only when all rows are in, so the six requests share one run.
    let mut mixed_options = fixture.options();
    mixed_options.store = StoreLocation::sqlite_in(&fixture.path("data-mixed"));
    mixed_options.seed_tasks_dir = Some(seeds);
    mixed_options.batch.max_rows = rows;
    mixed_options.batch.max_wait = Duration::from_secs(20);
    let mixed_app = TestApp::spawn(mixed_options).await;
    let together = join_all(
        requests
            .iter()
            .map(|(task, body)| mixed_app.predict(task, body)),
    )
    .await;
    let metrics = mixed_app.metrics().await;
    assert_eq!(
        metrics.present("deltaspace_batch_rows_count"),
        1.0,
        "one encoder run"
    );
    assert_eq!(metrics.get("deltaspace_batch_rows_sum"), rows as f64);
    assert_eq!(metrics.get("deltaspace_batch_tasks_sum"), 6.0);
    assert!(metrics.get(r#"deltaspace_inference_rows_total{det="prefix"}"#) > 0.0);

    assert_same_predictions(&alone, &together, &requests);
    mixed_app.stop().await.unwrap();
}

/// Each answer of `a` has the labels and scores (within 1e-4) of the same answer of `b`.
fn assert_same_predictions(a: &[Value], b: &[Value], requests: &[(String, Value)]) {
    assert_eq!((a.len(), b.len()), (requests.len(), requests.len()));
    for ((a, b), (task, _)) in a.iter().zip(b).zip(requests) {
        assert_eq!(a["task"], b["task"]);
        assert_eq!(a["det"], b["det"], "{task}");
        let (a, b) = (a["predictions"].as_array(), b["predictions"].as_array());
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.len(), b.len(), "{task}");
        for (a, b) in a.iter().zip(b) {
            let (scores_a, scores_b) = (a["scores"].as_array(), b["scores"].as_array());
            let (scores_a, scores_b) = (scores_a.unwrap(), scores_b.unwrap());
            assert_eq!(scores_a.len(), scores_b.len(), "{task}");
            for (sa, sb) in scores_a.iter().zip(scores_b) {
                let (x, y) = (sa["score"].as_f64().unwrap(), sb["score"].as_f64().unwrap());
                assert!((x - y).abs() < 1e-4, "{task}: {sa} vs {sb}");
            }
            if a["scores"][0]["score"].as_f64().unwrap() - a["scores"][1]["score"].as_f64().unwrap()
                > 1e-3
            {
                assert_eq!(a["label"], b["label"], "{task}");
            }
        }
    }
}

/// The GPU path's model (U and base resident in the session, `resident = "always"`) run on the
/// CPU, the one-DET graphs (`one_det_graphs = true`) and a server with the delta cache on (unused
/// at this d): the same answers as the encoder that sends U and base with each run through the
/// all-DET graph, batched the same way.
#[tokio::test]
async fn the_resident_model_and_the_one_det_graphs_serve_what_the_host_path_serves() {
    let fixture = Fixture::new();
    let seeds = seed_mixed_tasks(&fixture);
    let requests = mixed_requests();
    let mut answers = Vec::new();
    for (resident, one_det_graphs, delta_cache_bytes, data) in [
        (ResidentChoice::Never, false, 0, "data-host"),
        (ResidentChoice::Always, false, 0, "data-resident"),
        (ResidentChoice::Never, true, 0, "data-one-det"),
        (ResidentChoice::Never, false, 1 << 20, "data-decoded"),
    ] {
        let mut options = fixture.options();
        options.store = StoreLocation::sqlite_in(&fixture.path(data));
        options.seed_tasks_dir = Some(seeds.clone());
        options.resident = resident;
        options.one_det_graphs = one_det_graphs;
        options.delta_cache_bytes = delta_cache_bytes;
        let app = TestApp::spawn(options).await;
        let info = ok_json(app.get("/v1/info").await).await;
        assert_eq!(
            info["resident"],
            resident == ResidentChoice::Always,
            "{info}"
        );
        assert_eq!(info["execution_provider"], "CPUExecutionProvider");
        answers.push(join_all(requests.iter().map(|(task, body)| app.predict(task, body))).await);
        // d = 4 is below MIN_DECODED_D: runs read U, the cache is never asked.
        let cache = &ok_json(app.get("/v1/info").await).await["delta_cache"];
        if resident == ResidentChoice::Always {
            assert!(cache.is_null(), "U is resident: no cache ({cache})");
        } else {
            assert_eq!((&cache["hits"], &cache["misses"]), (&json!(0), &json!(0)));
        }
        app.stop().await.unwrap();
    }
    for other in &answers[1..] {
        assert_same_predictions(&answers[0], other, &requests);
    }
}

/// At d ≥ `MIN_DECODED_D` the CPU path decodes batches through the cache of each task's U z: the
/// same answers as a server without the cache, and each task's U z computed once.
#[tokio::test]
async fn at_large_d_batches_decode_through_cached_deltas_and_answer_the_same() {
    let d = MIN_DECODED_D;
    let fixture = Fixture::with_d(d);
    let requests: Vec<(String, Value)> = ["lora", "adapter", "prefix"]
        .iter()
        .enumerate()
        .map(|(i, det)| {
            let z: Vec<f32> = (0..d).map(|k| ((i * d + k) as f32 * 0.37).sin()).collect();
            let mut body = task_body(det, [0.0; D], &["warm", "cold"]);
            body["z"] = json!(z);
            (format!("wide-{det}"), body)
        })
        .collect();
    let texts = json!({"inputs": ["a warm day", "snow on the hills tonight"]});
    let mut answers = Vec::new();
    for (delta_cache_bytes, data) in [(0, "data-read-u"), (1 << 20, "data-decoded")] {
        let mut options = fixture.options();
        options.store = StoreLocation::sqlite_in(&fixture.path(data));
        options.delta_cache_bytes = delta_cache_bytes;
        let app = TestApp::spawn(options).await;
        for (name, body) in &requests {
            ok_json(app.put_task(name, body).await).await;
        }
        // The start-up warm-up run may have cached a delta or two already: count from here.
        let before = ok_json(app.get("/v1/info").await).await["delta_cache"].clone();
        let mut got = Vec::new();
        for _pass in 0..2 {
            for (name, _) in &requests {
                got.push(app.predict(name, &texts).await);
            }
        }
        let after = ok_json(app.get("/v1/info").await).await["delta_cache"].clone();
        let counted = |key: &str| after[key].as_u64().unwrap() - before[key].as_u64().unwrap();
        let expected = if delta_cache_bytes > 0 { 3 } else { 0 };
        assert_eq!(counted("misses"), expected, "one miss per task: {after}");
        assert_eq!(counted("hits"), expected, "then one hit per task: {after}");
        let metrics = app.metrics().await;
        let hits = metrics.get(r#"deltaspace_delta_cache_lookups_total{result="hit"}"#);
        assert_eq!(
            hits,
            after["hits"].as_f64().unwrap(),
            "/metrics mirrors the cache"
        );
        answers.push(got);
        app.stop().await.unwrap();
    }
    let twice: Vec<(String, Value)> = requests.iter().chain(&requests).cloned().collect();
    assert_same_predictions(&answers[0], &answers[1], &twice);
}

#[tokio::test]
async fn uploads_and_seed_imports_survive_a_restart() {
    let fixture = Fixture::new();
    let seeds = fixture.path("seeds");
    write_task_file(
        &seeds,
        "seeded",
        "adapter",
        [0.2, 0.2, -0.1, 0.0],
        &["x", "y"],
    );
    write_task_file(&seeds, "doomed", "lora", [0.0; D], &["x", "y"]);
    std::fs::write(seeds.join("broken.json"), "{").unwrap();
    let mut options = fixture.options();
    options.seed_tasks_dir = Some(seeds.clone());

    let app = TestApp::spawn(options.clone()).await;
    let body = task_body("prefix", [0.4, -0.2, 0.9, 0.3], &["cold", "warm"]);
    ok_json(app.put_task("kept", &body).await).await;
    let replaced = ok_json(app.put_task("kept", &body).await).await;
    let doomed = app
        .client
        .delete(app.url("/v1/tasks/doomed"))
        .send()
        .await
        .unwrap();
    assert_eq!(doomed.status(), 204);
    let request = json!({"inputs": ["a warm day", "snow"]});
    let before = app.predict("kept", &request).await;
    let seeded_before = ok_json(app.get("/v1/tasks/seeded").await).await;
    app.stop().await.unwrap();

    let app = TestApp::spawn(options).await;
    let kept = ok_json(app.get("/v1/tasks/kept").await).await;
    assert_eq!(kept["generation"], 2);
    assert_eq!(kept["etag"], replaced["etag"]);
    assert_eq!(app.predict("kept", &request).await, before);
    assert_eq!(
        ok_json(app.get("/v1/tasks/seeded").await).await,
        seeded_before
    );
    assert_error(app.get("/v1/tasks/doomed").await, 404, "task_not_found").await;
    assert_eq!(app.metrics().await.get("deltaspace_tasks_registered"), 2.0);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_seed_task_refused_at_max_tasks_is_imported_at_a_later_start() {
    let fixture = Fixture::new();
    let seeds = fixture.path("seeds");
    let mut options = fixture.options();
    options.seed_tasks_dir = Some(seeds.clone());
    options.max_tasks = 1;
    // The only place is taken when the seed first appears: the import is refused.
    let app = TestApp::spawn(options.clone()).await;
    let blocker = task_body("lora", [0.0; D], &["x", "y"]);
    ok_json(app.put_task("blocker", &blocker).await).await;
    app.stop().await.unwrap();
    write_task_file(&seeds, "late", "lora", [0.0; D], &["x", "y"]);
    let app = TestApp::spawn(options.clone()).await;
    assert_error(app.get("/v1/tasks/late").await, 404, "task_not_found").await;
    let deleted = app
        .client
        .delete(app.url("/v1/tasks/blocker"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    app.stop().await.unwrap();
    // It was never imported, so the next start tries again, and now it fits.
    let app = TestApp::spawn(options).await;
    ok_json(app.get("/v1/tasks/late").await).await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_new_label_set_is_embedded_once_however_many_upload_it_at_once() {
    let fixture = Fixture::new();
    let options = fixture.options();
    let app = TestApp::spawn(options.clone()).await;
    let body = task_body("lora", [0.1; D], &["ham", "spam"]);
    // At once: each waits its turn for the set the first one makes (one by one, they would find
    // it in memory).
    let names: Vec<String> = (0..8).map(|i| format!("mail-{i}")).collect();
    let uploads = names.iter().map(|name| app.put_task(name, &body));
    for response in join_all(uploads).await {
        ok_json(response).await;
    }
    let metrics = app.metrics().await;
    assert_eq!(metrics.get("deltaspace_label_sets_embedded_total"), 1.0);
    assert_eq!(metrics.get("deltaspace_label_sets"), 1.0);
    app.stop().await.unwrap();

    // The next start finds the set in the store's cache.
    let app = TestApp::spawn(options).await;
    let metrics = app.metrics().await;
    assert_eq!(metrics.get("deltaspace_tasks_registered"), 8.0);
    assert_eq!(metrics.get("deltaspace_label_sets"), 1.0);
    let embedded = metrics.samples.get("deltaspace_label_sets_embedded_total");
    assert_eq!(embedded, Some(&0.0), "the series is exported, at 0");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_parse_and_move_as_requests_flow() {
    let fixture = Fixture::new();
    let app = TestApp::spawn(fixture.options()).await;
    let start = app.metrics().await;
    let build = start
        .samples
        .keys()
        .find(|k| k.starts_with("deltaspace_build_info"))
        .unwrap()
        .clone();
    assert!(
        build.contains(r#"execution_provider="CPUExecutionProvider""#),
        "{build}"
    );
    assert!(
        build.contains(r#"model="tiny""#) && build.contains(&fixture.subspace_id),
        "{build}"
    );

    ok_json(
        app.put_task("m", &task_body("lora", [0.1; D], &["p", "q"]))
            .await,
    )
    .await;
    for _ in 0..3 {
        app.predict("m", &json!({"inputs": ["one", "two"]})).await;
    }
    assert_error(app.get("/v1/tasks/nope").await, 404, "task_not_found").await;
    let end = app.metrics().await;
    let predicted = format!(
        r#"deltaspace_http_requests_total{{method="POST",route="{PREDICT_ROUTE}",status="200"}}"#
    );
    assert_eq!(end.get(&predicted) - start.get(&predicted), 3.0);
    let not_found =
        r#"deltaspace_http_requests_total{method="GET",route="/v1/tasks/{name}",status="404"}"#;
    assert_eq!(end.get(not_found), 1.0);
    let duration = format!(
        r#"deltaspace_http_request_duration_seconds_count{{method="POST",route="{PREDICT_ROUTE}",status="200"}}"#
    );
    assert_eq!(end.get(&duration), 3.0);
    assert_eq!(
        end.get(r#"deltaspace_task_uploads_total{result="created"}"#),
        1.0
    );
    assert_eq!(end.get("deltaspace_tasks_registered"), 1.0);
    assert_eq!(
        end.get("deltaspace_batch_rows_sum") - start.get("deltaspace_batch_rows_sum"),
        6.0
    );
    assert!(end.get("deltaspace_batch_tokens_sum") >= 6.0);
    assert_eq!(end.get("deltaspace_queue_duration_seconds_count"), 3.0);
    assert_eq!(end.get("deltaspace_inference_duration_seconds_count"), 3.0);
    assert_eq!(
        end.get(r#"deltaspace_inference_rows_total{det="lora"}"#),
        6.0
    );
    assert_eq!(end.present("deltaspace_queue_requests"), 0.0);
    assert!(
        !end.samples.keys().any(|k| k.contains("\"m\"")),
        "no per-task label values"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_full_queue_answers_429_instead_of_growing() {
    let fixture = Fixture::new();
    let mut options = fixture.options();
    options.workers = 2;
    options.batch.max_rows = 1;
    options.batch.max_wait = Duration::ZERO;
    options.batch.queue_capacity = 1;
    let app = TestApp::spawn(options).await;
    ok_json(
        app.put_task("q", &task_body("lora", [0.0; D], &["a", "b"]))
            .await,
    )
    .await;
    let long = "many words in a long sentence ".repeat(8);
    let body = json!({"inputs": [long]});
    let responses = join_all((0..48).map(|_| app.post("/v1/tasks/q/predict", &body))).await;
    let mut refused = 0;
    for response in responses {
        match response.status().as_u16() {
            200 => {}
            429 => {
                assert_eq!(response.headers()["retry-after"], "1");
                assert_error(response, 429, "overloaded").await;
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        refused > 0,
        "48 requests at once should overflow a queue of 1"
    );
    let metrics = app.metrics().await;
    assert_eq!(
        metrics.get(r#"deltaspace_requests_dropped_total{reason="queue_full"}"#),
        f64::from(refused)
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_request_whose_client_left_is_dropped_from_the_queue() {
    let fixture = Fixture::new();
    let mut options = fixture.options();
    options.batch.max_wait = Duration::from_secs(2);
    let app = TestApp::spawn(options).await;
    ok_json(
        app.put_task("c", &task_body("lora", [0.0; D], &["a", "b"]))
            .await,
    )
    .await;
    let (client, url) = (app.client.clone(), app.url("/v1/tasks/c/predict"));
    let impatient = tokio::spawn(async move {
        let request = client.post(url).json(&json!({"inputs": ["waiting"]}));
        request.send().await
    });
    // The client leaves once its request waits in the queue (for max_wait, 2 s).
    wait_until_queued(&app).await;
    impatient.abort();
    assert!(impatient.await.unwrap_err().is_cancelled());
    for _ in 0..100 {
        let metrics = app.metrics().await;
        if metrics.get(r#"deltaspace_requests_dropped_total{reason="client_gone"}"#) == 1.0 {
            assert_eq!(
                metrics.present("deltaspace_batch_rows_count"),
                0.0,
                "nothing ran"
            );
            assert_eq!(metrics.present("deltaspace_queue_requests"), 0.0);
            app.stop().await.unwrap();
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the abandoned request was not dropped");
}

/// Waits until one request waits in the batcher's queue (the queue gauge reads 1).
async fn wait_until_queued(app: &TestApp) {
    for _ in 0..400 {
        if app.metrics().await.present("deltaspace_queue_requests") == 1.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the request never waited in the queue");
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight() {
    let fixture = Fixture::new();
    let mut options = fixture.options();
    options.batch.max_wait = Duration::from_millis(2_000);
    let mut app = TestApp::spawn(options).await;
    ok_json(
        app.put_task("s", &task_body("adapter", [0.3; D], &["a", "b"]))
            .await,
    )
    .await;
    let client = app.client.clone();
    let url = app.url("/v1/tasks/s/predict");
    let in_flight = tokio::spawn(async move {
        client
            .post(url)
            .json(&json!({"inputs": ["still answered"]}))
            .send()
            .await
    });
    // Stop once the request waits in the queue for others to share its batch (max_wait).
    wait_until_queued(&app).await;
    app.begin_stop();
    let response = in_flight.await.unwrap().unwrap();
    let answer = ok_json(response).await;
    assert_eq!(answer["predictions"].as_array().unwrap().len(), 1);
    app.wait().await.unwrap();
}

#[tokio::test]
async fn a_task_head_is_stored_served_and_survives_a_restart() {
    let fixture = Fixture::new();
    let app = TestApp::spawn(fixture.options()).await;
    let request = json!({"inputs": ["a warm day", "snow"]});
    let plain = task_body("lora", [0.0; D], &["cold", "warm"]);
    ok_json(app.put_task("plain", &plain).await).await;
    // Strong priors for "cold": every text goes there, whatever its cosines say.
    let mut headed = plain.clone();
    headed["head"] = json!({"bias": [12.0, -12.0]});
    ok_json(app.put_task("priors", &headed).await).await;
    let answer = app.predict("priors", &request).await;
    for prediction in answer["predictions"].as_array().unwrap() {
        assert_eq!(prediction["label"], "cold", "{answer}");
        assert!(prediction["score"].as_f64().unwrap() > 0.99, "{answer}");
    }
    assert_ne!(
        answer["predictions"],
        app.predict("plain", &request).await["predictions"]
    );
    // Prototypes: unit rows of the model's width (32 for the tiny model), rounded to f16 when stored.
    let mut prototyped = plain.clone();
    let (mut first, mut second) = (vec![0.0f32; 32], vec![0.0f32; 32]);
    first[0] = 3.0;
    second[1] = 0.1;
    prototyped["head"] = json!({"bias": [0.0, 0.0], "prototypes": [first, second]});
    ok_json(app.put_task("prototyped", &prototyped).await).await;
    let stored = ok_json(app.get("/v1/tasks/prototyped").await).await;
    assert_eq!(stored["head"]["prototypes"][0][0], 1.0, "{stored}");
    assert_eq!(stored["head"]["prototypes"][1][1], 1.0, "{stored}");
    // Served against those prototypes: label c scores 20 · cos(e, p_c), e the text's embedding
    // through z = 0 (the plain task's), p_c the c-th unit vector.
    let served = app.predict("prototyped", &request).await;
    let embedded = ok_json(app.post("/v1/tasks/plain/embed", &request).await).await;
    for (prediction, embedding) in served["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(embedded["embeddings"].as_array().unwrap())
    {
        let e: Vec<f64> = embedding
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let norm = e.iter().map(|v| v * v).sum::<f64>().sqrt();
        let (cold, warm) = (20.0 * e[0] / norm, 20.0 * e[1] / norm);
        let want_cold = 1.0 / (1.0 + (warm - cold).exp());
        let scores = prediction["scores"].as_array().unwrap();
        let got_cold = scores.iter().find(|s| s["label"] == "cold").unwrap()["score"].as_f64();
        assert!(
            (got_cold.unwrap() - want_cold).abs() < 1e-4,
            "{prediction}: {want_cold}"
        );
    }

    for (head, status, code, needle) in [
        (
            json!({"bias": [1.0]}),
            422,
            "invalid_task",
            "1 values for 2 labels",
        ),
        (json!({"bias": [1.0, 1e6]}), 422, "invalid_task", "bias[1]"),
        (
            json!({"bias": [0.0, 0.0], "prototypes": [[1.0], [1.0]]}),
            422,
            "invalid_task",
            "the model's embeddings 32",
        ),
        (
            json!({"bias": [0.0, 0.0], "extra": 1}),
            400,
            "invalid_json",
            "extra",
        ),
    ] {
        let mut bad = plain.clone();
        bad["head"] = head;
        let message = assert_error(app.put_task("bad", &bad).await, status, code).await;
        assert!(message.contains(needle), "{message} should name {needle}");
    }
    app.stop().await.unwrap();

    let app = TestApp::spawn(fixture.options()).await;
    assert_eq!(
        ok_json(app.get("/v1/tasks/priors").await).await["head"]["bias"],
        json!([12.0, -12.0])
    );
    assert_eq!(
        app.predict("priors", &request).await["predictions"],
        answer["predictions"]
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn z_is_held_in_f16_and_get_returns_the_values_served() {
    let fixture = Fixture::new();
    let app = TestApp::spawn(fixture.options()).await;
    let request = json!({"inputs": ["a warm day", "snow"]});
    let sent = [0.7f32, 1.0 / 3.0, -2.2, 1.0e-3];
    ok_json(
        app.put_task("exact", &task_body("adapter", sent, &["cold", "warm"]))
            .await,
    )
    .await;
    let stored = ok_json(app.get("/v1/tasks/exact").await).await;
    let served: Vec<f32> = stored["z"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    for (sent, served) in sent.iter().zip(&served) {
        assert_eq!(*served, half::f16::from_f32(*sent).to_f32(), "{stored}");
        assert!((sent - served).abs() <= sent.abs() * 2f32.powi(-11));
    }
    assert_ne!(
        served[0], 0.7,
        "0.7 has no exact f16: the value was rounded"
    );
    // The rounded values are the task: uploaded as they are, they predict the same.
    let again: [f32; D] = served.clone().try_into().unwrap();
    ok_json(
        app.put_task("rounded", &task_body("adapter", again, &["cold", "warm"]))
            .await,
    )
    .await;
    let answer = app.predict("exact", &request).await;
    assert_eq!(
        answer["predictions"],
        app.predict("rounded", &request).await["predictions"]
    );
    app.stop().await.unwrap();

    let app = TestApp::spawn(fixture.options()).await;
    assert_eq!(
        ok_json(app.get("/v1/tasks/exact").await).await["z"],
        stored["z"]
    );
    assert_eq!(
        app.predict("exact", &request).await["predictions"],
        answer["predictions"]
    );
    app.stop().await.unwrap();
}
