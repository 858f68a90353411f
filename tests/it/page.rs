//! The page served at `/` (crates/server/src/page/index.html) in a real browser: headless Chromium
//! driven through chromedriver (WebDriver), against a real server on the tiny model. The page is
//! read and clicked as a person would, through the stable ids listed at the top of the page.
//! Chromium and chromedriver are Debian's packages: scripts/setup-browser.sh installs them, and
//! without them these tests fail, saying so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use deltaspace::secret::Secret;
use deltaspace::server::TuneLimits;

use crate::api::helpers::{Fixture, TestApp, assert_error, ok_json, task_body};
use crate::api::jobs::tune_body;

const INSTALL: &str =
    "run scripts/setup-browser.sh to install Debian's chromium and chromium-driver";

#[tokio::test]
async fn the_page_shows_the_server_lists_tasks_and_predicts() {
    let fixture = Fixture::new();
    let app = TestApp::spawn(fixture.options()).await;
    let labels = ["negative", "positive"];
    let body = task_body("lora", [0.5, -0.5, 1.0, 0.0], &labels);
    assert_eq!(app.put_task("sentiment", &body).await.status(), 201);
    // Text from the server is shown as text, never run as markup.
    let hostile = [HOSTILE, "b"];
    let body = task_body("lora", [0.0; 4], &hostile);
    assert_eq!(app.put_task("hostile", &body).await.status(), 201);
    let info = ok_json(app.get("/v1/info").await).await;
    let page = Page::open(&fixture, &app).await;

    // The server's state, as /v1/info tells it.
    let provider = info["execution_provider"].as_str().unwrap();
    let subspace = info["subspace"]["name"].as_str().unwrap();
    let state = page
        .until_text("#server-state", |s| s.contains("2 tasks"))
        .await;
    assert!(state.contains(provider), "{state}");
    assert!(state.contains(&format!("{subspace} (d = 4)")), "{state}");
    page.until_text("#tasks", |t| t.contains(HOSTILE)).await;
    const INJECTED: &str =
        "return [document.querySelectorAll('#tasks img').length, window.pwned ?? null]";
    assert_eq!(page.script(INJECTED).await, json!([0, null]));

    // Picking the task in the list fills the predict box.
    page.click("#tasks button[data-task='sentiment']").await;
    assert_eq!(page.value("#predict-task").await, "sentiment");

    // Every label's score for every line, as the API gives them.
    let texts = ["a wonderful, moving film", "the plot was dull"];
    let expected = app.predict("sentiment", &json!({"inputs": texts})).await;
    page.type_into("#predict-input", &texts.join("\n")).await;
    page.click("#predict-button").await;
    let shown = page.predictions(texts.len()).await;
    let answers = expected["predictions"].as_array().unwrap();
    for (prediction, answer) in shown.iter().zip(answers) {
        assert_eq!(prediction.len(), labels.len(), "{shown:?}");
        for score in answer["scores"].as_array().unwrap() {
            let label = score["label"].as_str().unwrap();
            let percent = prediction
                .iter()
                .find(|(l, _)| l == label)
                .unwrap_or_else(|| panic!("no score for {label}: {shown:?}"))
                .1;
            let want = score["score"].as_f64().unwrap() * 100.0;
            assert!(
                (percent - want).abs() < 0.051,
                "{label}: {percent} vs {want}"
            );
        }
    }

    // An error is shown in the server's words.
    let missing = app
        .post("/v1/tasks/nope/predict", &json!({"inputs": ["x"]}))
        .await;
    let message = assert_error(missing, 404, "task_not_found").await;
    page.type_into("#predict-task", "nope").await;
    page.click("#predict-button").await;
    page.until_text("#error", |e| e.contains(&message)).await;

    // A label name with a colon (or a quote) is written as a JSON string, in both boxes.
    let labels = "\"4:3\": A 4:3 picture.\n\"16:9 \\\"wide\\\"\": A wide picture.";
    page.type_into("#tune-labels", labels).await;
    page.type_into("#tune-examples", "\"4:3\": An old television.")
        .await;
    let body = page.script("return tuneBody();").await;
    assert_eq!(
        body["labels"][0],
        json!({"name": "4:3", "description": "A 4:3 picture."})
    );
    assert_eq!(body["labels"][1]["name"], "16:9 \"wide\"", "{body}");
    assert_eq!(
        body["examples"],
        json!([{"label": "4:3", "text": "An old television."}])
    );
    // An unclosed quote is refused, naming its line.
    page.type_into("#tune-labels", "a: A.\n\"b: B.").await;
    let refused = "try { tuneBody(); return null; } catch (e) { return e.message; }";
    let message = page.script(refused).await;
    assert!(
        message.as_str().unwrap().contains("Labels, line 2"),
        "{message}"
    );

    page.close().await;
    app.stop().await.unwrap();
}

