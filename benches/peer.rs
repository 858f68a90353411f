//! The deltaspace side of the peer comparison (issue #5): serving classification batches of many
//! tasks from texts to labels, on the same batches as the PyTorch + PEFT peer
//! (`export/bench_peer.py`). `scripts/bench-peer.sh` runs both and writes docs/performance/peer.md.
//!
//! ```text
//! cargo bench --bench peer -- [--batches bench-out/peer] [--threads 2] [--rounds 4]
//! ```
//!
//! - Workload: `tasks.json` and `batches.jsonl`, written by `export/bench_peer.py write-batches`.
//!   32 tasks, task t with the labels of the committed example task number t mod 6
//!   (`models/all-MiniLM-L6-v2/tasks/*.json`, sorted by name) and its z: the example's own z for
//!   t < 6, the example's z plus N(0, 1) noise per value after that. The subspace is the
//!   committed default (`subspaces/default.safetensors`).
//! - What one batch costs, as in the server's CPU path: tokenize (truncation at 256 tokens),
//!   then `classifier::embed_tokens` through the subspace with a `DeltaCache` of the server's
//!   default budget (from d = 64 up a batch binds each task's U z instead of U), which builds each
//!   row's z and DET selector, splits the rows into runs of like length and runs the serving graph
//!   on each, padded to its longest row; then `classifier::score` of each row against its own
//!   task's label embeddings (prepared once by `PreparedTask::prepare`, softmax(20 cos)).
//! - Cases: `mixed_lap` (each row its own task, DETs cycling LoRA, Adapter, Prefix by task);
//!   `mixed_lora` (each row its own task, all LoRA); `one_task` (every row of a batch the task of
//!   the batch's first row, decoded through LoRA); `frozen_plain` (no task's delta at all: the
//!   plain graph, rows cut by length as `embed_tokens` cuts them, each row scored against its own
//!   task's labels). The last is the engines' floor: against the peer's frozen model it bounds
//!   what any serving design on ONNX Runtime can reach against PyTorch on this machine.
//! - One sample is the wall time to serve every batch of one batch size once. Rounds are
//!   interleaved: each round runs every batch size and case once, in an order that rotates from
//!   round to round. Nothing here asserts a timing.
//!
//! Prints a markdown table of median (min) ms, then one JSON line per batch size and case,
//! carrying every sample so that `scripts/bench-peer.sh` can pool several runs.

mod common;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use common::median_min;
use deltaspace::classifier::{Code, PreparedTask, embed_tokens, score};
use deltaspace::det::DetKind;
use deltaspace::model::{
    CPU_RUN_COST_TOKENS, DeltaCache, Encoder, EncoderOptions, TextInput, length_groups,
};
use deltaspace::runtime::{ProviderChoice, Runtime, RuntimeOptions};
use deltaspace::subspace::Subspace;
use deltaspace::task::{Label, Task, TaskLimits};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::Deserialize;

#[derive(Parser, Debug)]
#[command(about = "deltaspace serving classification batches of many tasks (peer comparison)")]
struct Args {
    /// The exported model directory.
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    model: PathBuf,
    /// The subspace artifact.
    #[arg(
        long,
        default_value = "models/all-MiniLM-L6-v2/subspaces/default.safetensors"
    )]
    subspace: PathBuf,
    /// The committed example tasks, whose z the workload's tasks start from.
    #[arg(long, default_value = "models/all-MiniLM-L6-v2/tasks")]
    examples: PathBuf,
    /// Directory with the workload: tasks.json and batches.jsonl.
    #[arg(long, default_value = "bench-out/peer")]
    batches: PathBuf,
    /// ORT intra-op threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Timed rounds; each serves every batch size's batches once per case.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Untimed runs of every batch size and case before the first round.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Seed of the noise added to the example tasks' z.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Passed by `cargo bench` to every bench binary; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// A task of the workload, as `tasks.json` lists it.
#[derive(Debug, Deserialize)]
struct WorkloadTask {
    name: String,
    /// The committed example task whose labels it has and whose z it starts from.
    example: String,
    labels: Vec<Label>,
}

/// One line of `batches.jsonl`.
#[derive(Debug, Deserialize)]
struct BatchLine {
    batch_size: usize,
    rows: Vec<BatchRow>,
}

#[derive(Debug, Deserialize)]
struct BatchRow {
    task: usize,
    text: String,
    text_pair: Option<String>,
}

/// One batch: each row's text and task index.
struct Batch {
    inputs: Vec<TextInput>,
    tasks: Vec<usize>,
}

#[derive(Debug, Clone, Copy)]
enum Case {
    MixedLap,
    MixedLora,
    OneTask,
    FrozenPlain,
}

