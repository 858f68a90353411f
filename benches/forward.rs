//! Forward time of the MiniLM export through ONNX Runtime: the plain graph (no DET plug points)
//! against the serving graph with one task per batch and with up to 32 tasks per batch, on the CPU
//! or on CUDA, with U and base sent each run or resident on the device.
//!
//! ```text
//! cargo bench --bench forward -- [--threads 2] [--rounds 12] [--shapes 32x64,1x64,8x64,64x16]
//!     [--provider cpu|cuda|auto] [--cases plain,serve_one,serve_32_lora,serve_mixed]
//!     [--resident] [--cuda-graphs] [--paths host,decoded,product,resident,graph] [--shared-threads]
//!     [--serve-graph serve_fp16.onnx --plain-graph plain_fp16.onnx --label fp16]
//!     [--parity [--reference-provider cpu] [--reference-serve-graph F --reference-plain-graph F]]
//! ```
//!
//! - Rows are synthetic and full length: `[CLS]`, random ids in 1000..30000, `[SEP]`, mask all 1,
//!   so every row is exactly `seq` tokens.
//! - Cases: `plain` (the plain graph); `serve_one` (the serving graph, every row the same z, all
//!   LoRA); `serve_32_lora` (min(batch, 32) tasks, each its own z, all LoRA); `serve_mixed`
//!   (min(batch, 32) tasks, rows cycling LoRA, Adapter, Prefix). `serve_32_lora` against
//!   `serve_mixed` separates "many tasks in a batch" from "mixed DETs in a batch". The subspace is
//!   `Subspace::random` at d = 16 through the export's θ⁰. The default cases are the first, second
//!   and fourth (what scripts/bench-forward.sh compares with PyTorch).
//! - Paths: `host` (`Encoder::embed` / `embed_plain`: every input, U and base included, passed
//!   from host memory each run); `resident` (`ResidentEncoder`: U and base bound once in the
//!   session's device memory through IoBinding, tokens, z and det_select per run); `graph` (the
//!   resident path with fixed buffers per shape and, on CUDA, one CUDA graph per shape).
//!   `product` is what the server's batcher runs on the CPU: `classifier::embed_tokens`, which cuts
//!   a big mixed batch by DET into one-DET graphs, over the decoded path.
//!   `decoded` is the host path through a warm `DeltaCache` (the server's CPU path: a batch of
//!   fewer tasks than d binds one-hot codes and each task's U z instead of U; the plain case runs
//!   the host path there).
//!   `--resident` and `--cuda-graphs` add the last two; the plain case runs through each path
//!   too (resident plain = IoBinding without U), so every ratio compares like with like. JSON
//!   lines name a non-host path in the case (`serve_mixed+resident`) and in `path`.
//! - `--serve-graph` / `--plain-graph` take other graph files of the model directory (the fp16
//!   variants of export/fp16.py), through a temporary copy of the directory whose manifest names
//!   them (symbolic links to every other file).
//! - Rounds are interleaved: each round runs every shape, case and path once, in an order that
//!   rotates from round to round, so load from other processes hits every case alike. Compare the
//!   ratios against `plain`, not the milliseconds. Nothing here asserts a timing.
//! - `--parity`: no timing; every shape, case and path once on `--provider` and once through the
//!   host path of `--reference-provider` (and the reference graphs), printing the maximum absolute
//!   and relative difference of the embeddings and the lowest cosine between them.
//!
//! Prints a markdown table of median (min) ms, then one JSON line per shape, case and path,
//! carrying every sample so that `scripts/bench-forward.sh` and `scripts/gpu-check.sh` can pool
//! several runs.

mod common;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use common::median_min;
use deltaspace::classifier::{self, Code};
use deltaspace::det::{DetKind, Theta0};
use deltaspace::model::{
    Batch, DeltaCache, DeltaParams, Encoder, EncoderOptions, Manifest, ModelFiles, ResidentEncoder,
    ResidentOptions, TextInput, Tokens,
};
use deltaspace::runtime::{ProviderChoice, Runtime, RuntimeOptions};
use deltaspace::subspace::Subspace;
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// Most tasks in one `serve_32_lora` or `serve_mixed` batch.
const MAX_TASKS: usize = 32;
/// Random token ids are drawn from here: ordinary WordPiece tokens, clear of special tokens.
const TOKEN_IDS: std::ops::Range<i64> = 1000..30000;
/// Extra untimed runs of the `graph` path: ORT's CUDA provider captures a graph after a couple of
/// plain runs of its id, and the capture run itself is slow.
const GRAPH_WARMUP: usize = 3;