/// Behind a reverse proxy that serves the server under `/deltaspace/` (the page's requests are
/// relative to it), the page tunes a task and predicts with it.
#[tokio::test]
async fn the_page_tunes_a_task_from_examples_and_predicts_with_it() {
    let fixture = Fixture::new();
    let app = TestApp::spawn(fixture.options()).await;
    let proxy = PrefixProxy::start(&app.base).await;
    let page = Page::open_at(&fixture, &proxy.url("/deltaspace/")).await;
    page.until_text("#server-state", |s| s.contains("0 tasks"))
        .await;

    page.fill_tune_form("topic").await;
    page.type_into("#tune-seconds", "20").await;
    page.click("#tune-button").await;

    // The job runs to the end; a failure (or a refused request) stops the wait with its message.
    let limit = Duration::from_secs(120);
    let outcome = until("the tune job", limit, async || page.job_outcome().await).await;
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    const BAR: &str = "const bar = document.getElementById('job-progress');
        return [bar.value, bar.max];";
    let progress = page.script(BAR).await;
    assert_eq!(progress[0], progress[1], "a finished job's bar is full");
    assert!(
        page.text("#job-cancel").await.is_empty(),
        "Cancel is hidden once done"
    );
    // What the job kept: the DET and where z started (a random subspace: N(0, 0.02²) alone).
    let result = page.text("#job-result").await;
    assert!(
        result.contains("start of z") && result.contains("normal"),
        "{result}"
    );
    assert!(
        ["lora", "adapter", "prefix"]
            .iter()
            .any(|det| result.contains(det)),
        "{result}"
    );

    // The new task is listed and picked, so predicting with it needs only a text.
    page.until_text("#tasks", |t| t.contains("topic")).await;
    assert_eq!(page.value("#predict-task").await, "topic");
    let texts = ["The goalkeeper saved a penalty.", "The choir sang a hymn."];
    page.type_into("#predict-input", &texts.join("\n")).await;
    page.click("#predict-button").await;
    for prediction in page.predictions(texts.len()).await {
        let mut labels: Vec<&str> = prediction.iter().map(|(l, _)| l.as_str()).collect();
        labels.sort_unstable();
        assert_eq!(labels, ["music", "sports"]);
        let total: f64 = prediction.iter().map(|(_, p)| p).sum();
        assert!((total - 100.0).abs() < 0.2, "{prediction:?}");
    }

    // The same name again keeps the task unless "Replace" is ticked: no second job starts.
    page.click("#tune-button").await;
    page.until_text("#error", |e| e.contains("exists already"))
        .await;
    let jobs = ok_json(app.get("/v1/jobs").await).await;
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1, "{jobs}");

    page.close().await;
    proxy.stop().await;
    app.stop().await.unwrap();
}