impl Case {
    const ALL: [Case; 4] = [
        Case::MixedLap,
        Case::MixedLora,
        Case::OneTask,
        Case::FrozenPlain,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::MixedLap => "mixed_lap",
            Case::MixedLora => "mixed_lora",
            Case::OneTask => "one_task",
            Case::FrozenPlain => "frozen_plain",
        }
    }

    /// The DET that decodes task `task`'s z in this case.
    fn det(self, task: usize) -> DetKind {
        match self {
            Case::MixedLap => DetKind::ALL[task % DetKind::ALL.len()],
            Case::MixedLora | Case::OneTask | Case::FrozenPlain => DetKind::Lora,
        }
    }
}

/// The server's default delta cache budget (`[runtime] delta_cache_mb = 64`).
const DELTA_CACHE_BYTES: usize = 64 << 20;

/// The loaded model, subspace and prepared tasks.
struct Server {
    encoder: Encoder,
    subspace: Subspace,
    deltas: DeltaCache,
    tasks: Vec<PreparedTask>,
}

impl Server {
    /// Serves one batch from texts to labels; returns each row's best label.
    fn classify(&self, batch: &Batch, case: Case) -> anyhow::Result<Vec<String>> {
        let row_tasks: Vec<usize> = match case {
            Case::MixedLap | Case::MixedLora | Case::FrozenPlain => batch.tasks.clone(),
            Case::OneTask => vec![batch.tasks[0]; batch.tasks.len()],
        };
        let embeddings = match case {
            Case::FrozenPlain => self.embed_plain(&batch.inputs)?,
            _ => {
                let tokens = self.encoder.tokenize(&batch.inputs)?;
                let codes: Vec<Code<'_>> = (row_tasks.iter())
                    .map(|&task| (&self.tasks[task].task.z[..], case.det(task)))
                    .collect();
                let model =
                    (self.encoder.with_params(self.subspace.params())).decoding(&self.deltas);
                embed_tokens(&model, &tokens, &codes)?
            }
        };
        let logit_scale = self.encoder.manifest().logit_scale;
        let labels = row_tasks
            .iter()
            .enumerate()
            .map(|(index, &task)| {
                let embedding = embeddings.slice(ndarray::s![index..index + 1, ..]);
                let mut scores = score(embedding, &self.tasks[task].labels, logit_scale);
                scores.pop().map(|s| s.label).unwrap_or_default()
            })
            .collect();
        Ok(labels)
    }

    /// The frozen model's embeddings through the plain graph, the rows cut into runs of like
    /// length as `embed_tokens` cuts them on the CPU.
    fn embed_plain(&self, inputs: &[TextInput]) -> anyhow::Result<ndarray::Array2<f32>> {
        let tokens = self.encoder.tokenize(inputs)?;
        let lengths = tokens.lengths();
        let hidden = self.encoder.manifest().hidden();
        let mut embeddings = ndarray::Array2::zeros((tokens.rows(), hidden));
        for group in length_groups(&lengths, CPU_RUN_COST_TOKENS) {
            let seq = group.iter().map(|&i| lengths[i]).max().unwrap_or(1);
            let group_embeddings = self.encoder.embed_plain(&tokens.select(&group, seq))?;
            for (&row, embedding) in group.iter().zip(group_embeddings.rows()) {
                embeddings.row_mut(row).assign(&embedding);
            }
        }
        Ok(embeddings)
    }

    /// Serves every batch once; returns the wall time in ms.
    fn time(&self, batches: &[Batch], case: Case) -> anyhow::Result<f64> {
        let start = Instant::now();
        for batch in batches {
            black_box(self.classify(batch, case)?);
        }
        Ok(start.elapsed().as_secs_f64() * 1e3)
    }
}

