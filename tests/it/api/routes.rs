//! Every route and status code: task uploads (validation, preconditions), reads, listing,
//! deletes, predictions and embeddings (checked against the library), auth, health, info, OpenAPI.

use deltaspace::classifier::{self, PreparedTask};
use deltaspace::det::DetKind;
use deltaspace::model::{Encoder, EncoderOptions, TextInput};
use deltaspace::secret::Secret;
use deltaspace::subspace::Subspace;
use deltaspace::task::Task;
use deltaspace::tuning::tune::TUNING;
use serde_json::{Value, json};

use super::helpers::{D, Fixture, TestApp, assert_error, ok_json, task_body};
use crate::helpers::{runtime, tiny_dir};

#[tokio::test]
async fn tasks_are_created_read_listed_replaced_and_deleted() {
    let fixture = Fixture::new();
    let app = TestApp::spawn(fixture.options()).await;
    let body = task_body("lora", [0.5, -0.5, 1.0, 0.0], &["negative", "positive"]);

    let created = app.put_task("sentiment", &body).await;
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["location"], "/v1/tasks/sentiment");
    let etag_header = created.headers()["etag"].to_str().unwrap().to_string();
    let created = ok_json(created).await;
    assert_eq!(created["name"], "sentiment");
    assert_eq!(created["generation"], 1);
    assert_eq!(
        etag_header,
        format!("\"{}\"", created["etag"].as_str().unwrap())
    );

    let replaced = app
        .put_task("sentiment", &task_body("prefix", [1.0; D], &["neg", "pos"]))
        .await;
    assert_eq!(replaced.status(), 200);
    let replaced = ok_json(replaced).await;
    assert_eq!(replaced["generation"], 2);
    assert_ne!(replaced["etag"], created["etag"]);

    let task = ok_json(app.get("/v1/tasks/sentiment").await).await;
    assert_eq!(task["det"], "prefix");
    assert_eq!(task["z"], json!([1.0f32; D].to_vec()));
    assert_eq!(task["labels"][1]["name"], "pos");
    assert_eq!(
        task["subspace"], fixture.subspace_id,
        "stored with the full subspace id"
    );
    assert_eq!(task["generation"], 2);
    assert_eq!(task["etag"], replaced["etag"]);

    for name in ["b-task", "a.task", "c_task"] {
        let mut named = body.clone();
        named["name"] = json!(name);
        named["subspace"] = json!("random-d4-seed11");
        assert_eq!(app.put_task(name, &named).await.status(), 201);
    }
    let first = ok_json(app.get("/v1/tasks?limit=2").await).await;
    let names = |page: &Value| -> Vec<String> {
        page["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&first), ["a.task", "b-task"]);
    assert_eq!(first["tasks"][0]["labels"], json!(["negative", "positive"]));
    let next = first["next"].as_str().unwrap();
    let second = ok_json(app.get(&format!("/v1/tasks?limit=2&after={next}")).await).await;
    assert_eq!(names(&second), ["c_task", "sentiment"]);
    assert_eq!(second["next"], Value::Null);
    assert_error(app.get("/v1/tasks?limit=0").await, 422, "invalid_request").await;
    assert_error(
        app.get("/v1/tasks?colour=red").await,
        422,
        "invalid_request",
    )
    .await;

    let deleted = app
        .client
        .delete(app.url("/v1/tasks/sentiment"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_error(app.get("/v1/tasks/sentiment").await, 404, "task_not_found").await;
    let again = app
        .client
        .delete(app.url("/v1/tasks/sentiment"))
        .send()
        .await
        .unwrap();
    assert_error(again, 404, "task_not_found").await;
    let info = ok_json(app.get("/v1/info").await).await;
    assert_eq!(info["tasks"], 3);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn if_match_guards_replacements_and_deletes() {
    let fixture = Fixture::new();
    let app = TestApp::spawn(fixture.options()).await;
    let body = task_body("adapter", [0.1, 0.2, 0.3, 0.4], &["no", "yes"]);
    let first = ok_json(app.put_task("t", &body).await).await;
    let first_etag = first["etag"].as_str().unwrap().to_string();
    let second = ok_json(app.put_task("t", &body).await).await;

    let put_if = |header: &'static str, value: String| {
        app.client
            .put(app.url("/v1/tasks/t"))
            .header(header, value)
            .json(&body)
            .send()
    };
    let stale = put_if("if-match", format!("\"{first_etag}\""))
        .await
        .unwrap();
    let message = assert_error(stale, 409, "etag_mismatch").await;
    assert!(message.contains(&first_etag), "{message}");
    let fresh = put_if(
        "if-match",
        format!("\"{}\"", second["etag"].as_str().unwrap()),
    )
    .await
    .unwrap();
    let third = ok_json(fresh).await;
    assert_eq!(third["generation"], 3);
    assert_error(
        put_if("if-none-match", "*".into()).await.unwrap(),
        409,
        "etag_mismatch",
    )
    .await;
    let missing = app
        .client
        .put(app.url("/v1/tasks/absent"))
        .header("if-match", "*")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_error(missing, 409, "etag_mismatch").await;

    let delete_if = |etag: String| {
        app.client
            .delete(app.url("/v1/tasks/t"))
            .header("if-match", format!("\"{etag}\""))
            .send()
    };
    assert_error(delete_if(first_etag).await.unwrap(), 409, "etag_mismatch").await;
    let current = third["etag"].as_str().unwrap().to_string();
    assert_eq!(delete_if(current).await.unwrap().status(), 204);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_uploads_are_refused_with_their_reason() {
    let fixture = Fixture::new();
    let app = TestApp::spawn(fixture.options()).await;
    let good = task_body("lora", [0.0; D], &["a", "b"]);
    let with = |key: &str, value: Value| {
        let mut body = good.clone();
        body[key] = value;
        body
    };
    let cases = [
        ("bad%20name", good.clone(), "invalid_task", "name"),
        ("t", with("z", json!([1.0, 2.0])), "invalid_task", "d = 4"),
        (
            "t",
            with("z", json!([1e5, 0, 0, 0])),
            "invalid_task",
            "bound",
        ),
        (
            "t",
            with("z", json!([1e300, 0, 0, 0])),
            "invalid_task",
            "finite",
        ),
        ("t", with("det", json!("bitfit")), "invalid_task", "bitfit"),
        ("t", with("name", json!("other")), "invalid_task", "other"),
        (
            "t",
            with("subspace", json!("another@123")),
            "invalid_task",
            "another@123",
        ),
        (
            "t",
            with("labels", json!([{"name": "a", "description": "A."}])),
            "invalid_task",
            "at least 2",
        ),
        (
            "t",
            with(
                "labels",
                json!([{"name": "a", "description": "A."}, {"name": "a", "description": "B."}]),
            ),
            "invalid_task",
            "more than once",
        ),
    ];
    for (name, body, code, needle) in cases {
        let message = assert_error(app.put_task(name, &body).await, 422, code).await;
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
    }
    let put_raw = |body: String| app.client.put(app.url("/v1/tasks/t")).body(body).send();
    assert_error(
        put_raw("{not json".into()).await.unwrap(),
        400,
        "invalid_json",
    )
    .await;
    let extra = with("colour", json!("red")).to_string();
    assert_error(put_raw(extra).await.unwrap(), 400, "invalid_json").await;
    let huge = "x".repeat(100 * 1024);
    assert_error(put_raw(huge).await.unwrap(), 413, "payload_too_large").await;
    assert_error(app.get("/v1/tasks/t").await, 404, "task_not_found").await;
    let metrics = app.metrics().await;
    assert_eq!(
        metrics.get(r#"deltaspace_task_uploads_total{result="invalid"}"#),
        12.0
    );
    app.stop().await.unwrap();
}

/// The library's model and the fixture's subspace, to compare the server with.
fn library_model(fixture: &Fixture) -> (Encoder, Subspace) {
    let encoder = Encoder::load(&runtime(), &tiny_dir(), &EncoderOptions::default()).unwrap();
    let subspace = Subspace::load(&fixture.subspace_path, encoder.manifest()).unwrap();
    (encoder, subspace)
}

/// The library's own answer for one task and its texts, to compare the server with.
fn library_predictions(
    fixture: &Fixture,
    task: Task,
    det: Option<DetKind>,
    inputs: &[TextInput],
) -> Vec<deltaspace::model::LabelScores> {
    let (encoder, subspace) = library_model(fixture);
    let prepared = PreparedTask::prepare(task, &encoder).unwrap();
    classifier::predict(&encoder, &subspace, &prepared, det, inputs).unwrap()
}

#[tokio::test]
async fn predict_and_embed_answer_for_the_task_through_any_det() {
    let fixture = Fixture::new();
    let app = TestApp::spawn(fixture.options()).await;
    let body = task_body(
        "lora",
        [0.8, -0.3, 0.5, 0.1],
        &["sports", "politics", "music"],
    );
    assert_eq!(app.put_task("topic", &body).await.status(), 201);
    let inputs =
        json!(["the match went to penalties", {"text": "a vote", "text_pair": "in parliament"}]);

    let answer = app.predict("topic", &json!({"inputs": inputs})).await;
    assert_eq!(answer["task"], "topic");
    assert_eq!(answer["generation"], 1);
    assert_eq!(answer["det"], "lora");
    let predictions = answer["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 2);
    let task: Task = serde_json::from_value(json!({
        "name": "topic", "det": "lora", "z": body["z"], "labels": body["labels"],
    }))
    .unwrap();
    let inputs_typed: Vec<TextInput> = serde_json::from_value(inputs.clone()).unwrap();
    let expected = library_predictions(&fixture, task.clone(), None, &inputs_typed);
    for (got, want) in predictions.iter().zip(&expected) {
        assert_eq!(got["label"], want.label.as_str());
        assert!((got["score"].as_f64().unwrap() - f64::from(want.score)).abs() < 1e-5);
        let scores = got["scores"].as_array().unwrap();
        assert_eq!(scores.len(), 3);
        assert_eq!(scores[0]["label"], got["label"]);
        let total: f64 = scores.iter().map(|s| s["score"].as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-4);
    }

    let transferred = app
        .predict(
            "topic",
            &json!({"inputs": inputs, "det": "prefix", "top_k": 1}),
        )
        .await;
    assert_eq!(transferred["det"], "prefix");
    let expected = library_predictions(&fixture, task, Some(DetKind::Prefix), &inputs_typed);
    for (got, want) in transferred["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&expected)
    {
        assert_eq!(got["scores"].as_array().unwrap().len(), 1, "cut to top_k");
        assert!((got["score"].as_f64().unwrap() - f64::from(want.score)).abs() < 1e-5);
    }

    let embedded = ok_json(
        app.post(
            "/v1/tasks/topic/embed",
            &json!({"inputs": ["hello"], "det": "adapter"}),
        )
        .await,
    )
    .await;
    assert_eq!(embedded["det"], "adapter");
    let vectors = embedded["embeddings"].as_array().unwrap();
    assert_eq!(vectors.len(), 1);
    let served: Vec<f64> = vectors[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(served.len(), 32, "the tiny model's hidden size");
    // The row the library embeds with the task's z through Adapter, and through LoRA, which differs.
    let z: Vec<f32> = serde_json::from_value(body["z"].clone()).unwrap();
    let hello = TextInput::single("hello");
    let (encoder, subspace) = library_model(&fixture);
    let library = |det| {
        let row = classifier::TextRow {
            input: &hello,
            z: &z,
            det,
        };
        classifier::embed_rows(&encoder, &subspace, &[row]).unwrap()
    };
    let (adapter, lora) = (library(DetKind::Adapter), library(DetKind::Lora));
    for (got, want) in served.iter().zip(adapter.row(0)) {
        assert!(
            (got - f64::from(*want)).abs() < 1e-5,
            "{got} against {want}"
        );
    }
    let apart = (&lora - &adapter).mapv(f32::abs).fold(0.0, |m, v| v.max(m));
    assert!(apart > 1e-3, "LoRA and Adapter decode z alike");
    // Bad predict requests: tests/it/reliability/bad_input.rs, each with its body checked.
    app.stop().await.unwrap();
}

#[tokio::test]
async fn writes_need_a_token_once_tokens_are_configured() {
    let fixture = Fixture::new();
    let mut options = fixture.options();
    options.tokens = vec![Secret::new("s3cret"), Secret::new("other")];
    let app = TestApp::spawn(options.clone()).await;
    let body = task_body("lora", [0.0; D], &["a", "b"]);
    let put = |token: Option<&str>| {
        let mut request = app.client.put(app.url("/v1/tasks/guarded")).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let refused = put(None).await.unwrap();
    assert_eq!(refused.headers()["www-authenticate"], "Bearer");
    assert_error(refused, 401, "unauthorized").await;
    assert_error(put(Some("s3cre")).await.unwrap(), 401, "unauthorized").await;
    assert_eq!(put(Some("other")).await.unwrap().status(), 201);
    let delete = app
        .client
        .delete(app.url("/v1/tasks/guarded"))
        .send()
        .await
        .unwrap();
    assert_error(delete, 401, "unauthorized").await;
    app.predict("guarded", &json!({"inputs": ["open"]})).await;
    let metrics = app.metrics().await;
    assert_eq!(
        metrics.get(r#"deltaspace_task_uploads_total{result="unauthorized"}"#),
        2.0
    );
    app.stop().await.unwrap();

    options.protect_reads = true;
    let app = TestApp::spawn(options).await;
    let path = "/v1/tasks/guarded/predict";
    let request = json!({"inputs": ["closed"]});
    assert_error(app.post(path, &request).await, 401, "unauthorized").await;
    assert_error(app.get("/v1/tasks").await, 401, "unauthorized").await;
    let allowed = app
        .client
        .post(app.url(path))
        .bearer_auth("s3cret")
        .json(&request)
        .send()
        .await
        .unwrap();
    ok_json(allowed).await;
    for open in [
        "/health/live",
        "/health/ready",
        "/metrics",
        "/v1/info",
        "/openapi.json",
    ] {
        assert_eq!(app.get(open).await.status(), 200, "{open}");
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn health_info_openapi_and_unknown_routes() {
    let fixture = Fixture::new();
    let app = TestApp::spawn(fixture.options()).await;
    assert_eq!(
        ok_json(app.get("/health/live").await).await["status"],
        "live"
    );
    assert_eq!(
        ok_json(app.get("/health/ready").await).await["status"],
        "ready"
    );
    let info = ok_json(app.get("/v1/info").await).await;
    assert_eq!(info["model"]["name"], "tiny");
    assert_eq!(info["subspace"]["id"], fixture.subspace_id);
    assert_eq!(info["subspace"]["d"], D);
    assert_eq!(info["dets"], json!(["lora", "adapter", "prefix"]));
    assert_eq!(info["execution_provider"], "CPUExecutionProvider");
    assert_eq!(info["limits"]["max_inputs"], 16);
    assert_eq!(info["auth"]["writes"], false);

    let served = ok_json(app.get("/openapi.json").await).await;
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(served["paths"], committed["paths"]);
    // The limits in force, not the defaults: this server takes 16 inputs, d = 4, H = 32.
    let schemas = &served["components"]["schemas"];
    assert_eq!(
        schemas["PredictRequest"]["properties"]["inputs"]["maxItems"],
        16
    );
    assert_eq!(schemas["TextInput"]["oneOf"][0]["maxLength"], 10_000);
    assert_eq!(schemas["TaskUpload"]["properties"]["z"]["minItems"], D);
    assert_eq!(schemas["TaskUpload"]["properties"]["z"]["maxItems"], D);
    assert_eq!(
        schemas["Head"]["properties"]["prototypes"]["items"]["maxItems"],
        32
    );
    assert_eq!(
        committed["components"]["schemas"]["PredictRequest"]["properties"]["inputs"]["maxItems"],
        32
    );
    // A tune job's budget defaults to stage 2's schedule, as the contract says.
    let budget = &committed["components"]["schemas"]["TuneRequest"]["properties"]["budget"];
    assert_eq!(budget["properties"]["steps"]["default"], TUNING.steps);
    assert_eq!(budget["properties"]["patience"]["default"], TUNING.patience);
    let paths = served["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/v1/tasks", &["get"][..]),
        ("/v1/tasks/{name}", &["put", "get", "delete"]),
        ("/v1/tasks/{name}/predict", &["post"]),
        ("/v1/tasks/{name}/embed", &["post"]),
        ("/v1/info", &["get"]),
        ("/health/live", &["get"]),
        ("/health/ready", &["get"]),
        ("/metrics", &["get"]),
        ("/openapi.json", &["get"]),
    ] {
        for method in methods {
            assert!(
                paths[path].get(*method).is_some(),
                "{method} {path} is not described"
            );
        }
    }

    assert_error(app.get("/v2/nothing").await, 404, "route_not_found").await;
    let wrong = app.client.delete(app.url("/v1/info")).send().await.unwrap();
    assert_eq!(wrong.headers()["allow"], "GET");
    assert_error(wrong, 405, "method_not_allowed").await;
    let wrong = app
        .client
        .get(app.url("/v1/tasks/x/predict"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.headers()["allow"], "POST");
    assert_error(wrong, 405, "method_not_allowed").await;
    let wrong = app
        .client
        .post(app.url("/v1/tasks/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.headers()["allow"], "PUT, GET, DELETE");
    assert_error(wrong, 405, "method_not_allowed").await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn liveness_answers_while_loading_and_readiness_waits_for_it() {
    let fixture = Fixture::new();
    // The subspace file is a FIFO, so loading blocks on it until the test writes the real bytes.
    let fifo = fixture.path("slow.safetensors");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // Whatever happens below, the writer unblocks the loader (a dropped sender also wakes it).
    let (go, gate) = std::sync::mpsc::channel::<()>();
    let bytes = std::fs::read(&fixture.subspace_path).unwrap();
    let target = fifo.clone();
    let writer = std::thread::spawn(move || {
        let _ = gate.recv();
        std::fs::write(target, bytes)
    });
    let mut options = fixture.options();
    options.subspace = fifo;
    let app = TestApp::start(options);
    assert_eq!(
        ok_json(app.get("/health/live").await).await["status"],
        "live"
    );
    let waiting = app.get("/health/ready").await;
    assert_eq!(waiting.headers()["retry-after"], "1");
    assert_error(waiting, 503, "not_ready").await;
    assert_error(app.get("/v1/tasks").await, 503, "not_ready").await;
    let body = task_body("lora", [0.0; D], &["a", "b"]);
    assert_error(app.put_task("early", &body).await, 503, "not_ready").await;

    go.send(()).unwrap();
    writer.join().unwrap().unwrap();
    app.wait_ready().await;
    assert_eq!(app.put_task("early", &body).await.status(), 201);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_missing_subspace_stops_the_server_with_the_reason() {
    let fixture = Fixture::new();
    let mut options = fixture.options();
    options.subspace = fixture.path("nowhere.safetensors");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let error = deltaspace::server::run(listener, options, std::future::pending::<()>())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("nowhere.safetensors"), "{error}");
}
