//! HTTP end to end: the release `deltaspace serve` on MiniLM with 1, 100, 10k and 1M registered
//! tasks (random z), loaded by closed-loop clients on loopback; throughput, p50, p99 and resident
//! memory per registered task.
//!
//! ```text
//! cargo bench --bench http -- [--counts 1,100,10000,1000000] [--seconds 20] [--clients 16]
//! ```
//!
//! For each count N, in a fresh data directory:
//! 1. N tasks go in through `deltaspace::server::import_tasks` (what `deltaspace import` runs):
//!    z ~ N(0, 1) per coordinate (‖z‖ ≈ 4, like the trained example tasks' 2–9), DETs in turn,
//!    labels drawn from the example tasks' label sets (models/.../tasks), as a fleet of many
//!    classifiers over a few label schemes would look.
//! 2. The server starts (`--bin`, default target/release/deltaspace) and embeds each label set
//!    once; time to ready and idle RSS are read.
//! 3. `--clients` connections each send one prediction at a time (1 text, a real sentence from
//!    tests/fixtures/data) to a task drawn uniformly from all N, for `--seconds` after a warm-up.
//!    The clients run in this process, on the same cores as the server: they take CPU from it.
//! 4. RSS is read again, under load; then one client alone sends for `--seconds` (latency at low
//!    load), and the server is stopped.
//! 5. Once every server has stopped, the plain graph (no DET plug points) runs in this process
//!    on the same texts with the server's ORT threads: tokenized and embedded offline in batches
//!    of `--offline-batch` (the server's `max_batch_rows`), each cut by length as the server cuts
//!    its batches, and one text at a time.
//!
//! Baselines, all from the same run: N = 1 (throughput and latency are reported as ratios against
//! it, and memory per task is (RSS_N − RSS_1) / (N − 1)); the offline plain graph (server overhead
//! = requests per second ÷ the offline texts per second; low-load latency ÷ the single-text
//! forward time). Prints two markdown tables, then one JSON line per N and one for the offline
//! baseline. Nothing here asserts a timing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use deltaspace::det::DetKind;
use deltaspace::model::{
    CPU_RUN_COST_TOKENS, Encoder, EncoderOptions, ModelFiles, TextInput, length_groups,
};
use deltaspace::runtime::{ProviderChoice, Runtime, RuntimeOptions};
use deltaspace::server::import_tasks;
use deltaspace::subspace::Subspace;
use deltaspace::task::{Head, Label, Task, TaskLimits};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "HTTP throughput, latency and memory per task of `deltaspace serve`")]
struct Args {
    /// Registered-task counts to measure; the first is the baseline (use 1).
    #[arg(long, value_delimiter = ',', default_value = "1,100,10000,1000000")]
    counts: Vec<usize>,
    /// Seconds of measured load per count.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Seconds of unmeasured load first.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// The server binary.
    #[arg(long, default_value = "target/release/deltaspace")]
    bin: PathBuf,
    /// The exported model directory.
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    model: PathBuf,
    /// The subspace the tasks belong to.
    #[arg(
        long,
        default_value = "models/all-MiniLM-L6-v2/subspaces/default.safetensors"
    )]
    subspace: PathBuf,
    /// Where label sets come from: every TASK.json here.
    #[arg(long, default_value = "models/all-MiniLM-L6-v2/tasks")]
    label_sets_from: PathBuf,
    /// JSON-lines file of texts to send (`text` fields).
    #[arg(long, default_value = "tests/fixtures/data/sst2/test.jsonl")]
    texts: PathBuf,
    /// ONNX Runtime intra-op threads of the server.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Where data directories and server logs go (emptied first).
    #[arg(long, default_value = "bench-out/http/runs")]
    runs: PathBuf,
    /// Seed of the codes z, the label draws and the request stream.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Give every registered task a head with a bias and a prototype per label (random unit
    /// vectors of the model's width), to measure what a head costs per task.
    #[arg(long)]
    heads: bool,
    /// `[runtime] delta_cache_mb` of the server (decoded deltas of recent tasks; used at d ≥ 64).
    #[arg(long, default_value_t = 64)]
    delta_cache_mb: usize,
    /// `[runtime] sessions` of the server: batches in flight at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    sessions: u64,
    /// `[runtime] shared_threads = true` (one ORT thread pool for every session; the server's
    /// default, off here so that earlier figures stay comparable).
    #[arg(long)]
    shared_threads: bool,
    /// `[runtime] one_det_graphs = true` (batches of one DET through that DET's own graph).
    #[arg(long)]
    one_det_graphs: bool,
    /// Texts per batch of the offline plain-graph baseline.
    #[arg(long, default_value_t = 32)]
    offline_batch: usize,
    /// Passed by `cargo bench` to every bench binary; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// What one count measured.
