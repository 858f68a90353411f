//! CPU forward time of the MiniLM export through ONNX Runtime: the plain graph (no DET plug points)
//! against the serving graph with one task per batch and with up to 32 tasks per batch.
//!
//! ```text
//! cargo bench --bench forward -- [--threads 2] [--rounds 12] [--shapes 32x64,1x64,8x64,64x16]
//! ```
//!
//! - Rows are synthetic and full length: `[CLS]`, random ids in 1000..30000, `[SEP]`, mask all 1,
//!   so every row is exactly `seq` tokens.
//! - Cases: `plain` (plain.onnx); `serve_one` (serve.onnx, every row the same z, all LoRA);
//!   `serve_mixed` (serve.onnx, each of min(batch, 32) tasks its own z, rows cycling LoRA, Adapter,
//!   Prefix). The subspace is `Subspace::random` at d = 16 through the export's θ⁰.
//! - Rounds are interleaved: each round runs every shape and case once, in an order that rotates
//!   from round to round, so load from other processes hits every case alike. Compare the ratios
//!   against `plain`, not the milliseconds. Nothing here asserts a timing.
//!
//! Prints a markdown table of median (min) ms, then one JSON line per shape and case, carrying
//! every sample so that `scripts/bench-forward.sh` can pool several runs.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use deltaspace::det::{DetKind, Theta0};
use deltaspace::model::{
    Batch, DeltaParams, Encoder, EncoderOptions, ModelFiles, TextInput, Tokens,
};
use deltaspace::runtime::{ProviderChoice, Runtime, RuntimeOptions};
use deltaspace::subspace::Subspace;
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// Most tasks in one `serve_mixed` batch.
const MAX_TASKS: usize = 32;
/// Random token ids are drawn from here: ordinary WordPiece tokens, clear of special tokens.
const TOKEN_IDS: std::ops::Range<i64> = 1000..30000;

#[derive(Parser, Debug)]
#[command(about = "CPU forward time: plain graph vs serving graph (ORT)")]
struct Args {
    /// The exported model directory.
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    model: PathBuf,
    /// ORT intra-op threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Timed rounds; each runs every shape and case once.
    #[arg(long, default_value_t = 12)]
    rounds: usize,
    /// Untimed runs of every shape and case before the first round.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Batch × sequence shapes, e.g. 32x64,1x64.
    #[arg(long, value_delimiter = ',', value_parser = parse_shape, default_value = "32x64,1x64,8x64,64x16")]
    shapes: Vec<(usize, usize)>,
    /// Subspace dimension d.
    #[arg(long, default_value_t = 16)]
    d: usize,
    /// Seed of the token ids, the codes z and the random subspace.
    #[arg(long, default_value_t = 7)]
    seed: u64,
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

#[derive(Debug, Clone, Copy)]
enum Case {
    Plain,
    ServeOne,
    ServeMixed,
}

impl Case {
    const ALL: [Case; 3] = [Case::Plain, Case::ServeOne, Case::ServeMixed];

    fn name(self) -> &'static str {
        match self {
            Case::Plain => "plain",
            Case::ServeOne => "serve_one",
            Case::ServeMixed => "serve_mixed",
        }
    }
}