/// The `decoded` path's cache: room for every task of every case (the server's default).
const DELTA_CACHE_BYTES: usize = 64 << 20;

#[derive(Parser, Debug)]
#[command(about = "Forward time: plain graph vs serving graph (ORT), CPU or CUDA")]
struct Args {
    /// The exported model directory.
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    model: PathBuf,
    /// ORT intra-op threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Timed rounds; each runs every shape, case and path once.
    #[arg(long, default_value_t = 12)]
    rounds: usize,
    /// Untimed runs of every shape, case and path before the first round.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Batch × sequence shapes, e.g. 32x64,1x64.
    #[arg(long, value_delimiter = ',', value_parser = parse_shape, default_value = "32x64,1x64,8x64,64x16")]
    shapes: Vec<(usize, usize)>,
    /// Subspace dimension d.
    #[arg(long, default_value_t = 16)]
    d: usize,
    /// One ORT thread pool for every session (`[runtime] shared_threads`, the server's default).
    #[arg(long)]
    shared_threads: bool,
    /// Seed of the token ids, the codes z and the random subspace.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Execution provider: cpu, cuda (or fail) or auto.
    #[arg(long, default_value = "cpu")]
    provider: ProviderChoice,
    /// Cases to run (plain, serve_one, serve_32_lora, serve_mixed).
    #[arg(long, value_delimiter = ',', value_parser = Case::parse, default_value = "plain,serve_one,serve_mixed")]
    cases: Vec<Case>,
    /// Paths to run (host, resident, graph); --resident and --cuda-graphs add to these.
    #[arg(long, value_delimiter = ',', value_parser = Path_::parse, default_value = "host")]
    paths: Vec<Path_>,
    /// Also run every case with U and base resident on the device (IoBinding).
    #[arg(long)]
    resident: bool,
    /// Also run every case resident with fixed buffers per shape and, on CUDA, CUDA graphs.
    #[arg(long)]
    cuda_graphs: bool,
    /// The serving graph file, relative to --model (default: the manifest's, serve.onnx).
    #[arg(long)]
    serve_graph: Option<String>,
    /// The plain graph file, relative to --model (default: the manifest's, plain.onnx).
    #[arg(long)]
    plain_graph: Option<String>,
    /// A name for the graph variant in the output (default: fp32, or the serving graph's stem).
    #[arg(long)]
    label: Option<String>,
    /// Compare embeddings against a reference instead of timing.
    #[arg(long)]
    parity: bool,
    /// The reference's provider (--parity).
    #[arg(long, default_value = "cpu")]
    reference_provider: ProviderChoice,
    /// The reference's serving graph, relative to --model (--parity; default: the manifest's).
    #[arg(long)]
    reference_serve_graph: Option<String>,
    /// The reference's plain graph, relative to --model (--parity; default: the manifest's).
    #[arg(long)]
    reference_plain_graph: Option<String>,
    /// Passed by `cargo bench` to every bench binary; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn parse_shape(text: &str) -> Result<(usize, usize), String> {
    let parsed = text
        .split_once('x')
        .and_then(|(b, s)| Some((b.parse().ok()?, s.parse().ok()?)));
    match parsed {
        Some((b, s)) if b >= 1 && s >= 2 => Ok((b, s)),
        _ => Err(format!(
            "{text:?} is not BATCHxSEQ (batch ≥ 1, seq ≥ 2), e.g. 32x64"
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Plain,
    ServeOne,
    Serve32Lora,
    ServeMixed,
}

impl Case {
    const ALL: [Case; 4] = [
        Case::Plain,
        Case::ServeOne,
        Case::Serve32Lora,
        Case::ServeMixed,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::Plain => "plain",
            Case::ServeOne => "serve_one",
            Case::Serve32Lora => "serve_32_lora",
            Case::ServeMixed => "serve_mixed",
        }
    }

    fn parse(text: &str) -> Result<Case, String> {
        Case::ALL
            .into_iter()
            .find(|case| case.name() == text)
            .ok_or_else(|| {
                format!(
                    "unknown case {text:?}: expected plain, serve_one, serve_32_lora or serve_mixed"
                )
            })
    }

    fn header(self) -> String {
        match self {
            Case::Plain => "plain".into(),
            Case::ServeOne => "serve, 1 task".into(),
            Case::Serve32Lora => format!("serve, up to {MAX_TASKS} tasks, LoRA"),
            Case::ServeMixed => format!("serve, up to {MAX_TASKS} tasks, L/A/P"),
        }
    }
}

/// How inputs reach the graph (`Path_`: `Path` is std's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path_ {
    Host,
    Decoded,
    Product,
    Resident,
    Graph,
}

impl Path_ {
    fn name(self) -> &'static str {
        match self {
            Path_::Host => "host",
            Path_::Decoded => "decoded",
            Path_::Product => "product",
            Path_::Resident => "resident",
            Path_::Graph => "graph",
        }
    }