#[derive(Debug, Clone, serde::Serialize)]
struct Level {
    tasks: usize,
    import_s: f64,
    ready_s: f64,
    label_sets: u64,
    requests: usize,
    errors: usize,
    throughput_rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    rss_idle_bytes: u64,
    rss_load_bytes: u64,
    /// One client alone: requests per second, p50 and p99.
    low_load_rps: f64,
    low_load_p50_ms: f64,
    low_load_p99_ms: f64,
}

/// What every count's tasks are made of: the model's files, the subspace (loaded once: at large d
/// that takes seconds, which are not the import's) and the label sets to draw from.
struct Tasks {
    files: ModelFiles,
    subspace: Subspace,
    label_sets: Vec<Vec<Label>>,
}

/// The plain graph in this process, on the same texts and threads as the server.
#[derive(Debug, Clone, serde::Serialize)]
struct Offline {
    batch: usize,
    /// Texts per second, tokenized and embedded in batches of `batch`.
    texts_per_s: f64,
    /// One text at a time: p50 and p99 of tokenizing and embedding it.
    single_p50_ms: f64,
    single_p99_ms: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.counts.first() != Some(&1) {
        bail!("--counts must start with 1, the baseline");
    }
    if !args.bin.is_file() {
        bail!(
            "{} is missing: build it with `cargo build --release --bin deltaspace`",
            args.bin.display()
        );
    }
    let files = ModelFiles::open(&args.model)?;
    let tasks = Tasks {
        subspace: Subspace::load(&args.subspace, &files.manifest)?,
        label_sets: label_sets(&args.label_sets_from)?,
        files,
    };
    let texts = Arc::new(texts(&args.texts)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let _ = std::fs::remove_dir_all(&args.runs);
    let mut levels = Vec::new();
    for &count in &args.counts {
        let level = measure(&args, count, &tasks, &texts, &runtime)?;
        eprintln!("{}", serde_json::to_string(&level)?);
        levels.push(level);
    }
    let offline = offline(&args, &texts)?;
    eprintln!("{}", serde_json::to_string(&offline)?);
    print_table(&args, &tasks.subspace, &levels);
    print_overhead(&levels, &offline);
    for level in &levels {
        println!("{}", serde_json::to_string(level)?);
    }
    println!("{}", serde_json::to_string(&offline)?);
    Ok(())
}

fn measure(
    args: &Args,
    count: usize,
    tasks: &Tasks,
    texts: &Arc<Vec<String>>,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Level> {
    let dir = args.runs.join(format!("tasks-{count}"));
    std::fs::create_dir_all(&dir)?;
    let data_dir = dir.join("data");

    let started = Instant::now();
    register(args, count, tasks, &data_dir)?;
    let import_s = started.elapsed().as_secs_f64();

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let mut server = Server::start(args, &dir, &data_dir, port)?;
    runtime.block_on(server.wait_ready(&base))?;
    let ready_s = started.elapsed().as_secs_f64();
    let rss_idle_bytes = rss_bytes(server.child.id()).unwrap_or(0);
    let info: serde_json::Value =
        runtime.block_on(async { reqwest::get(format!("{base}/v1/info")).await?.json().await })?;
    if info["tasks"] != count {
        bail!("the server serves {} tasks, not {count}", info["tasks"]);
    }

    let pid = server.child.id();
    let (latencies, errors, rss_load_bytes) =
        runtime.block_on(load(args, args.clients, &base, count, texts, pid));
    let (alone, _, _) = runtime.block_on(load(args, 1, &base, count, texts, pid));
    server.stop();
    let ms = sorted_ms(&latencies);
    let alone_ms = sorted_ms(&alone);
    Ok(Level {
        tasks: count,
        import_s,
        ready_s,
        label_sets: info["label_sets"].as_u64().unwrap_or(0),
        requests: ms.len(),
        errors,
        throughput_rps: ms.len() as f64 / args.seconds as f64,
        p50_ms: quantile(&ms, 0.50),
        p99_ms: quantile(&ms, 0.99),
        rss_idle_bytes,
        rss_load_bytes,
        low_load_rps: alone_ms.len() as f64 / args.seconds as f64,
        low_load_p50_ms: quantile(&alone_ms, 0.50),
        low_load_p99_ms: quantile(&alone_ms, 0.99),
    })
}

/// The offline baseline: the plain graph on the bench's texts, batched, then one at a time, for
/// `--seconds` each after a few untimed runs.
fn offline(args: &Args, texts: &[String]) -> anyhow::Result<Offline> {
    let runtime = Runtime::load(RuntimeOptions {
        provider: ProviderChoice::Cpu,
        intra_threads: args.threads,
        library: deltaspace::config::ort_library_from_env(),
        shared_threads: false,
    })?;
    let options = EncoderOptions {
        with_plain: true,
        ..EncoderOptions::default()
    };
    let encoder = Encoder::load(&runtime, &args.model, &options)?;
    let inputs: Vec<TextInput> = texts.iter().map(TextInput::single).collect();
    let embed = |chunk: &[TextInput]| -> anyhow::Result<()> {
        std::hint::black_box(encoder.embed_plain(&encoder.tokenize(chunk)?)?);
        Ok(())
    };
    // Batches of `--offline-batch` texts (cycling through them), each cut by length as the
    // server cuts its batches (`model::length_groups`), so that padding costs both sides alike.
    let batch_of = |index: usize| -> Vec<TextInput> {
        let size = args.offline_batch.max(1);
        (0..size)
            .map(|j| inputs[(index * size + j) % inputs.len()].clone())
            .collect()
    };
    let run_batch = |batch: &[TextInput]| -> anyhow::Result<()> {
        let tokens = encoder.tokenize(batch)?;
        let lengths = tokens.lengths();
        for group in length_groups(&lengths, CPU_RUN_COST_TOKENS) {
            let seq = group.iter().map(|&i| lengths[i]).max().unwrap_or(1);
            std::hint::black_box(encoder.embed_plain(&tokens.select(&group, seq))?);
        }
        Ok(())
    };
    for index in 0..3 {
        run_batch(&batch_of(index))?;
    }
    let (started, mut rows) = (Instant::now(), 0);
    for index in 0.. {
        if started.elapsed().as_secs() >= args.seconds {
            break;
        }
        let batch = batch_of(index);
        run_batch(&batch)?;
        rows += batch.len();
    }
    let texts_per_s = rows as f64 / started.elapsed().as_secs_f64();
    let (started, mut single) = (Instant::now(), Vec::new());
    for input in inputs.iter().cycle() {
        if started.elapsed().as_secs() >= args.seconds {
            break;
        }
        let sent = Instant::now();
        embed(std::slice::from_ref(input))?;
        single.push(sent.elapsed());
    }
    let single = sorted_ms(&single);
    Ok(Offline {
        batch: args.offline_batch,
        texts_per_s,
        single_p50_ms: quantile(&single, 0.50),
        single_p99_ms: quantile(&single, 0.99),
    })
}

/// Durations as sorted milliseconds.
fn sorted_ms(durations: &[Duration]) -> Vec<f64> {
    let mut ms: Vec<f64> = durations.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    ms
}

/// Writes `count` random-z tasks into `data_dir`'s database, as `deltaspace import` does.
fn register(args: &Args, count: usize, tasks: &Tasks, data_dir: &Path) -> anyhow::Result<()> {
    let Tasks {
        files,
        subspace,
        label_sets,
    } = tasks;
    let d = subspace.d();
    let hidden = files.manifest.hidden();
    let dets = [DetKind::Lora, DetKind::Adapter, DetKind::Prefix];
    let make = || {
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
        (0..count).map(move |i| {
            let labels: Vec<Label> = label_sets.choose(&mut rng).cloned().unwrap_or_default();
            let head = args.heads.then(|| Head {
                bias: labels.iter().map(|_| rng.sample(StandardNormal)).collect(),
                prototypes: Some(
                    labels
                        .iter()
                        .map(|_| (0..hidden).map(|_| rng.sample(StandardNormal)).collect())
                        .collect(),
                ),
            });
            Ok(Task {
                name: task_name(i),
                det: dets[i % dets.len()],
                z: (0..d).map(|_| rng.sample(StandardNormal)).collect(),
                labels,
                head,
                subspace: None,
            })
        })
    };
    let summary = import_tasks(
        data_dir,
        &files.manifest,
        subspace,
        &TaskLimits::default(),
        make,
    )?;
    if summary.created != count {
        bail!("{} of {count} tasks were created", summary.created);
    }
    Ok(())
}

fn task_name(i: usize) -> String {
    format!("task-{i:07}")
}

/// Closed-loop clients for warm-up plus `seconds`; latencies of the measured part, errors, and
/// the server's RSS read halfway through.
async fn load(
    args: &Args,
    clients_count: usize,
    base: &str,
    count: usize,
    texts: &Arc<Vec<String>>,
    pid: u32,
) -> (Vec<Duration>, usize, u64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients_count)
        .build()
        .unwrap_or_default();
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup);
    let end = measure_from + Duration::from_secs(args.seconds);
    let mut clients = Vec::new();
    for c in 0..clients_count {
        let (client, base, texts) = (client.clone(), base.to_string(), texts.clone());
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ (c as u64 + 1) << 32);
        clients.push(tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0);
            while Instant::now() < end {
                let task = task_name(rng.random_range(0..count));
                let text = texts.choose(&mut rng).cloned().unwrap_or_default();
                let sent = Instant::now();
                let answer = client
                    .post(format!("{base}/v1/tasks/{task}/predict"))
                    .json(&json!({"inputs": [text]}))
                    .send()
                    .await;
                let ok = match answer {
                    Ok(response) => {
                        let status = response.status();
                        response.bytes().await.is_ok() && status.is_success()
                    }
                    Err(_) => false,
                };
                if sent >= measure_from && Instant::now() <= end {
                    if ok {
                        latencies.push(sent.elapsed());
                    } else {
                        errors += 1;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    tokio::time::sleep_until((measure_from + (end - measure_from) / 2).into()).await;
    let rss = rss_bytes(pid).unwrap_or(0);
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for client in clients {
        if let Ok((l, e)) = client.await {
            latencies.extend(l);
            errors += e;
        }
    }
    (latencies, errors, rss)
}

/// A running `deltaspace serve`; killed when dropped.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn start(args: &Args, dir: &Path, data_dir: &Path, port: u16) -> anyhow::Result<Self> {
        let config = dir.join("deltaspace.toml");
        std::fs::write(
            &config,
            format!(
                "[runtime]\nprovider = \"cpu\"\nintra_threads = {}\nsessions = {}\n\
                 delta_cache_mb = {}\nshared_threads = {}\none_det_graphs = {}\n\n\
                 [server]\nseed_tasks_dir = \"\"\nmax_tasks = 100000000\n",
                args.threads,
                args.sessions,
                args.delta_cache_mb,
                args.shared_threads,
                args.one_det_graphs
            ),
        )?;
        let log = dir.join("server.log");
        let child = Command::new(&args.bin)
            .arg("--config")
            .arg(&config)
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .arg("--model")
            .arg(&args.model)
            .arg("--subspace")
            .arg(&args.subspace)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn,deltaspace=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", args.bin.display()))?;
        Ok(Self { child, log })
    }

    async fn wait_ready(&mut self, base: &str) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                bail!(
                    "the server exited:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            let ready = client.get(format!("{base}/health/ready")).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the server was not ready in 600 s")
    }