/// The workload's tasks: example labels and z, prepared (label embeddings) on `encoder`.
fn load_tasks(
    args: &Args,
    encoder: &Encoder,
    subspace: &Subspace,
) -> anyhow::Result<Vec<PreparedTask>> {
    let path = args.batches.join("tasks.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let workload: Vec<WorkloadTask> =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut examples = BTreeMap::<String, Task>::new();
    let mut prepared = Vec::with_capacity(workload.len());
    for entry in workload {
        // The first task of each example is the example itself; later ones are nearby codes.
        let first_of_example = !examples.contains_key(&entry.example);
        if first_of_example {
            let file = args.examples.join(format!("{}.json", entry.example));
            examples.insert(entry.example.clone(), Task::load(&file)?);
        }
        let example = &examples[&entry.example];
        let z = example
            .z
            .iter()
            .map(|&value| {
                if first_of_example {
                    value
                } else {
                    value + rng.sample::<f32, _>(StandardNormal)
                }
            })
            .collect();
        let task = Task {
            name: entry.name,
            det: DetKind::Lora,
            z,
            labels: entry.labels,
            head: None,
            subspace: None,
        };
        task.validate(subspace.d(), &TaskLimits::default())
            .with_context(|| format!("task {}", task.name))?;
        prepared.push(PreparedTask::prepare(task, encoder)?);
    }
    Ok(prepared)
}

/// Batches of `batches.jsonl`, by batch size in file order.
fn load_batches(path: &Path, tasks: usize) -> anyhow::Result<Vec<(usize, Vec<Batch>)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut by_size: Vec<(usize, Vec<Batch>)> = Vec::new();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let line: BatchLine = serde_json::from_str(line)
            .with_context(|| format!("{}:{}", path.display(), number + 1))?;
        if line.rows.is_empty() || line.rows.iter().any(|row| row.task >= tasks) {
            bail!(
                "{}:{}: a batch needs rows, of tasks below {tasks}",
                path.display(),
                number + 1
            );
        }
        let batch = Batch {
            tasks: line.rows.iter().map(|row| row.task).collect(),
            inputs: line
                .rows
                .into_iter()
                .map(|row| TextInput::pair(row.text, row.text_pair))
                .collect(),
        };
        match by_size.last_mut() {
            Some((size, batches)) if *size == line.batch_size => batches.push(batch),
            _ => by_size.push((line.batch_size, vec![batch])),
        }
    }
    if by_size.is_empty() {
        bail!("{} has no batches", path.display());
    }
    Ok(by_size)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
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
    let encoder = Encoder::load(&runtime, &args.model, &options)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let subspace = Subspace::load(&args.subspace, encoder.manifest())
        .with_context(|| format!("loading {}", args.subspace.display()))?;
    let tasks = load_tasks(&args, &encoder, &subspace)?;
    let by_size = load_batches(&args.batches.join("batches.jsonl"), tasks.len())?;
    let deltas = DeltaCache::new(subspace.params(), DELTA_CACHE_BYTES, args.threads);
    let server = Server {
        encoder,
        subspace,
        deltas,
        tasks,
    };
    eprintln!(
        "ORT {} on CPU, {} intra threads, subspace {} (d = {}), {} tasks, {} warm-up runs and {} rounds",
        runtime.library().display(),
        args.threads,
        server.subspace.name(),
        server.subspace.d(),
        server.tasks.len(),
        args.warmup,
        args.rounds
    );

    for (_, batches) in &by_size {
        for case in Case::ALL {
            for _ in 0..args.warmup {
                server.time(batches, case)?;
            }
        }
    }
    // samples[size][case]
    let mut samples = vec![[const { Vec::new() }; Case::ALL.len()]; by_size.len()];
    for round in 0..args.rounds {
        for ((_, batches), size_samples) in by_size.iter().zip(&mut samples) {
            for step in 0..Case::ALL.len() {
                let index = (round + step) % Case::ALL.len();
                size_samples[index].push(server.time(batches, Case::ALL[index])?);
            }
        }
        eprintln!("round {}/{} done", round + 1, args.rounds);
    }

    println!(
        "| batch size | rows | mixed_lap ms | mixed_lora ms | one_task ms | frozen_plain ms |"
    );
    println!("|---|---|---|---|---|---|");
    let mut json_lines = Vec::new();
    for ((size, batches), size_samples) in by_size.iter().zip(&samples) {
        let rows: usize = batches.iter().map(|b| b.inputs.len()).sum();
        let mut cells = Vec::new();
        for (case, case_samples) in Case::ALL.into_iter().zip(size_samples) {
            let (median, min) = median_min(case_samples);
            cells.push(format!("{median:.1} ({min:.1})"));
            json_lines.push(serde_json::json!({
                "engine": "deltaspace",
                "batch": size,
                "case": case.name(),
                "rows": rows,
                "batches": batches.len(),
                "tasks": match case {
                    Case::OneTask => 1,
                    Case::FrozenPlain => 0,
                    _ => server.tasks.len(),
                },
                "threads": args.threads,
                "rounds": args.rounds,
                "d": server.subspace.d(),
                "subspace": server.subspace.name(),
                "median_ms": median,
                "min_ms": min,
                "samples_ms": case_samples,
            }));
        }
        println!("| {size} | {rows} | {} |", cells.join(" | "));
    }
    println!();
    for line in json_lines {
        println!("{line}");
    }
    Ok(())
}