    fn parse(text: &str) -> Result<Path_, String> {
        [
            Path_::Host,
            Path_::Decoded,
            Path_::Product,
            Path_::Resident,
            Path_::Graph,
        ]
        .into_iter()
        .find(|path| path.name() == text)
        .ok_or_else(|| {
            format!("unknown path {text:?}: expected host, decoded, product, resident or graph")
        })
    }
}

/// A case through a path: one column of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Column {
    case: Case,
    path: Path_,
}

impl Column {
    /// `serve_mixed` on the host path (as before paths existed), `serve_mixed+resident` otherwise.
    fn name(self) -> String {
        match self.path {
            Path_::Host => self.case.name().to_string(),
            path => format!("{}+{}", self.case.name(), path.name()),
        }
    }
}

/// One graph variant loaded every way the columns need.
struct Engines {
    encoder: Encoder,
    params: DeltaParams,
    /// The `decoded` path's cache, warm after the first run of each case.
    deltas: DeltaCache,
    resident: Option<(ResidentEncoder, ResidentEncoder)>,
    graph: Option<(ResidentEncoder, ResidentEncoder)>,
}

impl Engines {
    fn load(
        runtime: &Runtime,
        dir: &Path,
        d: usize,
        seed: u64,
        paths: &[Path_],
    ) -> anyhow::Result<Self> {
        let options = EncoderOptions {
            with_plain: true,
            one_det_graphs: true,
            ..EncoderOptions::default()
        };
        let encoder = Encoder::load(runtime, dir, &options)
            .with_context(|| format!("loading {}", dir.display()))?;
        let files = ModelFiles::open(dir)?;
        let theta0 = Theta0::load(&files)?;
        let params = Subspace::random(encoder.manifest(), &theta0, d, seed)?
            .params()
            .clone();
        let pair =
            |options: &ResidentOptions| -> anyhow::Result<(ResidentEncoder, ResidentEncoder)> {
                Ok((
                    ResidentEncoder::load(runtime, dir, &params, options)?,
                    ResidentEncoder::load_plain(runtime, dir, options)?,
                ))
            };
        // A path that cannot load (CUDA graphs refused by the provider, say) is left out with a
        // warning, so that one failure does not cost the rest of a device run.
        let optional = |path: Path_, options: ResidentOptions| {
            if !paths.contains(&path) {
                return None;
            }
            pair(&options)
                .inspect_err(|error| {
                    eprintln!(
                        "warning: the {} path did not load, its columns are left out: {error:#}",
                        path.name()
                    );
                })
                .ok()
        };
        let resident = optional(Path_::Resident, ResidentOptions::default());
        let graph = optional(
            Path_::Graph,
            ResidentOptions {
                cuda_graphs: true,
                ..ResidentOptions::default()
            },
        );
        let deltas = DeltaCache::new(&params, DELTA_CACHE_BYTES, 0);
        Ok(Self {
            encoder,
            params,
            deltas,
            resident,
            graph,
        })
    }

    fn has(&self, path: Path_) -> bool {
        match path {
            Path_::Host | Path_::Decoded | Path_::Product => true,
            Path_::Resident => self.resident.is_some(),
            Path_::Graph => self.graph.is_some(),
        }
    }

    fn describe(&self) -> String {
        let mut text = format!("provider {}", self.encoder.provider());
        if let Some((serve, _)) = &self.resident {
            text += &format!(", resident U/base: {:?}", serve.placement());
        }
        if let Some((serve, _)) = &self.graph {
            text += &format!(
                ", graph path: {}",
                if serve.cuda_graphs() {
                    "CUDA graphs"
                } else {
                    "fixed buffers (no CUDA graphs on this provider)"
                }
            );
        }
        text
    }
}

