//! Bad input on every route: each case must get its 4xx with a JSON reason
//! (`{"error": {"code", "message"}}`), and the server must stay healthy and keep its tasks
//! unchanged afterwards.

use reqwest::Method;
use serde_json::{Value, json};

use deltaspace::server::Options;

use crate::api::helpers::{D, Fixture, TestApp, ok_json, task_body};

/// One bad request and the answer it must get.
struct Case {
    what: &'static str,
    method: Method,
    path: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Option<Vec<u8>>,
    status: u16,
    code: &'static str,
}

impl Case {
    fn new(what: &'static str, method: Method, path: impl Into<String>) -> Self {
        Self {
            what,
            method,
            path: path.into(),
            headers: Vec::new(),
            body: None,
            status: 0,
            code: "",
        }
    }

    fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    fn json(self, body: &Value) -> Self {
        self.body(body.to_string())
    }

    fn header(mut self, name: &'static str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn answers(mut self, status: u16, code: &'static str) -> Self {
        self.status = status;
        self.code = code;
        self
    }
}

fn put(what: &'static str, name: &str) -> Case {
    Case::new(what, Method::PUT, format!("/v1/tasks/{name}"))
}

fn predict(what: &'static str, task: &str) -> Case {
    Case::new(what, Method::POST, format!("/v1/tasks/{task}/predict"))
}

fn embed(what: &'static str, task: &str) -> Case {
    Case::new(what, Method::POST, format!("/v1/tasks/{task}/embed"))
}

fn get(what: &'static str, path: &str) -> Case {
    Case::new(what, Method::GET, path)
}

/// A valid upload body with `key` set to `value`.
fn upload_with(key: &str, value: Value) -> Value {
    let mut body = task_body("lora", [0.0; D], &["a", "b"]);
    body[key] = value;
    body
}

/// `n` labels named l0, l1, ...
fn labels(n: usize) -> Value {
    (0..n)
        .map(|i| json!({"name": format!("l{i}"), "description": format!("Label {i}.")}))
        .collect()
}