/// One shape's inputs: the tokens, and z and det_select for each serving case.
struct Inputs {
    tokens: Tokens,
    one: (Array2<f32>, Array2<f32>),
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
        let input_ids = Array2::from_shape_fn((batch, seq), |(_, j)| match j {
            0 => cls,
            j if j == seq - 1 => sep,
            _ => rng.random_range(TOKEN_IDS),
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
        let one_select = Array2::from_shape_fn((batch, n_dets), |(_, k)| f32::from(k == lora));

        let tasks = batch.min(MAX_TASKS);
        let task_z = Array2::from_shape_simple_fn((tasks, d), &mut code);
        let mixed_z = Array2::from_shape_fn((batch, d), |(i, j)| task_z[[i % tasks, j]]);
        let columns = DetKind::ALL
            .iter()
            .map(|det| det.column(manifest))
            .collect::<Result<Vec<_>, _>>()?;
        let mixed_select = Array2::from_shape_fn((batch, n_dets), |(i, k)| {
            f32::from(k == columns[i % columns.len()])
        });
        Ok(Self {
            tokens,
            one: (one_z, one_select),
            mixed: (mixed_z, mixed_select),
            tasks,
        })
    }

    /// Runs one case once and returns its wall time in ms.
    fn time(&self, encoder: &Encoder, params: &DeltaParams, case: Case) -> anyhow::Result<f64> {
        let serve = |(z, det_select): &(Array2<f32>, Array2<f32>)| {
            let batch = Batch {
                tokens: &self.tokens,
                z: z.view(),
                det_select: det_select.view(),
            };
            encoder.embed(batch, params)
        };
        let start = Instant::now();
        let embeddings = match case {
            Case::Plain => encoder.embed_plain(&self.tokens)?,
            Case::ServeOne => serve(&self.one)?,
            Case::ServeMixed => serve(&self.mixed)?,
        };
        let ms = start.elapsed().as_secs_f64() * 1e3;
        black_box(embeddings);
        Ok(ms)
    }
}

/// Median and min of a non-empty sample.
fn median_min(samples: &[f64]) -> (f64, f64) {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    (median, sorted[0])
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let runtime = Runtime::load(RuntimeOptions {
        provider: ProviderChoice::Cpu,
        intra_threads: args.threads,
        library: None,
    })?;
    let options = EncoderOptions {
        with_plain: true,
        ..EncoderOptions::default()
    };
    let encoder = Encoder::load(&runtime, &args.model, &options)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let files = ModelFiles::open(&args.model)?;
    let theta0 = Theta0::load(&files)?;
    let subspace = Subspace::random(encoder.manifest(), &theta0, args.d, args.seed)?;
    let params = subspace.params();

    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let inputs = args
        .shapes
        .iter()
        .map(|&shape| Inputs::new(&encoder, shape, args.d, &mut rng))
        .collect::<anyhow::Result<Vec<_>>>()?;
    eprintln!(
        "ORT {} on CPU, {} intra threads, d = {}, {} warm-up runs and {} rounds per shape and case",
        runtime.library().display(),
        args.threads,
        args.d,
        args.warmup,
        args.rounds
    );

    for input in &inputs {
        for case in Case::ALL {
            for _ in 0..args.warmup {
                input.time(&encoder, params, case)?;
            }
        }
    }
    // samples[shape][case]
    let mut samples = vec![[const { Vec::new() }; 3]; inputs.len()];
    for round in 0..args.rounds {
        for (input, shape_samples) in inputs.iter().zip(&mut samples) {
            for step in 0..Case::ALL.len() {
                let index = (round + step) % Case::ALL.len();
                let ms = input.time(&encoder, params, Case::ALL[index])?;
                shape_samples[index].push(ms);
            }
        }
        eprintln!("round {}/{} done", round + 1, args.rounds);
    }

    println!(
        "| batch × seq | plain (ms) | serve, 1 task | serve, up to {MAX_TASKS} tasks, L/A/P |"
    );
    println!("|---|---|---|---|");
    let mut json_lines = Vec::new();
    for ((input, &(batch, seq)), shape_samples) in inputs.iter().zip(&args.shapes).zip(&samples) {
        let (plain_median, plain_min) = median_min(&shape_samples[0]);
        let mut cells = Vec::new();
        for (case, case_samples) in Case::ALL.into_iter().zip(shape_samples) {
            let (median, min) = median_min(case_samples);
            let ratio = median / plain_median;
            cells.push(match case {
                Case::Plain => format!("{median:.1} ({min:.1})"),
                _ => format!("{median:.1} ({min:.1}) ×{ratio:.2}"),
            });
            let tasks = match case {
                Case::Plain => 0,
                Case::ServeOne => 1,
                Case::ServeMixed => input.tasks,
            };
            json_lines.push(serde_json::json!({
                "engine": "ort",
                "batch": batch,
                "seq": seq,
                "case": case.name(),
                "tasks": tasks,
                "threads": args.threads,
                "d": args.d,
                "rounds": args.rounds,
                "median_ms": median,
                "min_ms": min,
                "ratio_median_vs_plain": ratio,
                "ratio_min_vs_plain": min / plain_min,
                "samples_ms": case_samples,
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