/// One shape's inputs: the tokens, and z and det_select for each serving case.
struct Inputs {
    tokens: Tokens,
    one: (Array2<f32>, Array2<f32>),
    lora: (Array2<f32>, Array2<f32>),
    mixed: (Array2<f32>, Array2<f32>),
    tasks: usize,
}

impl Inputs {
    fn new(
        encoder: &Encoder,
        (batch, seq): (usize, usize),
        d: usize,
        rng: &mut ChaCha8Rng,
    ) -> anyhow::Result<Self> {
        let manifest = encoder.manifest();
        if seq > manifest.max_seq_len {
            bail!(
                "seq {seq} exceeds the model's max_seq_len {}",
                manifest.max_seq_len
            );
        }
        // The tokenizer's own [CLS] and [SEP], from an empty text.
        let ends = encoder.tokenize(&[TextInput::single("")])?.input_ids;
        let (cls, sep) = (ends[[0, 0]], ends[[0, ends.ncols() - 1]]);
        let vocab = i64::try_from(manifest.config.vocab_size)?;
        let ids = TOKEN_IDS.start.min(vocab / 2)..TOKEN_IDS.end.min(vocab);
        let input_ids = Array2::from_shape_fn((batch, seq), |(_, j)| match j {
            0 => cls,
            j if j == seq - 1 => sep,
            _ => rng.random_range(ids.clone()),
        });
        let tokens = Tokens {
            input_ids,
            attention_mask: Array2::ones((batch, seq)),
            token_type_ids: Array2::zeros((batch, seq)),
        };

        let n_dets = manifest.dets.len();
        let lora = DetKind::Lora.column(manifest)?;
        let mut code = || rng.sample::<f32, _>(StandardNormal);
        let z_one_row = Array2::from_shape_simple_fn((1, d), &mut code);
        let one_z = Array2::from_shape_fn((batch, d), |(_, j)| z_one_row[[0, j]]);
        let all_lora = Array2::from_shape_fn((batch, n_dets), |(_, k)| f32::from(k == lora));

        let tasks = batch.min(MAX_TASKS);
        let task_z = Array2::from_shape_simple_fn((tasks, d), &mut code);
        let tasks_z = Array2::from_shape_fn((batch, d), |(i, j)| task_z[[i % tasks, j]]);
        let columns = DetKind::ALL
            .iter()
            .map(|det| det.column(manifest))
            .collect::<Result<Vec<_>, _>>()?;
        let mixed_select = Array2::from_shape_fn((batch, n_dets), |(i, k)| {
            f32::from(k == columns[i % columns.len()])
        });
        Ok(Self {
            tokens,
            one: (one_z, all_lora.clone()),
            lora: (tasks_z.clone(), all_lora),
            mixed: (tasks_z, mixed_select),
            tasks,
        })
    }

    fn tasks(&self, case: Case) -> usize {
        match case {
            Case::Plain => 0,
            Case::ServeOne => 1,
            Case::Serve32Lora | Case::ServeMixed => self.tasks,
        }
    }

    /// The embeddings of one case through one path.
    fn embed(&self, engines: &Engines, column: Column) -> anyhow::Result<Array2<f32>> {
        let (z, det_select) = match column.case {
            Case::Plain => {
                return Ok(match column.path {
                    Path_::Host | Path_::Decoded | Path_::Product => {
                        engines.encoder.embed_plain(&self.tokens)?
                    }
                    Path_::Resident => resident(&engines.resident)?.1.embed_tokens(&self.tokens)?,
                    Path_::Graph => resident(&engines.graph)?.1.embed_tokens(&self.tokens)?,
                });
            }
            Case::ServeOne => &self.one,
            Case::Serve32Lora => &self.lora,
            Case::ServeMixed => &self.mixed,
        };
        let batch = Batch {
            tokens: &self.tokens,
            z: z.view(),
            det_select: det_select.view(),
        };
        Ok(match column.path {
            Path_::Host => engines.encoder.embed(batch, &engines.params)?,
            Path_::Decoded => {
                (engines.encoder).embed_decoding(batch, &engines.params, &engines.deltas)?
            }
            Path_::Product => {
                let model =
                    (engines.encoder.with_params(&engines.params)).decoding(&engines.deltas);
                let codes = codes(engines.encoder.manifest(), z, det_select)?;
                classifier::embed_tokens(&model, &self.tokens, &codes)?
            }
            Path_::Resident => resident(&engines.resident)?.0.embed(batch)?,
            Path_::Graph => resident(&engines.graph)?.0.embed(batch)?,
        })
    }