/// A server that needs a token for reads too: the page shows the refusal until a token is given
/// (taken on Enter), refuses one that no HTTP header can carry, then lists the tasks; a job it
/// starts can be cancelled from the job panel.
#[tokio::test]
async fn the_page_takes_a_token_and_cancels_its_job() {
    const TOKEN: &str = "page-token-3c9d";
    let fixture = Fixture::new();
    let mut options = fixture.options();
    options.tokens = vec![Secret::new(TOKEN)];
    options.protect_reads = true;
    options.tune = TuneLimits {
        max_jobs: 1,
        ..TuneLimits::default()
    };
    let app = TestApp::spawn(options).await;
    let body = task_body("lora", [0.0; 4], &["sports", "music"]);
    let put = app
        .client
        .put(app.url("/v1/tasks/topic"))
        .bearer_auth(TOKEN);
    assert_eq!(put.json(&body).send().await.unwrap().status(), 201);
    // A job through the API holds the one slot, so the page's job waits in the queue.
    let mut long = tune_body(8);
    long["budget"] = json!({"steps": 10_000, "seconds": 60, "patience": 0});
    let post = app
        .client
        .post(app.url("/v1/tasks/other/tune"))
        .bearer_auth(TOKEN);
    let holder = ok_json(post.json(&long).send().await.unwrap()).await;

    let page = Page::open(&fixture, &app).await;
    page.until_text("#error", |e| e.contains("HTTP 401")).await;
    page.type_into("#token", "with a space\n").await;
    page.until_text("#error", |e| e.contains("a token cannot have"))
        .await;
    page.type_into("#token", &format!("{TOKEN}\n")).await;
    page.until_text("#tasks", |t| t.contains("topic")).await;
    page.until_text("#server-state", |s| {
        s.contains("token needed for writes and reads")
    })
    .await;

    page.fill_tune_form("queued").await;
    page.click("#tune-button").await;
    page.until_text("#job-state", |s| s == "queued").await;
    page.click("#job-cancel").await;
    page.until_text("#job-state", |s| s == "cancelled").await;
    assert!(
        page.text("#job-cancel").await.is_empty(),
        "Cancel is hidden once done"
    );
    let missing = app
        .client
        .get(app.url("/v1/tasks/queued"))
        .bearer_auth(TOKEN);
    assert_eq!(missing.send().await.unwrap().status(), 404);

    let job = holder["job"].as_str().unwrap();
    let cancel = app.client.delete(app.url(&format!("/v1/jobs/{job}")));
    assert_eq!(
        cancel.bearer_auth(TOKEN).send().await.unwrap().status(),
        200
    );
    page.close().await;
    app.stop().await.unwrap();
}

/// A label name that would run script if the page inserted it as markup.
const HOSTILE: &str = "<img src=x onerror=\"window.pwned=1\">";

/// Eight short examples per label, in the page's `label: text` format.
const EXAMPLES: [&str; 16] = [
    "sports: The striker scored twice in the final.",
    "sports: The team won the league on goal difference.",
    "sports: She ran the marathon in under three hours.",
    "sports: The referee showed him a red card.",
    "sports: The tennis match went to a fifth set.",
    "sports: Our goalkeeper saved two penalties.",
    "sports: The cyclists climbed the mountain stage.",
    "sports: He hit a home run in the ninth inning.",
    "music: The band played their new song to a full hall.",
    "music: She sang the aria with the orchestra.",
    "music: The album topped the charts for weeks.",
    "music: He practises the violin every morning.",
    "music: The choir rehearsed a new hymn.",
    "music: The drummer kept a steady beat.",
    "music: The pianist played a sonata by Mozart.",
    "music: Their concert tour sold out in a day.",
];

/// The page in headless Chromium, and the chromedriver that drives it.
struct Page {
    client: Client,
    /// Killed, with the browser it started, when the page is dropped.
    _driver: Chromedriver,
}

impl Page {
    /// Opens the app's page at `/` ([`Page::open_at`]).
    async fn open(fixture: &Fixture, app: &TestApp) -> Self {
        Self::open_at(fixture, &app.url("/")).await
    }

