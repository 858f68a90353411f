//! Load on the real binary over loopback, in three phases:
//! 1. saturation: closed-loop clients (fewer than the queue holds) send predictions and
//!    embeddings of every task and DET while a writer replaces tasks; every answer must be a
//!    correct 200, and the process's memory is sampled; p50/p99 are reported;
//! 2. bursts far above `queue_capacity`: only 200 or 429 `overloaded`, and the queue gauge never
//!    exceeds its bound;
//! 3. SIGTERM under load (a fresh server, one connection per request): the process exits 0, and
//!    every answer the server logged as sent reached its client.
//!
//! CI runs a few seconds of it; `scripts/soak-load.sh` sets `DELTASPACE_LOAD_SECONDS=600`.
//! Knobs: `DELTASPACE_LOAD_SECONDS`, `DELTASPACE_LOAD_CLIENTS`, `DELTASPACE_LOAD_QUEUE`,
//! `DELTASPACE_LOAD_BURST`, `DELTASPACE_TEST_BIN`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::process::{Server, Setup, env_number, quantile};

/// The tasks every phase uses: (name, DET, labels).
const TASKS: [(&str, &str, &[&str]); 6] = [
    ("sentiment", "lora", &["negative", "positive"]),
    ("topic", "adapter", &["sports", "music", "politics"]),
    ("spam", "prefix", &["ham", "spam"]),
    ("emotion", "lora", &["joy", "anger", "fear", "sadness"]),
    ("formality", "adapter", &["formal", "casual"]),
    ("intent", "prefix", &["question", "statement", "command"]),
];

const WORDS: [&str; 16] = [
    "the",
    "match",
    "went",
    "to",
    "penalties",
    "a",
    "wonderful",
    "moving",
    "film",
    "vote",
    "in",
    "parliament",
    "please",
    "call",
    "me",
    "tomorrow",
];

fn task_body(index: usize, version: u64) -> Value {
    let (_, det, labels) = TASKS[index];
    let v = (version + index as u64) as f32;
    let labels: Vec<Value> = labels
        .iter()
        .map(|l| json!({"name": l, "description": format!("The text is about {l}.")}))
        .collect();
    json!({"det": det, "z": [(v * 0.3).sin(), (v * 0.7).cos(), 0.1 * index as f32, -0.2], "labels": labels})
}

async fn put_tasks(server: &Server) {
    let http = reqwest::Client::new();
    for (index, (name, _, _)) in TASKS.iter().enumerate() {
        let response = http
            .put(server.url(&format!("/v1/tasks/{name}")))
            .json(&task_body(index, 0))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }
}

/// A random request: (task index, route, body, number of inputs).
fn random_request(rng: &mut ChaCha8Rng) -> (usize, &'static str, Value, usize) {
    let task = rng.random_range(0..TASKS.len());
    let n = rng.random_range(1..=4);
    let inputs: Vec<Value> = (0..n)
        .map(|_| {
            let words = rng.random_range(1..40);
            let text: Vec<&str> = (0..words)
                .map(|_| WORDS[rng.random_range(0..WORDS.len())])
                .collect();
            if rng.random_bool(0.2) {
                json!({"text": text.join(" "), "text_pair": "and a second part"})
            } else {
                json!(text.join(" "))
            }
        })
        .collect();
    let mut body = json!({"inputs": inputs});
    if rng.random_bool(0.3) {
        body["det"] = json!(["lora", "adapter", "prefix"][rng.random_range(0..3)]);
    }
    let route = if rng.random_bool(0.1) {
        "embed"
    } else {
        "predict"
    };
    (task, route, body, n)
}

/// Checks a 200 answer against its request; `None` when it is right.
fn wrong_answer(task: usize, route: &str, n: usize, answer: &Value) -> Option<String> {
    let (name, _, labels) = TASKS[task];
    let ok = answer["task"] == name
        && if route == "predict" {
            answer["predictions"].as_array().is_some_and(|p| {
                p.len() == n
                    && p.iter().all(|p| {
                        labels.contains(&p["label"].as_str().unwrap_or_default())
                            && p["scores"]
                                .as_array()
                                .is_some_and(|s| s.len() == labels.len())
                    })
            })
        } else {
            answer["embeddings"].as_array().is_some_and(|e| {
                e.len() == n
                    && e.iter()
                        .all(|v| v.as_array().is_some_and(|v| v.len() == 32))
            })
        };
    (!ok).then(|| answer.to_string().chars().take(300).collect())
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    overloaded: u64,
    shutting_down: u64,
    /// Connection refused: the listener was closed (after SIGTERM), nothing was accepted.
    refused: u64,
    /// Connections closed without an answer (reset, or closed before the response): a failure
    /// under load; after SIGTERM, what the kernel's accept queue held when the listener closed.
    unanswered: u64,
    /// Failures: 5xx, other 4xx, wrong answers, broken connections. The first few are kept.
    errors: Vec<String>,
    error_count: u64,
    /// Latency of 200 answers, in milliseconds.
    latencies_ms: Vec<f64>,
}