    /// Runs one column once and returns its wall time in ms.
    fn time(&self, engines: &Engines, column: Column) -> anyhow::Result<f64> {
        let start = Instant::now();
        let embeddings = self.embed(engines, column)?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        black_box(embeddings);
        Ok(ms)
    }
}

/// Each row's code and DET, as the server's batcher hands them to `classifier::embed_tokens`.
fn codes<'a>(
    manifest: &Manifest,
    z: &'a Array2<f32>,
    det_select: &Array2<f32>,
) -> anyhow::Result<Vec<Code<'a>>> {
    z.rows()
        .into_iter()
        .zip(det_select.rows())
        .map(|(code, select)| {
            let column = select
                .iter()
                .position(|&v| v == 1.0)
                .context("a row has no DET")?;
            let det: DetKind = manifest.dets[column].name.parse()?;
            Ok((code.to_slice().context("z rows are contiguous")?, det))
        })
        .collect()
}

fn resident(
    pair: &Option<(ResidentEncoder, ResidentEncoder)>,
) -> anyhow::Result<&(ResidentEncoder, ResidentEncoder)> {
    pair.as_ref()
        .context("this path was not loaded. This is a bug.")
}

/// A model directory whose manifest names other graph files: `dir` itself when none are given,
/// else a temporary directory of symbolic links to `dir`'s files with an edited manifest.
struct ModelDir {
    path: PathBuf,
    temporary: bool,
}

impl ModelDir {
    fn new(
        dir: &Path,
        serve: Option<&str>,
        plain: Option<&str>,
        tag: &str,
    ) -> anyhow::Result<Self> {
        if serve.is_none() && plain.is_none() {
            return Ok(Self {
                path: dir.to_path_buf(),
                temporary: false,
            });
        }
        let dir = dir
            .canonicalize()
            .with_context(|| format!("model directory {}", dir.display()))?;
        let path =
            std::env::temp_dir().join(format!("deltaspace-bench-{}-{tag}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_name() != "manifest.json" {
                std::os::unix::fs::symlink(entry.path(), path.join(entry.file_name()))?;
            }
        }
        let mut manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json"))?)?;
        for (key, file) in [("serve", serve), ("plain", plain)] {
            if let Some(file) = file {
                if !dir.join(file).is_file() {
                    bail!(
                        "{} has no {file} (make it with export/fp16.py)",
                        dir.display()
                    );
                }
                manifest["graphs"][key] = serde_json::Value::String(file.to_string());
            }
        }
        std::fs::write(
            path.join("manifest.json"),
            serde_json::to_string_pretty(&manifest)?,
        )?;
        Ok(Self {
            path,
            temporary: true,
        })
    }
}

impl Drop for ModelDir {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let mut paths = args.paths.clone();
    if args.resident && !paths.contains(&Path_::Resident) {
        paths.push(Path_::Resident);
    }
    if args.cuda_graphs && !paths.contains(&Path_::Graph) {
        paths.push(Path_::Graph);
    }
    let mut cases = args.cases.clone();
    cases.dedup();
    let mut columns: Vec<Column> = paths
        .iter()
        .flat_map(|&path| cases.iter().map(move |&case| Column { case, path }))
        .collect();
    let label = args
        .label
        .clone()
        .unwrap_or_else(|| match &args.serve_graph {
            Some(file) => Path::new(file)
                .file_stem()
                .map_or_else(|| file.clone(), |s| s.to_string_lossy().into_owned()),
            None => "fp32".into(),
        });

    let runtime = Runtime::load(RuntimeOptions {
        provider: args.provider,
        intra_threads: args.threads,
        library: deltaspace::config::ort_library_from_env(),
        shared_threads: args.shared_threads,
    })?;
    let dir = ModelDir::new(
        &args.model,
        args.serve_graph.as_deref(),
        args.plain_graph.as_deref(),
        "test",
    )?;
    let engines = Engines::load(&runtime, &dir.path, args.d, args.seed, &paths)?;
    let provider = engines.encoder.provider();
    columns.retain(|column| engines.has(column.path));

    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let inputs = args
        .shapes
        .iter()
        .map(|&shape| Inputs::new(&engines.encoder, shape, args.d, &mut rng))
        .collect::<anyhow::Result<Vec<_>>>()?;