    /// Starts chromedriver and a headless Chromium whose profile and temporary files live in
    /// the fixture's directory (removed with it, even after a failure), and opens `url`.
    async fn open_at(fixture: &Fixture, url: &str) -> Self {
        let chromium =
            on_path("chromium").unwrap_or_else(|| panic!("chromium is not on PATH: {INSTALL}"));
        let driver = Chromedriver::start(&fixture.path("browser-tmp")).await;
        let profile = fixture.path("browser-profile");
        let mut capabilities = fantoccini::wd::Capabilities::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"binary": chromium, "args": chromium_args(&profile)}),
        );
        let client = ClientBuilder::native()
            .capabilities(capabilities)
            .connect(&driver.url)
            .await
            .unwrap_or_else(|e| panic!("chromedriver did not start Chromium: {e}"));
        client.goto(url).await.unwrap();
        Self {
            client,
            _driver: driver,
        }
    }

    /// Ends the browser session: Chromium exits (its profile goes with the fixture).
    async fn close(self) {
        self.client.close().await.unwrap();
    }

    /// Runs `script` in the page and returns what it returns.
    async fn script(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    async fn element(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    /// The element's rendered text ("" when it is hidden).
    async fn text(&self, css: &str) -> String {
        self.element(css).await.text().await.unwrap()
    }

    /// A form field's current value.
    async fn value(&self, css: &str) -> String {
        let value = self.element(css).await.prop("value").await.unwrap();
        value.unwrap_or_default()
    }

    async fn click(&self, css: &str) {
        self.element(css).await.click().await.unwrap();
    }

    /// Replaces a field's value by typing `text` (a newline is an Enter key).
    async fn type_into(&self, css: &str, text: &str) {
        let field = self.element(css).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// Fills the tune form for task `name`: two labels and [`EXAMPLES`].
    async fn fill_tune_form(&self, name: &str) {
        self.type_into("#tune-name", name).await;
        let labels = "sports: The text is about sports.\nmusic: The text is about music.";
        self.type_into("#tune-labels", labels).await;
        self.type_into("#tune-examples", &EXAMPLES.join("\n")).await;
    }

    /// `Some(Ok(()))` once the job shown has succeeded; `Some(Err(why))` once it has failed, was
    /// cancelled or could not start; `None` while it is queued or running.
    async fn job_outcome(&self) -> Option<Result<(), String>> {
        let state = self.text("#job-state").await;
        let error = self.text("#error").await;
        match state.as_str() {
            "succeeded" => Some(Ok(())),
            "failed" | "cancelled" => Some(Err(format!("the job {state}: {error}"))),
            _ if !error.is_empty() => Some(Err(format!("job {state:?}: {error}"))),
            _ => None,
        }
    }

    /// Waits (10 s at most) until the element's text passes `check`, and returns it.
    async fn until_text(&self, css: &str, check: impl Fn(&str) -> bool) -> String {
        let what = format!("the text of {css} to be right");
        until(&what, Duration::from_secs(10), async || {
            let text = self.text(css).await;
            check(&text).then_some(text)
        })
        .await
    }

    /// Waits for `count` predictions in `#predict-result`, and returns each one's
    /// `(label, percent shown)` pairs, in the page's order.
    async fn predictions(&self, count: usize) -> Vec<Vec<(String, f64)>> {
        const READ: &str = "return [...document.querySelectorAll('#predict-result .prediction')]
            .map((p) => [...p.querySelectorAll('.score')]
                .map((s) => [s.dataset.label, s.querySelector('.value').textContent]));";
        let shown = until("the predictions", Duration::from_secs(10), async || {
            let shown = self.script(READ).await;
            (shown.as_array().map(Vec::len) == Some(count)).then_some(shown)
        })
        .await;
        let pair = |score: &Value| {
            let label = score[0].as_str().unwrap().to_string();
            let percent = score[1].as_str().unwrap().trim_end_matches('%').trim();
            (label, percent.parse::<f64>().unwrap())
        };
        let rows = |prediction: &Value| prediction.as_array().unwrap().iter().map(pair).collect();
        shown.as_array().unwrap().iter().map(rows).collect()
    }
}

/// A reverse proxy that serves a server under `/deltaspace/`, as nginx does with `location
/// /deltaspace/ { proxy_pass http://server/; proxy_set_header X-Forwarded-Host $http_host; }`.
struct PrefixProxy {
    base: String,
    handle: actix_web::dev::ServerHandle,
}

impl PrefixProxy {
    const PREFIX: &str = "/deltaspace/";

    async fn start(upstream: &str) -> Self {
        use actix_web::{App, HttpServer, web};
        let upstream = upstream.to_string();
        let server = HttpServer::new(move || {
            let upstream = upstream.clone();
            App::new().default_service(web::to(move |request, body| {
                Self::forward(upstream.clone(), request, body)
            }))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .unwrap();
        let base = format!("http://{}", server.addrs()[0]);
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self { base, handle }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `request` on to the upstream server without the prefix; 404 outside it.
    async fn forward(
        upstream: String,
        request: actix_web::HttpRequest,
        body: actix_web::web::Bytes,
    ) -> actix_web::HttpResponse {
        let target = request.uri().path_and_query().map_or("", |p| p.as_str());
        let Some(rest) = target.strip_prefix(Self::PREFIX) else {
            return actix_web::HttpResponse::NotFound().finish();
        };
        let method = reqwest::Method::from_bytes(request.method().as_str().as_bytes()).unwrap();
        let mut sent = reqwest::Client::new()
            .request(method, format!("{upstream}/{rest}"))
            .body(body.to_vec());
        for (name, value) in request.headers() {
            if !["host", "connection", "content-length"].contains(&name.as_str()) {
                sent = sent.header(name.as_str(), value.as_bytes());
            }
        }
        if let Some(host) = request.headers().get("host") {
            sent = sent.header("x-forwarded-host", host.as_bytes());
        }
        let answer = sent.send().await.unwrap();
        let mut response = actix_web::HttpResponse::build(
            actix_web::http::StatusCode::from_u16(answer.status().as_u16()).unwrap(),
        );
        for (name, value) in answer.headers() {
            if !["connection", "content-length", "transfer-encoding"].contains(&name.as_str()) {
                response.insert_header((name.as_str(), value.as_bytes()));
            }
        }
        response.body(answer.bytes().await.unwrap())
    }

    async fn stop(self) {
        self.handle.stop(true).await;
    }
}

/// Polls `probe` every 100 ms until it answers `Some`, for at most `limit`.
async fn until<T>(what: &str, limit: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Headless, without the sandbox (tests may run as root), and without the background
/// connections that a machine with no network refuses.
fn chromium_args(profile: &Path) -> Vec<String> {
    [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1024",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

/// A chromedriver on a free local port, in a process group of its own so that dropping it kills
/// it and every browser process it started, even when a test fails half-way.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    /// Starts chromedriver, with `tmp` as its and the browser's TMPDIR, and waits (10 s at most)
    /// until it answers.
    async fn start(tmp: &Path) -> Self {
        use std::os::unix::process::CommandExt;
        std::fs::create_dir_all(tmp).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .env("TMPDIR", tmp)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromedriver ({e}): {INSTALL}"));
        let mut driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let limit = Duration::from_secs(10);
        until("chromedriver", limit, async || {
            driver.answers(&client).await
        })
        .await;
        driver
    }

    /// `Some(())` once chromedriver answers its status route; panics if it has exited.
    async fn answers(&mut self, client: &reqwest::Client) -> Option<()> {
        if let Some(exit) = self.child.try_wait().unwrap() {
            panic!("chromedriver exited at start ({exit})");
        }
        let answer = client.get(format!("{}/status", self.url)).send().await;
        answer.is_ok_and(|a| a.status() == 200).then_some(())
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// The first executable called `name` on PATH (what `which name` prints).
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
