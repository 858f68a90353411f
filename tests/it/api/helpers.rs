//! Set-up for the HTTP tests: a random d=4 subspace for the tiny model in a temporary directory,
//! a real server on 127.0.0.1:0 (so tests run in parallel), and a real HTTP client.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use deltaspace::det::Theta0;
use deltaspace::model::{ModelFiles, ResidentChoice};
use deltaspace::runtime::{ProviderChoice, RuntimeOptions};
use deltaspace::server::{self, BatchLimits, Options, ServerError, StoreLocation, TuneLimits};
use deltaspace::subspace::Subspace;
use deltaspace::task::TaskLimits;
use deltaspace::tensor_file::Storage;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::helpers::tiny_dir;

/// The tiny model's files and θ⁰.
fn tiny_model() -> (ModelFiles, Theta0) {
    let files = ModelFiles::open(&tiny_dir()).unwrap();
    let theta0 = Theta0::load(&files).unwrap();
    (files, theta0)
}

/// The subspace dimension of every test.
pub const D: usize = 4;

/// A temporary directory holding a subspace file and the server's data directory.
pub struct Fixture {
    pub dir: TempDir,
    pub subspace_path: PathBuf,
    pub subspace_id: String,
}

impl Fixture {
    pub fn new() -> Self {
        Self::with_d(D)
    }

    /// A fixture whose subspace has dimension `d`.
    pub fn with_d(d: usize) -> Self {
        let (files, theta0) = tiny_model();
        Self::holding(Subspace::random(&files.manifest, &theta0, d, 11).unwrap())
    }

    /// A fixture whose subspace (d = [`D`]) has two learned columns that carry two upstream
    /// tasks' codes, with their label descriptions when `described`, completed by seeded random
    /// ones.
    pub fn with_upstream_codes(described: bool) -> Self {
        use deltaspace::subspace::RandomColumns;
        let (files, theta0) = tiny_model();
        let drawn = Subspace::random(&files.manifest, &theta0, 2, 5).unwrap();
        let mut learned = Subspace::new("learned", &files.manifest, drawn.params().dets().to_vec())
            .unwrap()
            .with_codes(
                vec!["news".into(), "reviews".into()],
                vec![vec![3.0, -1.0], vec![-2.0, 2.5]],
            )
            .unwrap();
        if described {
            let descriptions = vec![
                vec!["World news.".into(), "Sports news.".into()],
                vec!["A negative review.".into(), "A positive review.".into()],
            ];
            learned = learned.with_code_descriptions(descriptions).unwrap();
        }
        let columns = RandomColumns {
            count: D - 2,
            seed: 5,
        };
        Self::holding(
            learned
                .with_random_columns(&files.manifest, columns)
                .unwrap(),
        )
    }

    /// A fixture with `subspace` saved in a new temporary directory.
    fn holding(subspace: Subspace) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let subspace_path = dir.path().join("subspace.safetensors");
        subspace.save(&subspace_path, Storage::F32).unwrap();
        Self {
            subspace_id: subspace.id(),
            subspace_path,
            dir,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Options for a small, quick server on this fixture.
    pub fn options(&self) -> Options {
        Options {
            runtime: RuntimeOptions {
                provider: ProviderChoice::Cpu,
                intra_threads: 1,
                library: None,
                shared_threads: false,
            },
            sessions: 1,
            resident: ResidentChoice::Auto,
            cuda_graphs: false,
            one_det_graphs: false,
            delta_cache_bytes: 1 << 20,
            model_dir: tiny_dir(),
            subspace: self.subspace_path.clone(),
            store: StoreLocation::sqlite_in(&self.path("data")),
            seed_tasks_dir: None,
            workers: 1,
            batch: BatchLimits {
                max_rows: 32,
                max_tokens: 16384,
                max_wait: Duration::from_millis(2),
                queue_capacity: 64,
                concurrency: 1,
            },
            max_inputs: 16,
            max_body_bytes: 64 * 1024,
            max_text_chars: 10_000,
            max_tasks: 10_000,
            task_limits: TaskLimits::default(),
            tokens: Vec::new(),
            protect_reads: false,
            allowed_hosts: Vec::new(),
            shutdown_timeout: Duration::from_secs(10),
            client_request_timeout: Duration::from_secs(5),
            tune: TuneLimits::default(),
            replica: "test".into(),
        }
    }
}

/// A running server and a client for it.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    /// Dropping it (with the app) also stops the server.
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), ServerError>>,
}