    if args.parity {
        return parity(&args, &runtime, &engines, &inputs, &columns, &label);
    }
    eprintln!(
        "ORT {} ({}), {} intra threads, graphs {label}, d = {}, {} warm-up runs and {} rounds per shape and column",
        runtime.library().display(),
        engines.describe(),
        args.threads,
        args.d,
        args.warmup,
        args.rounds
    );

    // A column whose warm-up fails is left out with a warning (a CUDA graph that will not
    // capture, say); the others still run.
    let mut failed = Vec::new();
    for input in &inputs {
        for &column in &columns {
            let extra = if column.path == Path_::Graph {
                GRAPH_WARMUP
            } else {
                0
            };
            for _ in 0..args.warmup + extra {
                if let Err(error) = input.time(&engines, column) {
                    eprintln!(
                        "warning: {} failed at {} × {}, left out: {error:#}",
                        column.name(),
                        input.tokens.rows(),
                        input.tokens.seq_len()
                    );
                    failed.push(column);
                    break;
                }
            }
        }
    }
    columns.retain(|column| !failed.contains(column));
    if columns.is_empty() {
        bail!("every column failed");
    }
    // samples[shape][column]
    let mut samples = vec![vec![Vec::new(); columns.len()]; inputs.len()];
    for round in 0..args.rounds {
        for (input, shape_samples) in inputs.iter().zip(&mut samples) {
            for step in 0..columns.len() {
                let index = (round + step) % columns.len();
                let ms = input.time(&engines, columns[index])?;
                shape_samples[index].push(ms);
            }
        }
        eprintln!("round {}/{} done", round + 1, args.rounds);
    }

    let headers: Vec<String> = columns
        .iter()
        .map(|column| match column.path {
            Path_::Host => column.case.header(),
            path => format!("{}, {}", column.case.header(), path.name()),
        })
        .collect();
    println!("| batch × seq | {} |", headers.join(" | "));
    println!("|---|{}", "---|".repeat(columns.len()));
    let mut json_lines = Vec::new();
    for ((input, &(batch, seq)), shape_samples) in inputs.iter().zip(&args.shapes).zip(&samples) {
        // Ratios against the plain case through the same path, else through the host path.
        let plain_of = |path: Path_| {
            columns
                .iter()
                .position(|c| c.case == Case::Plain && c.path == path)
                .or_else(|| {
                    columns
                        .iter()
                        .position(|c| c.case == Case::Plain && c.path == Path_::Host)
                })
                .map(|index| median_min(&shape_samples[index]))
        };
        let mut cells = Vec::new();
        for (&column, column_samples) in columns.iter().zip(shape_samples) {
            let (median, min) = median_min(column_samples);
            let plain = plain_of(column.path);
            let ratio = plain.map(|(plain_median, _)| median / plain_median);
            cells.push(match (column.case, ratio) {
                (Case::Plain, _) | (_, None) => format!("{median:.2} ({min:.2})"),
                (_, Some(ratio)) => format!("{median:.2} ({min:.2}) ×{ratio:.2}"),
            });
            json_lines.push(serde_json::json!({
                "engine": "ort",
                "provider": provider.to_string(),
                "variant": label,
                "path": column.path.name(),
                "batch": batch,
                "seq": seq,
                "case": column.name(),
                "tasks": input.tasks(column.case),
                "threads": args.threads,
                "d": args.d,
                "rounds": args.rounds,
                "median_ms": median,
                "min_ms": min,
                "seq_per_s": batch as f64 / (median / 1e3),
                "ratio_median_vs_plain": ratio,
                "ratio_min_vs_plain": plain.map(|(_, plain_min)| min / plain_min),
                "samples_ms": column_samples,
            }));
        }
        println!("| {batch} × {seq} | {} |", cells.join(" | "));
    }
    println!();
    for line in json_lines {
        println!("{line}");
    }
    Ok(())
}