impl Tally {
    fn error(&mut self, what: String) {
        self.error_count += 1;
        if self.errors.len() < 10 {
            self.errors.push(what);
        }
    }
}

/// Sends one random request and records its outcome.
async fn one_request(
    http: &reqwest::Client,
    base: &str,
    rng: &mut ChaCha8Rng,
    tally: &Mutex<Tally>,
) {
    let (task, route, body, n) = random_request(rng);
    let url = format!("{base}/v1/tasks/{}/{route}", TASKS[task].0);
    let started = Instant::now();
    let outcome = match http.post(url).json(&body).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            response.text().await.map(|text| (status, text))
        }
        Err(error) => Err(error),
    };
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if outcome.as_ref().is_err_and(reqwest::Error::is_connect) {
        // The listener is closed: do not spin while the server drains.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut tally = tally.lock().unwrap();
    match outcome {
        Ok((200, text)) => match serde_json::from_str::<Value>(&text) {
            Ok(answer) => match wrong_answer(task, route, n, &answer) {
                None => {
                    tally.ok += 1;
                    tally.latencies_ms.push(ms);
                }
                Some(wrong) => tally.error(format!("wrong answer: {wrong}")),
            },
            Err(e) => tally.error(format!("200 with a broken body ({e}): {text:.200}")),
        },
        Ok((429, text)) if text.contains(r#""code":"overloaded""#) => tally.overloaded += 1,
        Ok((503, text)) if text.contains(r#""code":"shutting_down""#) => tally.shutting_down += 1,
        Ok((status, text)) => tally.error(format!("{status}: {text:.200}")),
        Err(error) if error.is_connect() => tally.refused += 1,
        Err(_) => tally.unanswered += 1,
    }
}

fn config(setup: Setup, queue: usize) -> Setup {
    // A burst opens hundreds of connections at once; on a machine busy with other work, the
    // server may read a request's head later than the default 5 s, which would answer 408 and
    // measure the machine, not the server.
    setup
        .server("client_request_timeout_ms", 60_000)
        .server("queue_capacity", queue)
        .server("max_batch_rows", 32)
        .server("max_wait_ms", 2)
        .server("max_inputs", 8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturation_bursts_and_shutdown_under_load() {
    let seconds: f64 = env_number("DELTASPACE_LOAD_SECONDS", 2.0);
    let clients: usize = env_number("DELTASPACE_LOAD_CLIENTS", 16);
    let queue: usize = env_number("DELTASPACE_LOAD_QUEUE", 32);
    let burst: usize = env_number("DELTASPACE_LOAD_BURST", 8 * queue);
    assert!(
        clients < queue,
        "saturation uses fewer clients than the queue holds"
    );
    let setup = config(Setup::new(), queue);
    let server = Server::start(&setup, "warn").await;
    put_tasks(&server).await;
    let rss_at_start = server.rss_bytes().unwrap_or(0);

    // 1. Saturation.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    // A timeout, so a hung server fails the test (as an unanswered request) instead of stalling it.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for id in 0..clients {
        let (http, base, tally) = (http.clone(), server.base.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(id as u64);
            while Instant::now() < until {
                one_request(&http, &base, &mut rng, &tally).await;
            }
        }));
    }
    let writes = {
        let (http, base) = (http.clone(), server.base.clone());
        tokio::spawn(async move {
            let (mut acked, mut version) = (0u64, 1u64);
            while Instant::now() < until {
                let index = (version as usize) % TASKS.len();
                let response = http
                    .put(format!("{base}/v1/tasks/{}", TASKS[index].0))
                    .json(&task_body(index, version))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
                acked += 1;
                version += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            acked
        })
    };
    // Memory: one sample a second (at least 10 over the run).
    let every = Duration::from_secs_f64((seconds / 10.0).clamp(0.1, 1.0));
    let mut rss = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(every).await;
        rss.push(server.rss_bytes().unwrap_or(0) as f64);
    }
    for task in tasks {
        task.await.unwrap();
    }
    let writes = writes.await.unwrap();
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let mut latencies = tally.latencies_ms.clone();
    latencies.sort_by(f64::total_cmp);
    let mib = |b: f64| b / f64::from(1 << 20);
    let tenth = (rss.len() / 10).max(1);
    let mut early = rss[..tenth].to_vec();
    let mut late = rss[rss.len() - tenth..].to_vec();
    early.sort_by(f64::total_cmp);
    late.sort_by(f64::total_cmp);
    let (rss_early, rss_late) = (quantile(&early, 0.5), quantile(&late, 0.5));
    eprintln!(
        "saturation: {seconds} s, {clients} clients, queue {queue}: {} answers ({:.0}/s), {} errors, \
         {} overloaded; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {writes} task replacements; \
         RSS {:.1} MiB at start, {:.1} MiB in the first tenth, {:.1} MiB in the last tenth, max {:.1} MiB",
        tally.ok,
        tally.ok as f64 / seconds,
        tally.error_count,
        tally.overloaded,
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
        mib(rss_at_start as f64),
        mib(rss_early),
        mib(rss_late),
        mib(rss.iter().copied().fold(0.0, f64::max)),
    );
    assert_eq!(tally.error_count, 0, "{:#?}", tally.errors);
    assert_eq!(tally.unanswered + tally.refused, 0, "connections failed");
    assert_eq!(
        tally.overloaded, 0,
        "fewer clients than the queue holds are never refused"
    );
    assert!(tally.ok > 0);
    if seconds >= 60.0 {
        assert!(
            rss_late <= rss_early * 1.2,
            "memory grew from {:.1} to {:.1} MiB",
            mib(rss_early),
            mib(rss_late)
        );
    }

    server.kill();

    // 2. Bursts far above the queue bound, on a server whose queue and batches are small, so the
    //    encoder (not HTTP) is the bottleneck and the queue fills.
    let (small_queue, small_batch) = (4, 4);
    let burst_setup = config(Setup::new(), small_queue).server("max_batch_rows", small_batch);
    let server = Server::start(&burst_setup, "warn").await;
    put_tasks(&server).await;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut peak_queue = 0.0f64;
    for round in 0..3u64 {
        let requests: Vec<_> = (0..burst)
            .map(|i| {
                let (http, base, tally) = (http.clone(), server.base.clone(), tally.clone());
                tokio::spawn(async move {
                    let mut rng = ChaCha8Rng::seed_from_u64(round * 100_000 + i as u64);
                    one_request(&http, &base, &mut rng, &tally).await;
                })
            })
            .collect();
        while !requests.iter().all(|r| r.is_finished()) {
            if let Ok(response) = http.get(server.url("/metrics")).send().await {
                let text = response.text().await.unwrap_or_default();
                let waiting = text
                    .lines()
                    .find_map(|l| l.strip_prefix("deltaspace_queue_requests "))
                    .map(|v| v.trim().parse::<f64>().expect("a number"))
                    .expect("/metrics has the queue gauge");
                peak_queue = peak_queue.max(waiting);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for request in requests {
            request.await.unwrap();
        }
    }
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    eprintln!(
        "bursts: 3 x {burst} requests at once, queue {small_queue}, batches of {small_batch} rows: \
         {} answered, \
         {} refused 429, {} errors; peak queue gauge {peak_queue}; RSS {:.1} MiB",
        tally.ok,
        tally.overloaded,
        tally.error_count,
        mib(server.rss_bytes().unwrap_or(0) as f64),
    );
    assert_eq!(tally.error_count, 0, "{:#?}", tally.errors);
    assert_eq!(tally.unanswered + tally.refused, 0, "connections failed");
    assert_eq!(tally.ok + tally.overloaded, 3 * burst as u64);
    assert!(
        tally.overloaded > 0,
        "bursts of {burst} should overflow a queue of {small_queue}"
    );
    // At most `queue_capacity` requests wait (queued or gathered into the next batch); the batch
    // being cut is counted until it runs.
    assert!(
        peak_queue <= (small_queue + small_batch) as f64,
        "the queue grew to {peak_queue}"
    );
    server.kill();

    // 3. SIGTERM under load, on a fresh server whose log has a line per answered request.
    let mut server = Server::start(&setup, "warn,deltaspace_server=debug").await;
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for id in 0..clients {
        let (http, base, tally, stop) = (
            fresh.clone(),
            server.base.clone(),
            tally.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(1_000 + id as u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                one_request(&http, &base, &mut rng, &tally).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64((seconds / 4.0).clamp(0.5, 5.0))).await;
    let answered_before = tally.lock().unwrap().ok;
    let terminated = Instant::now();
    server.terminate();
    let code = server.wait(Duration::from_secs(30)).await;
    let drain_seconds = terminated.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let log = server.log_text();
    let logged = log
        .lines()
        .filter(|l| l.contains("route=/v1/tasks/{name}/") && l.contains("status=200"))
        .count() as u64;
    eprintln!(
        "shutdown under load: {} answers ({answered_before} before SIGTERM), {} refused 503, {} \
         connections refused after the listener closed, {} closed unanswered (never processed: \
         still in the accept queue), {} errors; the server logged {logged} answers and exited \
         with {code:?} {drain_seconds:.2} s after SIGTERM",
        tally.ok, tally.shutting_down, tally.refused, tally.unanswered, tally.error_count,
    );
    // Nothing in flight was cut off (every answer logged reached its client, below); how long
    // the drain took is printed, not asserted.
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("stopped"), "{log}");
    assert_eq!(tally.error_count, 0, "{:#?}", tally.errors);
    assert_eq!(
        logged, tally.ok,
        "every answer the server sent reached its client"
    );
}