impl TestApp {
    /// Starts a server with `options` and waits until it is ready.
    pub async fn spawn(options: Options) -> Self {
        let app = Self::start(options);
        app.wait_ready().await;
        app
    }

    /// Starts a server with `options`; it may still be loading.
    pub fn start(options: Options) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(server::run(listener, options, async {
            let _ = stopped.await;
        }));
        Self {
            base,
            // Idle connections are dropped before the server's keep-alive (5 s) ends them, so a
            // request never goes out on a connection the server is closing at that moment.
            client: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(2))
                .build()
                .unwrap(),
            stop: Some(stop),
            server,
        }
    }

    /// Polls `/health/ready` until it answers 200 (30 s at most).
    pub async fn wait_ready(&self) {
        for _ in 0..600 {
            assert!(!self.server.is_finished(), "the server stopped");
            if let Ok(response) = self.client.get(self.url("/health/ready")).send().await
                && response.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server did not become ready in 30 s");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Asks the server to stop and waits until it has drained.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        self.stop.take().map(|s| s.send(()));
        self.server.await.unwrap()
    }

    /// Begins a shutdown without waiting for it.
    pub fn begin_stop(&mut self) {
        self.stop.take().map(|s| s.send(()));
    }

    /// Waits for a server whose shutdown was begun.
    pub async fn wait(self) -> Result<(), ServerError> {
        self.server.await.unwrap()
    }

    pub async fn put_task(&self, name: &str, body: &Value) -> reqwest::Response {
        self.client
            .put(self.url(&format!("/v1/tasks/{name}")))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// `POST /v1/tasks/{task}/predict`; panics unless 200.
    pub async fn predict(&self, task: &str, body: &Value) -> Value {
        let response = self.post(&format!("/v1/tasks/{task}/predict"), body).await;
        ok_json(response).await
    }

    /// `/metrics`, parsed.
    pub async fn metrics(&self) -> Metrics {
        let response = self.get("/metrics").await;
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        Metrics::parse(&response.text().await.unwrap())
    }
}

/// The JSON body of a 2xx response; panics with the body otherwise.
pub async fn ok_json(response: reqwest::Response) -> Value {
    let status = response.status();
    let body = response.text().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Asserts an error response: its status and `{"error": {"code", "message"}}` body.
pub async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> String {
    let got = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap().to_string();
    assert!(!message.is_empty());
    message
}

/// A task body for the fixture's subspace.
pub fn task_body(det: &str, z: [f32; D], labels: &[&str]) -> Value {
    let labels: Vec<Value> = labels
        .iter()
        .map(|l| json!({"name": l, "description": format!("This text is about {l}.")}))
        .collect();
    json!({"det": det, "z": z, "labels": labels})
}

/// Writes a TASK.json into `dir`.
pub fn write_task_file(dir: &Path, name: &str, det: &str, z: [f32; D], labels: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut body = task_body(det, z, labels);
    body["name"] = json!(name);
    std::fs::write(dir.join(format!("{name}.json")), body.to_string()).unwrap();
}

/// Prometheus text, checked line by line and indexed by series (`name{labels}` as rendered).
pub struct Metrics {
    pub samples: HashMap<String, f64>,
}

impl Metrics {
    /// Parses the text exposition format strictly enough to catch malformed output.
    pub fn parse(text: &str) -> Self {
        let mut samples = HashMap::new();
        let mut typed = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                typed.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with("# HELP ") || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
            let name = series.split('{').next().unwrap();
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && name.starts_with("deltaspace_"),
                "{line}"
            );
            let labels = &series[name.len()..];
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                for pair in labels[1..labels.len() - 1].split("\",") {
                    let (key, value) = pair.split_once("=\"").unwrap();
                    assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                    assert!(!value.contains('\n'));
                }
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains_key(*f)))
                .unwrap_or(name);
            assert!(typed.contains_key(family), "no # TYPE for {line}");
            samples.insert(series.to_string(), value);
        }
        Self { samples }
    }

    /// The value of a series, 0 when absent (a labelled counter appears on first use).
    pub fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    /// The value of a series that must be exported (a gauge, a histogram without labels): a
    /// renamed or missing one fails rather than reading as 0.
    pub fn present(&self, series: &str) -> f64 {
        let value = self.samples.get(series).copied();
        value.unwrap_or_else(|| panic!("/metrics has no {series}"))
    }
}