/// `--parity`: every shape and column once here and once through the reference's host path.
fn parity(
    args: &Args,
    runtime: &Runtime,
    engines: &Engines,
    inputs: &[Inputs],
    columns: &[Column],
    label: &str,
) -> anyhow::Result<()> {
    let reference_runtime = Runtime::load(RuntimeOptions {
        provider: args.reference_provider,
        intra_threads: 0,
        library: deltaspace::config::ort_library_from_env(),
        shared_threads: false,
    })?;
    let reference_dir = ModelDir::new(
        &args.model,
        args.reference_serve_graph.as_deref(),
        args.reference_plain_graph.as_deref(),
        "reference",
    )?;
    let reference = Engines::load(
        &reference_runtime,
        &reference_dir.path,
        args.d,
        args.seed,
        &[],
    )?;
    let reference_label = args
        .reference_serve_graph
        .as_deref()
        .map_or("fp32".to_string(), |f| {
            Path::new(f)
                .file_stem()
                .map_or(f.to_string(), |s| s.to_string_lossy().into_owned())
        });
    eprintln!(
        "parity: ORT {}; test {label} ({}) vs reference {reference_label} (provider {}, host path)",
        runtime.library().display(),
        engines.describe(),
        reference.encoder.provider(),
    );
    println!(
        "Parity: {label} on {} (test) against {reference_label} on {} through the host path (reference).",
        engines.encoder.provider(),
        reference.encoder.provider()
    );
    println!();
    println!("| batch × seq | case | path | max abs | max rel | min cosine |");
    println!("|---|---|---|---|---|---|");
    let mut json_lines = Vec::new();
    for (input, &(batch, seq)) in inputs.iter().zip(&args.shapes) {
        for &case in &args.cases {
            let expected = input.embed(
                &reference,
                Column {
                    case,
                    path: Path_::Host,
                },
            )?;
            for column in columns.iter().filter(|c| c.case == case) {
                // The graph path runs several times: CUDA graphs are captured after a few runs of
                // a shape and replayed from then on, and the replays must agree too.
                let runs = if column.path == Path_::Graph {
                    GRAPH_WARMUP + 2
                } else {
                    1
                };
                let outcome: anyhow::Result<Vec<Array2<f32>>> =
                    (0..runs).map(|_| input.embed(engines, *column)).collect();
                let all = match outcome {
                    Ok(all) => all,
                    Err(error) => {
                        let error = format!("{error:#}").replace('\n', " ");
                        println!(
                            "| {batch} × {seq} | {} | {} | failed: {error} | | |",
                            case.name(),
                            column.path.name()
                        );
                        json_lines.push(serde_json::json!({
                            "parity": true, "batch": batch, "seq": seq, "case": column.name(),
                            "path": column.path.name(), "variant": label, "error": error,
                        }));
                        continue;
                    }
                };
                let (abs, rel, cosine) = all
                    .iter()
                    .map(|actual| compare(actual, &expected))
                    .fold((0.0f64, 0.0f64, f64::INFINITY), |w, c| {
                        (w.0.max(c.0), w.1.max(c.1), w.2.min(c.2))
                    });
                let finite = all.iter().all(|a| a.iter().all(|v| v.is_finite()));
                println!(
                    "| {batch} × {seq} | {} | {} | {abs:.1e} | {rel:.1e} | {cosine:.7} |",
                    case.name(),
                    column.path.name(),
                );
                json_lines.push(serde_json::json!({
                    "parity": true,
                    "batch": batch,
                    "seq": seq,
                    "case": column.name(),
                    "path": column.path.name(),
                    "provider": engines.encoder.provider().to_string(),
                    "variant": label,
                    "reference_provider": reference.encoder.provider().to_string(),
                    "reference_variant": reference_label,
                    "max_abs": abs,
                    "max_rel": rel,
                    "min_cosine": cosine,
                    "finite": finite,
                    "runs": runs,
                }));
            }
        }
    }
    println!();
    for line in json_lines {
        println!("{line}");
    }
    Ok(())
}

/// Max |a − b|, max |a − b| / max |b|, and the lowest row cosine.
fn compare(actual: &Array2<f32>, expected: &Array2<f32>) -> (f64, f64, f64) {
    let abs = actual
        .iter()
        .zip(expected)
        .fold(0.0f64, |m, (a, b)| m.max(f64::from((a - b).abs())));
    let scale = expected
        .iter()
        .fold(0.0f64, |m, b| m.max(f64::from(b.abs())))
        .max(1e-30);
    let cosine = actual
        .rows()
        .into_iter()
        .zip(expected.rows())
        .map(|(a, b)| {
            let dot: f64 = a
                .iter()
                .zip(b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            dot / (na * nb).max(1e-30)
        })
        .fold(f64::INFINITY, f64::min);
    (abs, abs / scale, cosine)
}