    /// SIGTERM, then wait; SIGKILL if it lingers.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The distinct label lists of the TASK.json files in `dir`.
fn label_sets(dir: &Path) -> anyhow::Result<Vec<Vec<Label>>> {
    let mut sets: Vec<Vec<Label>> = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    for path in paths {
        let labels = Task::load(&path)?.labels;
        if !sets.contains(&labels) {
            sets.push(labels);
        }
    }
    if sets.is_empty() {
        bail!("no TASK.json in {}", dir.display());
    }
    Ok(sets)
}

/// The `text` fields of a JSON-lines file.
fn texts(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let texts: Vec<String> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .collect();
    if texts.is_empty() {
        bail!("no texts in {}", path.display());
    }
    Ok(texts)
}

fn print_table(args: &Args, subspace: &Subspace, levels: &[Level]) {
    let base = &levels[0];
    let per_task = |level: &Level, rss: fn(&Level) -> u64| {
        if level.tasks <= base.tasks {
            "–".to_string()
        } else {
            let grown = rss(level) as f64 - rss(base) as f64;
            format!("{:.0}", grown / (level.tasks - base.tasks) as f64)
        }
    };
    println!(
        "{} clients, {} s per count after {} s warm-up, 1 text per request, {} ORT threads; \
         subspace {} (d = {})\n",
        args.clients,
        args.seconds,
        args.warmup,
        args.threads,
        subspace.id(),
        subspace.d()
    );
    println!(
        "| tasks | label sets | import s | ready s | req/s | ×1 task | p50 ms | p99 ms | p99 ×1 task | errors | RSS idle MiB | RSS load MiB | bytes/task idle | bytes/task load |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for level in levels {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.0} | {:.2} | {:.1} | {:.1} | {:.2} | {} | {:.1} | {:.1} | {} | {} |",
            level.tasks,
            level.label_sets,
            level.import_s,
            level.ready_s,
            level.throughput_rps,
            level.throughput_rps / base.throughput_rps,
            level.p50_ms,
            level.p99_ms,
            level.p99_ms / base.p99_ms,
            level.errors,
            level.rss_idle_bytes as f64 / 1048576.0,
            level.rss_load_bytes as f64 / 1048576.0,
            per_task(level, |l| l.rss_idle_bytes),
            per_task(level, |l| l.rss_load_bytes),
        );
    }
}

/// Server overhead and low-load latency against the offline plain graph.
fn print_overhead(levels: &[Level], offline: &Offline) {
    println!(
        "\nAgainst the plain graph offline (same texts and ORT threads, in this process): {:.0} texts/s in \
         batches of {}; one text at a time p50 {:.1} ms, p99 {:.1} ms\n",
        offline.texts_per_s, offline.batch, offline.single_p50_ms, offline.single_p99_ms
    );
    println!(
        "| tasks | req/s ÷ offline texts/s | 1 client: req/s | p50 ms | p99 ms | p50 ÷ single-text p50 | p99 ÷ single-text p99 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for level in levels {
        println!(
            "| {} | {:.2} | {:.0} | {:.1} | {:.1} | {:.2} | {:.2} |",
            level.tasks,
            level.throughput_rps / offline.texts_per_s,
            level.low_load_rps,
            level.low_load_p50_ms,
            level.low_load_p99_ms,
            level.low_load_p50_ms / offline.single_p50_ms,
            level.low_load_p99_ms / offline.single_p99_ms,
        );
    }
}

/// VmRSS of a process, in bytes (Linux `/proc`).
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The `p`-quantile (0–1) of sorted values.
fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}