/// Every case: (at least 40) malformed JSON, wrong types, NaN and infinities, wrong d, huge
/// bodies, huge and empty texts, too many inputs, unknown tasks and DETs, bad names, wrong
/// content types, duplicate labels, stale preconditions, wrong methods and routes.
#[rustfmt::skip] // A table: one case per line.
fn cases(stale_etag: &str) -> Vec<Case> {
    let long_text = "word ".repeat(2100); // 10,500 characters, over max_text_chars = 10,000
    let nested = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let good = task_body("lora", [0.0; D], &["a", "b"]).to_string();
    vec![
        // PUT /v1/tasks/{name}: JSON shape.
        put("malformed JSON", "n").body(r#"{"det": "lora","#).answers(400, "invalid_json"),
        put("empty body", "n").answers(400, "invalid_json"),
        put("an array, not an object", "n").body("[1, 2]").answers(400, "invalid_json"),
        put("z is a string", "n").json(&upload_with("z", json!("0,0,0,0"))).answers(400, "invalid_json"),
        put("det is a number", "n").json(&upload_with("det", json!(3))).answers(400, "invalid_json"),
        put("labels is an object", "n").json(&upload_with("labels", json!({"a": "A."}))).answers(400, "invalid_json"),
        put("a label without description", "n").json(&upload_with("labels", json!([{"name": "a"}, {"name": "b"}]))).answers(400, "invalid_json"),
        put("z missing", "n").body(r#"{"det": "lora", "labels": []}"#).answers(400, "invalid_json"),
        put("unknown field", "n").json(&upload_with("colour", json!("red"))).answers(400, "invalid_json"),
        put("duplicate key", "n").body(r#"{"det": "lora", "det": "adapter", "z": [0,0,0,0], "labels": []}"#).answers(400, "invalid_json"),
        put("NaN in z", "n").body(good.replace("[0.0,0.0,0.0,0.0]", "[NaN,0,0,0]")).answers(400, "invalid_json"),
        put("Infinity in z", "n").body(good.replace("[0.0,0.0,0.0,0.0]", "[Infinity,0,0,0]")).answers(400, "invalid_json"),
        put("null in z", "n").json(&upload_with("z", json!([null, 0, 0, 0]))).answers(400, "invalid_json"),
        put("trailing garbage", "n").body(format!("{good} trailing")).answers(400, "invalid_json"),
        put("invalid UTF-8", "n").body(b"{\"det\": \"lo\xffra\"}".to_vec()).answers(400, "invalid_json"),
        put("nested 5000 deep", "n").body(nested.clone()).answers(400, "invalid_json"),
        put("form body (curl -d k=v)", "n").header("content-type", "application/x-www-form-urlencoded").body("det=lora&z=0").answers(400, "invalid_json"),
        put("multipart body", "n").header("content-type", "multipart/form-data; boundary=XX").body("--XX\r\nContent-Disposition: form-data; name=\"det\"\r\n\r\nlora\r\n--XX--\r\n").answers(400, "invalid_json"),
        put("XML body", "n").header("content-type", "application/xml").body("<task><det>lora</det></task>").answers(400, "invalid_json"),
        put("body over max_body_bytes", "n").body(vec![b' '; 64 * 1024 + 1]).answers(413, "payload_too_large"),
        // PUT: values that parse but are not a valid task.
        put("z overflows f32 to infinity", "n").json(&upload_with("z", json!([1e39, 0, 0, 0]))).answers(422, "invalid_task"),
        put("wrong d (3)", "n").json(&upload_with("z", json!([0, 0, 0]))).answers(422, "invalid_task"),
        put("wrong d (0)", "n").json(&upload_with("z", json!([]))).answers(422, "invalid_task"),
        put("wrong d (10,000)", "n").json(&upload_with("z", json!(vec![0; 10_000]))).answers(422, "invalid_task"),
        put("‖z‖ over max_z_norm", "n").json(&upload_with("z", json!([1e4, 1e4, 0, 0]))).answers(422, "invalid_task"),
        // 9,999.99 as sent, 10,001.4 once each value is rounded to f16 (7,072) as the server holds it.
        put("‖z‖ over max_z_norm once rounded", "n").json(&upload_with("z", json!([7071.06, 7071.06, 0, 0]))).answers(422, "invalid_task"),
        put("unknown DET", "n").json(&upload_with("det", json!("bitfit"))).answers(422, "invalid_task"),
        put("DET in another case", "n").json(&upload_with("det", json!("LoRA"))).answers(422, "invalid_task"),
        put("duplicate labels", "n").json(&upload_with("labels", json!([{"name": "a", "description": "A."}, {"name": "a", "description": "B."}]))).answers(422, "invalid_task"),
        put("one label", "n").json(&upload_with("labels", labels(1))).answers(422, "invalid_task"),
        put("no labels", "n").json(&upload_with("labels", json!([]))).answers(422, "invalid_task"),
        put("too many labels", "n").json(&upload_with("labels", labels(1025))).answers(422, "invalid_task"),
        put("empty label description", "n").json(&upload_with("labels", json!([{"name": "a", "description": ""}, {"name": "b", "description": "B."}]))).answers(422, "invalid_task"),
        put("blank label name", "n").json(&upload_with("labels", json!([{"name": " ", "description": "A."}, {"name": "b", "description": "B."}]))).answers(422, "invalid_task"),
        put("label name too long", "n").json(&upload_with("labels", json!([{"name": "a".repeat(1001), "description": "A."}, {"name": "b", "description": "B."}]))).answers(422, "invalid_task"),
        put("other subspace", "n").json(&upload_with("subspace", json!("another@123"))).answers(422, "invalid_task"),
        put("body names another task", "n").json(&upload_with("name", json!("other"))).answers(422, "invalid_task"),
        put("name with a space", "bad%20name").body(good.clone()).answers(422, "invalid_task"),
        put("name of 129 characters", &"a".repeat(129)).body(good.clone()).answers(422, "invalid_task"),
        put("non-ASCII name", "caf%C3%A9").body(good.clone()).answers(422, "invalid_task"),
        put("name that is not UTF-8", "bad%FFname").body(good.clone()).answers(422, "invalid_task"),
        put("name with an encoded slash", "a%2Fb").body(good.clone()).answers(422, "invalid_task"),
        // A page on another site, directly or through DNS rebinding.
        put("sent by a page on another site", "n").header("origin", "https://evil.example").body(good.clone()).answers(403, "cross_site"),
        get("a Host name that is not this machine's", "/v1/tasks").header("host", "rebound.example:8080").answers(403, "host_not_allowed"),
        // PUT: preconditions.
        put("stale If-Match", "t").header("if-match", format!("\"{stale_etag}\"")).body(good.clone()).answers(409, "etag_mismatch"),
        put("If-Match * on a missing task", "absent").header("if-match", "*").body(good.clone()).answers(409, "etag_mismatch"),
        put("If-None-Match * on an existing task", "t").header("if-none-match", "*").body(good.clone()).answers(409, "etag_mismatch"),
        put("If-None-Match with an etag", "t").header("if-none-match", "\"abc\"").body(good.clone()).answers(422, "invalid_request"),
        put("If-Match with a list of etags", "t").header("if-match", format!("\"{stale_etag}\", \"abc\"")).body(good.clone()).answers(422, "invalid_request"),
        put("If-Match that is not text", "t").header("if-match", b"\"\xff\"".to_vec()).body(good.clone()).answers(422, "invalid_request"),
        // GET and DELETE /v1/tasks/{name}.
        get("unknown task", "/v1/tasks/missing").answers(404, "task_not_found"),
        get("path traversal", "/v1/tasks/..%2F..%2Fetc%2Fpasswd").answers(404, "task_not_found"),
        get("name that is not UTF-8", "/v1/tasks/%FF").answers(404, "task_not_found"),
        Case::new("delete an unknown task", Method::DELETE, "/v1/tasks/missing").answers(404, "task_not_found"),
        Case::new("delete with a stale If-Match", Method::DELETE, "/v1/tasks/t").header("if-match", format!("\"{stale_etag}\"")).answers(409, "etag_mismatch"),
        // GET /v1/tasks.
        get("limit 0", "/v1/tasks?limit=0").answers(422, "invalid_request"),
        get("limit over 1000", "/v1/tasks?limit=1001").answers(422, "invalid_request"),
        get("limit negative", "/v1/tasks?limit=-1").answers(422, "invalid_request"),
        get("limit not a number", "/v1/tasks?limit=ten").answers(422, "invalid_request"),
        get("limit given twice", "/v1/tasks?limit=1&limit=2").answers(422, "invalid_request"),
        get("unknown parameter", "/v1/tasks?colour=red").answers(422, "invalid_request"),
        // POST /v1/tasks/{name}/predict.
        predict("unknown task", "missing").json(&json!({"inputs": ["x"]})).answers(404, "task_not_found"),
        predict("malformed JSON", "t").body(r#"{"inputs": ["x"]"#).answers(400, "invalid_json"),
        predict("empty body", "t").answers(400, "invalid_json"),
        predict("inputs missing", "t").json(&json!({"texts": ["x"]})).answers(400, "invalid_json"),
        predict("inputs is a string", "t").json(&json!({"inputs": "x"})).answers(400, "invalid_json"),
        predict("an input is a number", "t").json(&json!({"inputs": [1]})).answers(400, "invalid_json"),
        predict("an input pair without text", "t").json(&json!({"inputs": [{"text_pair": "b"}]})).answers(400, "invalid_json"),
        predict("an input with an unknown field", "t").json(&json!({"inputs": [{"text": "a", "textpair": "b"}]})).answers(400, "invalid_json"),
        predict("a null text_pair", "t").json(&json!({"inputs": [{"text": "a", "text_pair": null}]})).answers(400, "invalid_json"),
        predict("top_k negative", "t").json(&json!({"inputs": ["x"], "top_k": -1})).answers(400, "invalid_json"),
        predict("top_k a string", "t").json(&json!({"inputs": ["x"], "top_k": "1"})).answers(400, "invalid_json"),
        predict("top_k 0", "t").json(&json!({"inputs": ["x"], "top_k": 0})).answers(422, "invalid_request"),
        predict("no inputs", "t").json(&json!({"inputs": []})).answers(422, "invalid_request"),
        predict("too many inputs", "t").json(&json!({"inputs": vec!["x"; 17]})).answers(422, "invalid_request"),
        predict("an empty text", "t").json(&json!({"inputs": ["fine", ""]})).answers(422, "invalid_request"),
        predict("an empty text_pair", "t").json(&json!({"inputs": [{"text": "a", "text_pair": ""}]})).answers(422, "invalid_request"),
        predict("a text over max_text_chars", "t").json(&json!({"inputs": [long_text]})).answers(422, "invalid_request"),
        predict("unknown DET", "t").json(&json!({"inputs": ["x"], "det": "bitfit"})).answers(422, "invalid_request"),
        predict("a 50,000-character DET", "t").json(&json!({"inputs": ["x"], "det": "d".repeat(50_000)})).answers(422, "invalid_request"),
        predict("body over max_body_bytes", "t").json(&json!({"inputs": ["x".repeat(70_000)]})).answers(413, "payload_too_large"),
        predict("nested 5000 deep", "t").body(format!(r#"{{"inputs": {nested}}}"#)).answers(400, "invalid_json"),
        // POST /v1/tasks/{name}/embed.
        embed("unknown task", "missing").json(&json!({"inputs": ["x"]})).answers(404, "task_not_found"),
        embed("no inputs", "t").json(&json!({"inputs": []})).answers(422, "invalid_request"),
        embed("unknown DET", "t").json(&json!({"inputs": ["x"], "det": "bitfit"})).answers(422, "invalid_request"),
        embed("top_k is not an embed field", "t").json(&json!({"inputs": ["x"], "top_k": 1})).answers(400, "invalid_json"),
        embed("an empty text", "t").json(&json!({"inputs": [""]})).answers(422, "invalid_request"),
        // Methods and routes.
        Case::new("GET predict", Method::GET, "/v1/tasks/t/predict").answers(405, "method_not_allowed"),
        Case::new("PUT the collection", Method::PUT, "/v1/tasks").body(good.clone()).answers(405, "method_not_allowed"),
        Case::new("POST a task", Method::POST, "/v1/tasks/t").body(good).answers(405, "method_not_allowed"),
        Case::new("DELETE info", Method::DELETE, "/v1/info").answers(405, "method_not_allowed"),
        Case::new("POST liveness", Method::POST, "/health/live").answers(405, "method_not_allowed"),
        Case::new("PATCH metrics", Method::PATCH, "/metrics").answers(405, "method_not_allowed"),
        get("unknown route", "/v2/tasks").answers(404, "route_not_found"),
        get("empty task name", "/v1/tasks/").answers(404, "route_not_found"),
        get("a route below predict", "/v1/tasks/t/predict/more").answers(404, "route_not_found"),
    ]
}

#[tokio::test]
async fn every_bad_request_gets_a_4xx_with_a_json_reason_and_the_server_stays_healthy() {
    let fixture = Fixture::new();
    let app = TestApp::spawn(fixture.options()).await;
    let body = task_body("adapter", [0.3, -0.2, 0.1, 0.5], &["no", "yes"]);
    let first = ok_json(app.put_task("t", &body).await).await;
    let current = ok_json(app.put_task("t", &body).await).await;
    let stale = first["etag"].as_str().unwrap();
    let before = ok_json(app.get("/v1/tasks/t").await).await;
    let request = json!({"inputs": ["a plain question", {"text": "a", "text_pair": "b"}]});
    let answer = app.predict("t", &request).await;

    let cases = cases(stale);
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let mut request = app.client.request(case.method.clone(), app.url(&case.path));
        for (name, value) in &case.headers {
            let value = reqwest::header::HeaderValue::from_bytes(value).unwrap();
            request = request.header(*name, value);
        }
        if let Some(body) = &case.body {
            request = request.body(body.clone());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or_default().to_string())
            .unwrap_or_default();
        let text = response.text().await.unwrap();
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        let code = parsed.as_ref().and_then(|b| b["error"]["code"].as_str());
        let message = parsed
            .as_ref()
            .and_then(|b| b["error"]["message"].as_str())
            .unwrap_or_default();
        let shown: String = text.chars().take(300).collect();
        if status != case.status || code != Some(case.code) {
            failures.push(format!(
                "{}: {} {} answered {status} {shown}, expected {} {}",
                case.what, case.method, case.path, case.status, case.code
            ));
        } else if content_type != "application/json" || message.is_empty() {
            failures.push(format!("{}: {content_type:?} {shown}", case.what));
        } else if message.chars().count() > 501 {
            // The server cuts a message at 500 characters and marks the cut with "…".
            failures.push(format!(
                "{}: a message of {} characters echoes the input",
                case.what,
                message.chars().count()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Healthy: ready, the task unchanged, the same answers, nothing else created.
    assert_eq!(app.get("/health/ready").await.status(), 200);
    let after = ok_json(app.get("/v1/tasks/t").await).await;
    assert_eq!(after, before);
    assert_eq!(after["etag"], current["etag"]);
    assert_eq!(app.predict("t", &request).await, answer);
    let page = ok_json(app.get("/v1/tasks").await).await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1, "{page}");
    let metrics = app.metrics().await;
    assert_eq!(metrics.get("deltaspace_tasks_registered"), 1.0);
    assert_eq!(metrics.present("deltaspace_queue_requests"), 0.0);
    // 503s from /health/ready while the server loaded are expected; nothing else may be 5xx.
    let server_errors: Vec<_> = metrics
        .samples
        .iter()
        .filter(|(k, v)| {
            k.starts_with("deltaspace_http_requests_total")
                && k.contains("status=\"5")
                && !k.contains("/health/ready")
                && **v > 0.0
        })
        .collect();
    assert!(server_errors.is_empty(), "{server_errors:?}");
    app.stop().await.unwrap();
}

/// A server (its options adjusted) serving one task, `t`, and a raw TCP connection to it, for
/// requests no HTTP client would send.
async fn raw_connection_to_one_task(
    adjust: impl FnOnce(&mut Options),
) -> (Fixture, TestApp, tokio::net::TcpStream) {
    let fixture = Fixture::new();
    let mut options = fixture.options();
    adjust(&mut options);
    let app = TestApp::spawn(options).await;
    ok_json(
        app.put_task("t", &task_body("lora", [0.0; D], &["a", "b"]))
            .await,
    )
    .await;
    let address = app.base.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    (fixture, app, stream)
}

#[tokio::test]
async fn a_huge_body_is_refused_without_reading_it_all() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (_fixture, app, mut stream) = raw_connection_to_one_task(|_| {}).await;
    // Announce 100 MB and send up to 8 MB of it; the server answers 413 after 64 KiB.
    let address = app.base.trim_start_matches("http://");
    let head = format!(
        "POST /v1/tasks/t/predict HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        100 << 20
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'['; 64 * 1024];
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        let mut sent = 0usize;
        while sent < 8 << 20 {
            if writer.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buffer[..n]);
                    if String::from_utf8_lossy(&answer).contains("}}") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to a 100 MB body");
    drop(reader);
    writing.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"payload_too_large""#), "{answer}");

    assert_eq!(app.get("/health/ready").await.status(), 200);
    app.predict("t", &json!({"inputs": ["still here"]})).await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_slower_than_client_request_timeout_gets_408_and_the_server_goes_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (_fixture, app, mut stream) = raw_connection_to_one_task(|options| {
        options.client_request_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    // Half a request head, then nothing: the server gives up on it after 300 ms.
    stream
        .write_all(b"POST /v1/tasks/t/predict HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        stream.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "a stalled request head was never answered");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    app.predict("t", &json!({"inputs": ["still here"]})).await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn max_tasks_refuses_new_tasks_but_not_replacements() {
    let fixture = Fixture::new();
    let mut options = fixture.options();
    options.max_tasks = 2;
    let app = TestApp::spawn(options).await;
    let info = ok_json(app.get("/v1/info").await).await;
    assert_eq!(info["limits"]["max_tasks"], 2);
    assert_eq!(info["limits"]["max_text_chars"], 10_000);
    let body = task_body("prefix", [0.1; D], &["a", "b"]);
    ok_json(app.put_task("one", &body).await).await;
    ok_json(app.put_task("two", &body).await).await;
    let refused = app.put_task("three", &body).await;
    let message = crate::api::helpers::assert_error(refused, 409, "too_many_tasks").await;
    assert!(message.contains("max_tasks = 2"), "{message}");
    assert_eq!(
        app.put_task("two", &body).await.status(),
        200,
        "replacing is fine"
    );
    let deleted = app
        .client
        .delete(app.url("/v1/tasks/one"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(app.put_task("three", &body).await.status(), 201);
    let metrics = app.metrics().await;
    assert_eq!(
        metrics.get(r#"deltaspace_task_uploads_total{result="conflict"}"#),
        1.0
    );
    assert_eq!(metrics.get("deltaspace_tasks_registered"), 2.0);
    app.stop().await.unwrap();
}
