//! `deltaspace train det|subspace`, `tune`, `eval` and `transfer`: the offline trainer.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::predict::load_task;
use super::{at_least, load_encoder, load_subspace, positive};
use crate::config::Config;
use crate::det::{DetKind, Theta0};
use crate::model::{Encoder, EncoderOptions, ModelFiles};
use crate::subspace::{RandomColumns, Subspace};
use crate::task::{Task, TaskLimits};
use crate::tensor_file::Storage;
use crate::train::lines::{
    self, EvalLine, LandscapeLine, ProbeLine, SolutionLine, SubspaceLine, TransferLine, TuneLine,
};
use crate::train::probe::{L2_GRID, linear_probe, zero_shot};
use crate::train::quality;
use crate::train::solution::Solution;
use crate::train::stage0::train_dets;
use crate::train::stage1::{SubspaceOptions, collect_solutions, find_subspace};
use crate::tuning::batch::TrainTask;
use crate::tuning::data::Split;
use crate::tuning::eval::Scores;
use crate::tuning::fit::{self, FitOptions, Schedule, Space, Unit, evaluate_values};
use crate::tuning::head::HeadTuning;
use crate::tuning::optim::OptimizerKind;
use crate::tuning::tune::{
    CMAES, CmaOptions, Start, TUNING, Target, Trace, TraceOptions, Tuned, default_starts,
    tune_cmaes, tune_gradient,
};

/// Options shared by every training command. The schedule flags (steps, lr, eval-every,
/// patience) default per command: see [`TRAINING`] and [`TUNING`].
#[derive(Debug, Clone, clap::Args)]
pub struct TrainingArgs {
    /// Model directory [default: [model] dir].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Optimizer steps (CMA-ES: generations) [default: 300; tune: 1000; tune --optimizer cmaes: 500].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Training rows per task (and DET) per step.
    #[arg(long, default_value_t = fit::BATCH, value_parser = at_least::<1>)]
    pub batch: usize,
    /// Learning rate [default: 1e-3; tune: 0.05].
    #[arg(long, value_parser = positive::<f32>)]
    pub lr: Option<f32>,
    /// Evaluate on dev, keep the best, and checkpoint every this many steps [default: 50; tune: 25].
    #[arg(long, value_parser = at_least::<1>)]
    pub eval_every: Option<usize>,
    /// Early stopping: a task (and DET) stops training once this many evaluations in a row
    /// have not improved its dev accuracy, or once that accuracy is perfect; the others go on.
    /// 0: never stop early [default: 0; tune: 12].
    #[arg(long)]
    pub patience: Option<usize>,
    /// Dev examples per task in those evaluations [default: all].
    #[arg(long, value_parser = at_least::<1>)]
    pub eval_limit: Option<usize>,
    /// Examples per task in the final dev and test scores [default: all].
    #[arg(long, value_parser = at_least::<1>)]
    pub final_limit: Option<usize>,
    /// Rows per ONNX Runtime run; larger steps are split and their gradients summed.
    #[arg(long, default_value_t = fit::RUN_ROWS, value_parser = at_least::<1>)]
    pub run_rows: usize,
    /// Stop training after this many seconds of wall time: the step that ends past it is
    /// evaluated and ends the run; off the --eval-every grid, that evaluation keeps a better z
    /// but does not count toward the patience of a resumed run [default: no limit].
    #[arg(long, value_parser = positive::<f64>)]
    pub max_seconds: Option<f64>,
    /// Use at most this many examples of each split (files are shuffled and stratified).
    #[arg(long, value_parser = at_least::<1>)]
    pub max_examples: Option<usize>,
    /// Few-shot: train and choose (on dev) with this many examples per label from each of train
    /// and dev, drawn with --seed; test stays whole.
    #[arg(long, value_parser = at_least::<1>)]
    pub shots: Option<usize>,
    /// Truncate inputs to this many tokens (the model's limit when absent).
    #[arg(long, value_parser = at_least::<1>)]
    pub max_seq_len: Option<usize>,
    /// Random seed: same seed, same run.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Checkpoint file, written at every evaluation and resumed from when present. A checkpoint
    /// of another run (space, seed, training or dev examples, label descriptions, optimizer,
    /// learning rate, batch, --max-seq-len, --eval-limit or tune's --init) is refused; --steps and
    /// --patience may change on resume.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
}

/// Stages 0 and 1 (`train det`, `train subspace`): fixed budgets, the scripts give their own.
pub const TRAINING: Schedule = Schedule {
    steps: 300,
    lr: 1e-3,
    eval_every: 50,
    patience: 0,
};

impl TrainingArgs {
    /// The tasks of `dirs`, cut to --max-examples and drawn to --shots per label.
    fn tasks(&self, encoder: &Encoder, dirs: &[PathBuf]) -> anyhow::Result<Vec<TrainTask>> {
        let shots = self.shots.map(|k| (k, self.seed));
        load_tasks(encoder, dirs, self.max_examples, shots)
    }

    /// The schedule: the flags given, `defaults` for the others.
    fn schedule(&self, defaults: Schedule) -> Schedule {
        Schedule {
            steps: self.steps.unwrap_or(defaults.steps),
            lr: self.lr.unwrap_or(defaults.lr),
            eval_every: self.eval_every.unwrap_or(defaults.eval_every),
            patience: self.patience.unwrap_or(defaults.patience),
        }
    }

    fn fit_options(&self, optimizer: OptimizerKind, defaults: Schedule) -> FitOptions {
        FitOptions {
            batch: self.batch,
            optimizer,
            eval_limit: self.eval_limit,
            run_rows: self.run_rows,
            checkpoint: self.checkpoint.clone(),
            final_limit: self.final_limit,
            max_seconds: self.max_seconds,
            ..FitOptions::new(self.schedule(defaults), self.seed)
        }
    }

    fn encoder(&self, config: &Config) -> anyhow::Result<Encoder> {
        let options = EncoderOptions {
            with_grad: true,
            max_seq_len: self.max_seq_len,
            ..EncoderOptions::default()
        };
        load_encoder(config, self.model.as_deref(), options)
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum TrainCommand {
    /// Stage 0: train DETs in their original space from θ⁰, every (task, DET) in shared runs.
    Det(DetArgs),
    /// Stage 1: find the unified subspace from stage-0 solutions (decomposition + refinement).
    Subspace(SubspaceArgs),
}

/// Arguments of `train subspace`.
#[derive(Debug, clap::Args)]
pub struct SubspaceArgs {
    #[command(flatten)]
    pub training: TrainingArgs,
    /// Directory of stage-0 solutions (<task>.<det>.safetensors); tasks need all three DETs.
    #[arg(long)]
    pub solutions: PathBuf,
    /// Directory holding each solution's task data as <data-root>/<task>/: for the refinement
    /// (--steps 0: none), and for the label descriptions stored with the codes (`tune --init
    /// upstream` chooses by them).
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Subspace dimension d: the learned directions (at most one per task, beyond that random
    /// ones, stored).
    #[arg(long, value_parser = at_least::<1>)]
    pub dim: usize,
    /// Complete the learned basis with seeded random directions up to this d; the file stores them
    /// as their seed (--seed), so a subspace of large d stays small.
    #[arg(long, value_parser = at_least::<1>)]
    pub complete_to: Option<usize>,
    /// Scale each learned direction so that the upstream tasks' codes have unit RMS along it
    /// (U z unchanged): stage 2's steps then move θ along learned directions as far as the
    /// upstream solutions lie, instead of along unit vectors (docs/RESULTS.md, the d screen).
    #[arg(long)]
    pub unit_codes: bool,
    /// Weight α_rec of the reconstruction term.
    #[arg(long, default_value_t = 1.0)]
    pub rec_alpha: f32,
    /// Name recorded in the artifact (tasks refer to it) [default: <model>-d<dim>].
    #[arg(long)]
    pub name: Option<String>,
    /// Store values as f16 (half the size).
    #[arg(long)]
    pub f16: bool,
    /// Output subspace file (.safetensors).
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `train det`.
#[derive(Debug, clap::Args)]
pub struct DetArgs {
    #[command(flatten)]
    pub training: TrainingArgs,
    /// Task directories ({train,dev,test}.jsonl + labels.json); repeat for several tasks.
    #[arg(long, required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// DET to train: lora, adapter, prefix; repeat, or `all`.
    #[arg(long, required = true, num_args = 1..)]
    pub det: Vec<String>,
    /// Adam or Adafactor.
    #[arg(long, default_value = "adam")]
    pub optimizer: OptimizerKind,
    /// Store each solution's δ as f16 (half the size; δ keeps about 3 significant digits).
    #[arg(long)]
    pub f16: bool,
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Output: a .safetensors file (one task, one DET) or a directory of <task>.<det>.safetensors.
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `tune`.
#[derive(Debug, clap::Args)]
pub struct TuneArgs {
    #[command(flatten)]
    pub training: TrainingArgs,
    /// Subspace file [default: [model] subspace].
    #[arg(long)]
    pub subspace: Option<PathBuf>,
    /// Task directories; repeat to tune several tasks in shared runs.
    #[arg(long, required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// The DET whose frozen U decodes z [default: each of lora, adapter and prefix in shared runs,
    /// keeping per task the one that scores best on dev; cmaes needs one].
    #[arg(long)]
    pub det: Option<DetKind>,
    /// What of a task head trains with z (gradient optimizers): none (labels score by their
    /// descriptions, the paper's setting; cmaes needs it), bias (class priors), or prototypes
    /// (priors and label prototypes, which start at the descriptions' embeddings: the best of
    /// the three in docs/results/screen-head.jsonl).
    #[arg(long, default_value = "prototypes")]
    pub head: HeadTuning,
    /// Keep z at 0 and train only the head (the head-only baseline; with --det lora, whose θ⁰
    /// is a no-op, a head on the frozen model).
    #[arg(long)]
    pub freeze_z: bool,
    /// Where z starts: `normal`, the paper's N(0, 0.02²); `upstream`, the code of the upstream
    /// task (among those the subspace carries) whose label descriptions are nearest to the
    /// task's, by the cosine of their mean embeddings (no example is used: dev is left to judge
    /// it); `upstream:NAME`, the code of upstream task NAME; or a task file, whose z it takes
    /// (made for the same subspace; its labels and head are not used; a file named like a
    /// keyword: ./normal). Repeat it to tune from each start and keep, per task, the start (and
    /// DET) that scores best on dev, the first of equals: `--init normal --init upstream` is a
    /// warm start guarded by the cold one. Every start sees the same training rows it would
    /// alone; --max-seconds bounds all of them together. [default: normal and upstream where the
    /// subspace carries described upstream codes (the shipped one does), which takes twice the
    /// time of `--init normal`; normal alone elsewhere; --optimizer cmaes starts from its own
    /// mean and takes no --init]
    #[arg(long, num_args = 1.., conflicts_with = "freeze_z")]
    pub init: Vec<PathBuf>,
    /// adam, adafactor (exact gradients) or cmaes (derivative-free).
    #[arg(long, default_value = "adam")]
    pub optimizer: String,
    /// CMA-ES population λ (0: 4 + ⌊3 ln d⌋).
    #[arg(long, default_value_t = 0)]
    pub population: usize,
    /// CMA-ES initial step size σ.
    #[arg(long, default_value_t = 1.0, value_parser = positive::<f64>)]
    pub sigma: f64,
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Output: TASK.json (one task) or a directory of <task>.json.
    #[arg(long)]
    pub out: PathBuf,
}

/// Accuracy against optimization time, for `tune` and `train det`.
#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// Append accuracy over time to this JSON lines file: {task, det, optimizer, step, seconds,
    /// evaluations, examples, split, n, accuracy, macro_f1} per task and DET at step 0 and every
    /// --trace-every steps, scoring the current z or δ (CMA-ES: the mean). Seconds count
    /// optimizer steps only, not evaluations; gradient runs share them among their --data tasks
    /// (give one --data to time one task), CMA-ES times each task.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Trace every this many steps [default: --eval-every].
    #[arg(long, requires = "trace", value_parser = at_least::<1>)]
    pub trace_every: Option<usize>,
    /// The split the trace scores.
    #[arg(long, default_value = "test", requires = "trace")]
    pub trace_split: Split,
    /// Examples per task the trace scores [default: --final-limit].
    #[arg(long, requires = "trace", value_parser = at_least::<1>)]
    pub trace_limit: Option<usize>,
}

impl TraceArgs {
    /// The trace file opened for a run of `optimizer` under `schedule` (None without --trace).
    fn open(
        &self,
        training: &TrainingArgs,
        schedule: Schedule,
        optimizer: &str,
    ) -> anyhow::Result<Option<Trace>> {
        let Some(path) = &self.trace else {
            return Ok(None);
        };
        let options = TraceOptions {
            path: path.clone(),
            every: self
                .trace_every
                .unwrap_or(training.schedule(schedule).eval_every),
            split: self.trace_split,
            limit: self.trace_limit.or(training.final_limit),
        };
        Trace::open(options, optimizer).map(Some)
    }
}

/// What every scoring command reads: the model, a subspace and one task's data.
#[derive(Debug, clap::Args)]
pub struct ScoringArgs {
    /// Model directory [default: [model] dir].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Subspace file [default: [model] subspace].
    #[arg(long)]
    pub subspace: Option<PathBuf>,
    /// Task directory ({train,dev,test}.jsonl + labels.json).
    #[arg(long)]
    pub data: PathBuf,
    /// Use at most this many examples of the split [default: all].
    #[arg(long, value_parser = at_least::<1>)]
    pub limit: Option<usize>,
    /// Truncate inputs to this many tokens.
    #[arg(long, value_parser = at_least::<1>)]
    pub max_seq_len: Option<usize>,
    /// Few-shot: what trains (the probe) sees this many examples per label of train and of dev,
    /// drawn with --seed; test stays whole.
    #[arg(long, value_parser = at_least::<1>)]
    pub shots: Option<usize>,
    /// Seed of the few-shot draw (the probe itself is deterministic: on a whole training set every
    /// seed gives the same line).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl ScoringArgs {
    /// The serving graph only: scoring needs no gradients.
    fn encoder(&self, config: &Config) -> anyhow::Result<Encoder> {
        let options = EncoderOptions {
            max_seq_len: self.max_seq_len,
            ..EncoderOptions::default()
        };
        load_encoder(config, self.model.as_deref(), options)
    }

    fn subspace(&self, config: &Config, encoder: &Encoder) -> anyhow::Result<Subspace> {
        load_subspace(config, self.subspace.as_deref(), encoder)
    }

    /// The task data, as the only task of a one-element list (what `fit::evaluate_values` takes).
    fn task(&self, encoder: &Encoder) -> anyhow::Result<Vec<TrainTask>> {
        let shots = self.shots.map(|k| (k, self.seed));
        load_tasks(encoder, std::slice::from_ref(&self.data), None, shots)
    }
}

/// Arguments of `eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub scoring: ScoringArgs,
    /// A task vector (TASK.json) to evaluate through the subspace.
    #[arg(long, conflicts_with_all = ["solution", "zero_shot", "probe"])]
    pub task: Option<PathBuf>,
    /// Decode --task's z with this DET (default: its own).
    #[arg(long)]
    pub det: Option<DetKind>,
    /// A stage-0 solution file to evaluate in the original space.
    #[arg(long, conflicts_with_all = ["zero_shot", "probe"])]
    pub solution: Option<PathBuf>,
    /// The frozen model with no delta (label descriptions only).
    #[arg(long, conflicts_with = "probe")]
    pub zero_shot: bool,
    /// The linear probe: logistic regression on the frozen model's embeddings of train (or of
    /// --shots per label), its L2 strength chosen on dev; prints it as `l2`.
    #[arg(long)]
    pub probe: bool,
    /// train, dev or test (with --shots, train and dev are the few-shot draws).
    #[arg(long, default_value = "test")]
    pub split: Split,
    /// Print JSON (the default; kept for scripts that pass it).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `transfer`.
#[derive(Debug, clap::Args)]
pub struct TransferArgs {
    #[command(flatten)]
    pub scoring: ScoringArgs,
    /// TASK.json whose z (found with its own DET) is decoded through every DET, zero-shot.
    #[arg(long)]
    pub task: PathBuf,
    /// dev or test.
    #[arg(long, default_value = "test")]
    pub split: Split,
}

pub fn train(config: &Config, command: TrainCommand) -> anyhow::Result<()> {
    match command {
        TrainCommand::Det(args) => train_det(config, args),
        TrainCommand::Subspace(args) => train_subspace(config, args),
    }
}

fn train_subspace(config: &Config, args: SubspaceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.dim >= 1, "--dim must be at least 1");
    if let Some(d) = args.complete_to {
        anyhow::ensure!(
            d > args.dim,
            "--complete-to {d} must exceed --dim {}",
            args.dim
        );
    }
    let encoder = args.training.encoder(config)?;
    let manifest = encoder.manifest();
    let theta0 = Theta0::load(&ModelFiles::open(encoder.dir())?)?;
    let solutions = Solution::load_dir(&args.solutions, manifest)?;
    let grouped = collect_solutions(&solutions, manifest)?;
    let schedule = args.training.schedule(TRAINING);
    let steps = if args.data_root.is_some() {
        schedule.steps
    } else {
        0
    };
    let tasks = match &args.data_root {
        Some(root) => {
            let dirs: Vec<PathBuf> = grouped.iter().map(|g| root.join(&g.task)).collect();
            args.training.tasks(&encoder, &dirs)?
        }
        None => Vec::new(),
    };
    let options = SubspaceOptions {
        d: args.dim,
        steps,
        batch: args.training.batch,
        lr: schedule.lr,
        rec_alpha: args.rec_alpha,
        eval_every: schedule.eval_every,
        eval_limit: args.training.eval_limit,
        run_rows: args.training.run_rows,
        seed: args.training.seed,
        unit_codes: args.unit_codes,
        // Named by the d it ends with, completed or not.
        name: args.name.clone().unwrap_or_else(|| {
            format!(
                "{}-d{}",
                manifest.name,
                args.complete_to.unwrap_or(args.dim)
            )
        }),
    };
    let found = find_subspace(&encoder, &theta0, &grouped, &tasks, &options)?;
    let mut subspace = found.subspace;
    if let Some(d) = args.complete_to {
        let columns = RandomColumns {
            count: d - args.dim,
            seed: args.training.seed,
        };
        subspace = subspace.with_random_columns(manifest, columns)?;
    }
    let storage = if args.f16 { Storage::F16 } else { Storage::F32 };
    subspace
        .save(&args.out, storage)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let saved = Subspace::load(&args.out, manifest)?;
    let names: Vec<&str> = grouped.iter().map(|g| g.task.as_str()).collect();
    lines::print(&SubspaceLine {
        id: saved.id(),
        d: saved.d(),
        tasks: names.iter().map(ToString::to_string).collect(),
        refinement_steps: steps,
        refinement_dev: found.dev,
        file: args.out.clone(),
    })
}

fn parse_dets(names: &[String]) -> anyhow::Result<Vec<DetKind>> {
    if names.iter().any(|n| n == "all") {
        return Ok(DetKind::ALL.to_vec());
    }
    let mut dets: Vec<DetKind> = names.iter().map(|n| n.parse()).collect::<Result<_, _>>()?;
    dets.dedup();
    Ok(dets)
}

/// Task data and label embeddings; with `shots = Some((k, seed))`, k examples per label in train
/// and in dev, drawn with seed.
fn load_tasks(
    encoder: &Encoder,
    dirs: &[PathBuf],
    max_examples: Option<usize>,
    shots: Option<(usize, u64)>,
) -> anyhow::Result<Vec<TrainTask>> {
    dirs.iter()
        .map(|dir| {
            let mut task = TrainTask::load(encoder, dir, max_examples)
                .with_context(|| format!("loading task data {}", dir.display()))?;
            if let Some((per_label, seed)) = shots {
                task.data = task.data.few_shot(per_label, seed);
            }
            Ok(task)
        })
        .collect()
}

fn train_det(config: &Config, args: DetArgs) -> anyhow::Result<()> {
    let dets = parse_dets(&args.det)?;
    let single_file = args.out.extension().is_some_and(|e| e == "safetensors");
    if single_file && (args.data.len() != 1 || dets.len() != 1) {
        bail!(
            "--out {} is a file: give one --data and one --det, or an output directory",
            args.out.display()
        );
    }
    let encoder = args.training.encoder(config)?;
    let theta0 = Theta0::load(&ModelFiles::open(encoder.dir())?)?;
    let tasks = args.training.tasks(&encoder, &args.data)?;
    let mut trace = args
        .trace
        .open(&args.training, TRAINING, &args.optimizer.to_string())?;
    let solutions = train_dets(
        &encoder,
        &theta0,
        &tasks,
        &dets,
        &args.training.fit_options(args.optimizer, TRAINING),
        trace.as_mut(),
    )?;
    for solution in &solutions {
        let path = if single_file {
            args.out.clone()
        } else {
            Solution::path_in(&args.out, &solution.task, solution.det)
        };
        let storage = if args.f16 { Storage::F16 } else { Storage::F32 };
        solution.save(&path, encoder.manifest(), storage)?;
        lines::print(&SolutionLine {
            task: solution.task.clone(),
            det: solution.det,
            dev: solution.dev,
            test: solution.test,
            step: solution.step,
            file: path,
        })?;
    }
    Ok(())
}

pub fn tune(config: &Config, args: TuneArgs) -> anyhow::Result<()> {
    let single_file = args.out.extension().is_some_and(|e| e == "json");
    if single_file && args.data.len() != 1 {
        bail!(
            "--out {} is a file: give one --data, or an output directory",
            args.out.display()
        );
    }
    let encoder = args.training.encoder(config)?;
    let subspace = load_subspace(config, args.subspace.as_deref(), &encoder)?;
    let tasks = args.training.tasks(&encoder, &args.data)?;
    let mut trace = args.trace.open(&args.training, TUNING, &args.optimizer)?;
    // What was tuned, and the starts it was tuned from (CMA-ES: its own mean, named normal).
    let (tuned, loaded) = match args.optimizer.as_str() {
        "cmaes" => {
            if args.head != HeadTuning::None {
                bail!(
                    "cmaes tunes z alone: give --head none (--head {} needs adam or adafactor)",
                    args.head
                );
            }
            let Some(det) = args.det else {
                bail!("--optimizer cmaes tunes through one DET: give --det");
            };
            if args.training.checkpoint.is_some() || args.training.patience.is_some() {
                bail!(
                    "--optimizer cmaes neither checkpoints nor stops early: drop --checkpoint and --patience"
                );
            }
            if !args.init.is_empty() {
                bail!("--optimizer cmaes starts from its own mean: drop --init");
            }
            let schedule = args.training.schedule(CMAES);
            let options = CmaOptions {
                generations: schedule.steps,
                population: args.population,
                batch: args.training.batch,
                sigma: args.sigma,
                eval_every: schedule.eval_every,
                eval_limit: args.training.eval_limit,
                final_limit: args.training.final_limit,
                seed: args.training.seed,
            };
            let tuned = tune_cmaes(&encoder, &subspace, &tasks, det, &options, trace.as_mut())?;
            (tuned, vec![InitArg::Named(Start::Normal)])
        }
        other => {
            let kind: OptimizerKind = other.parse().map_err(anyhow::Error::msg)?;
            if args.freeze_z && args.head == HeadTuning::None {
                bail!("--freeze-z trains only the head: give --head bias or --head prototypes");
            }
            let dets = args.det.map_or(DetKind::ALL.to_vec(), |det| vec![det]);
            let loaded = load_starts(&args.init, &subspace, !args.freeze_z)?;
            let target = Target {
                dets: &dets,
                head: args.head,
                train_z: !args.freeze_z,
                starts: &starts(&loaded),
            };
            let tuned = tune_gradient(
                &encoder,
                &subspace,
                &tasks,
                target,
                &args.training.fit_options(kind, TUNING),
                trace.as_mut(),
                None,
            )?;
            (tuned, loaded)
        }
    };
    let starts = starts(&loaded);
    for result in tuned {
        let data = &tasks[result.task].data;
        let path = if single_file {
            args.out.clone()
        } else {
            args.out.join(format!("{}.json", data.name))
        };
        write_task(&path, data.name.clone(), &result, &data.labels, &subspace)?;
        lines::print(&TuneLine {
            task: data.name.clone(),
            det: result.det,
            head: args.head,
            optimizer: args.optimizer.clone(),
            dev: result.dev,
            test: result.test,
            start: Some(start_name(&args.init, &starts, result.start, &result)),
            upstream_similarity: result.upstream.as_ref().map(|chosen| chosen.similarity),
            dev_by_det: result
                .candidates
                .iter()
                .filter(|c| c.start == result.start)
                .map(|c| (c.det.to_string(), c.dev.accuracy))
                .collect(),
            dev_by_start: result.dev_by_start(|i| start_name(&args.init, &starts, i, &result)),
            seconds: result.seconds,
            file: path,
        })?;
    }
    Ok(())
}

/// A start `--init` named: a word [`Start::named`] knows, or a code it gives (an upstream task's,
/// or a task file's z).
enum InitArg {
    Named(Start<'static>),
    Code(Vec<f32>),
}

/// `--init`'s starts in order [default: [`default_starts`]].
fn load_starts(
    init: &[PathBuf],
    subspace: &Subspace,
    train_z: bool,
) -> anyhow::Result<Vec<InitArg>> {
    if init.is_empty() {
        let defaults = default_starts(subspace, train_z);
        return Ok(defaults.iter().copied().map(InitArg::Named).collect());
    }
    init.iter()
        .map(|path| {
            let word = path.to_str().unwrap_or_default();
            if let Some(start) = Start::named(word) {
                return Ok(InitArg::Named(start));
            }
            if let Some(name) = word.strip_prefix("upstream:") {
                return upstream_code(subspace, name).map(InitArg::Code);
            }
            load_task(path, subspace)
                .map(|task| InitArg::Code(task.z))
                .with_context(|| {
                    format!(
                        "--init {}: it takes normal, upstream, upstream:NAME or a task file",
                        path.display()
                    )
                })
        })
        .collect()
}

/// The code of upstream task `name` among those `subspace` carries (`--init upstream:NAME`).
fn upstream_code(subspace: &Subspace, name: &str) -> anyhow::Result<Vec<f32>> {
    let Some(codes) = subspace.codes() else {
        bail!(
            "--init upstream:{name}: subspace {} carries no upstream codes",
            subspace.id()
        );
    };
    match codes.tasks.iter().position(|task| task == name) {
        Some(index) => Ok(codes.z[index].clone()),
        None => bail!(
            "--init upstream:{name}: subspace {} has no code for {name:?}; it has {}",
            subspace.id(),
            codes.tasks.join(", ")
        ),
    }
}

/// The starts [`load_starts`] loaded, for [`Target::starts`].
fn starts(loaded: &[InitArg]) -> Vec<Start<'_>> {
    loaded
        .iter()
        .map(|arg| match arg {
            InitArg::Named(start) => *start,
            InitArg::Code(z) => Start::Values(z),
        })
        .collect()
}

/// Start `index`'s name in a task's output line: [`Tuned::start_name`]'s, or the task file as
/// `--init` gave it.
fn start_name(init: &[PathBuf], starts: &[Start<'_>], index: usize, tuned: &Tuned) -> String {
    tuned
        .start_name(starts, index)
        .unwrap_or_else(|| init[index].display().to_string())
}

fn write_task(
    path: &Path,
    name: String,
    tuned: &Tuned,
    labels: &[crate::task::Label],
    subspace: &Subspace,
) -> anyhow::Result<()> {
    let task = Task {
        name,
        det: tuned.det,
        z: tuned.z.clone(),
        labels: labels.to_vec(),
        head: tuned.head.clone(),
        subspace: Some(subspace.id()),
    };
    task.validate(subspace.d(), &TaskLimits::default())?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(&task)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

pub fn eval(config: &Config, args: EvalArgs) -> anyhow::Result<()> {
    let encoder = args.scoring.encoder(config)?;
    let tasks = args.scoring.task(&encoder)?;
    let limit = args.scoring.limit;
    let name = tasks[0].data.name.clone();
    if args.probe {
        let probe = linear_probe(&encoder, &tasks[0], &L2_GRID)?;
        let metrics = match args.split {
            Split::Test => probe.test,
            _ => probe.dev,
        };
        return lines::print(&ProbeLine {
            task: name,
            method: "probe".into(),
            l2: probe.l2,
            split: args.split,
            scores: metrics,
            dev: probe.dev,
            shots: args.scoring.shots,
            seed: args.scoring.seed,
        });
    }
    let (det, metrics): (Option<DetKind>, Scores) = if let Some(path) = &args.solution {
        let solution = Solution::load(path, encoder.manifest())?;
        let theta0 = Theta0::load(&ModelFiles::open(encoder.dir())?)?;
        let units = [Unit::new(0, solution.det)];
        let metrics = evaluate_values(
            &encoder,
            &tasks,
            &units,
            &Space::Original { theta0: &theta0 },
            &[solution.delta],
            args.split,
            limit,
        )?;
        (Some(solution.det), metrics[0])
    } else if let Some(path) = &args.task {
        let subspace = args.scoring.subspace(config, &encoder)?;
        let task = Task::load(path)?;
        task.validate(subspace.d(), &TaskLimits::default())?;
        let det = args.det.unwrap_or(task.det);
        let units = [Unit::new(0, det)];
        let (head, values) = HeadTuning::task_values(&task, &tasks[0].descriptions)?;
        let metrics = evaluate_values(
            &encoder,
            &tasks,
            &units,
            &Space::Subspace {
                subspace: &subspace,
                head,
                train_z: true,
            },
            &[values],
            args.split,
            limit,
        )?;
        (Some(det), metrics[0])
    } else if args.zero_shot {
        let theta0 = Theta0::load(&ModelFiles::open(encoder.dir())?)?;
        (
            None,
            zero_shot(&encoder, &theta0, &tasks[0], args.split, limit)?,
        )
    } else {
        bail!("give one of --task, --solution, --zero-shot or --probe");
    };
    lines::print(&EvalLine {
        task: name,
        det,
        split: args.split,
        scores: metrics,
    })
}

pub fn transfer(config: &Config, args: TransferArgs) -> anyhow::Result<()> {
    let encoder = args.scoring.encoder(config)?;
    let subspace = args.scoring.subspace(config, &encoder)?;
    let tasks = args.scoring.task(&encoder)?;
    let limit = args.scoring.limit;
    let task = Task::load(&args.task)?;
    task.validate(subspace.d(), &TaskLimits::default())?;
    let units: Vec<Unit> = DetKind::ALL.iter().map(|&det| Unit::new(0, det)).collect();
    let (head, values) = HeadTuning::task_values(&task, &tasks[0].descriptions)?;
    let codes = vec![values; units.len()];
    let metrics = evaluate_values(
        &encoder,
        &tasks,
        &units,
        &Space::Subspace {
            subspace: &subspace,
            head,
            train_z: true,
        },
        &codes,
        args.split,
        limit,
    )?;
    for (unit, metrics) in units.iter().zip(metrics) {
        lines::print(&TransferLine {
            task: tasks[0].data.name.clone(),
            source_det: task.det,
            target_det: unit.det,
            split: args.split,
            scores: metrics,
        })?;
    }
    Ok(())
}

/// Arguments of `landscape`.
#[derive(Debug, clap::Args)]
pub struct LandscapeArgs {
    #[command(flatten)]
    pub scoring: ScoringArgs,
    /// Three TASK.json files: the task's solutions found with Adapter, LoRA and Prefix; the plane
    /// passes through their z.
    #[arg(long, num_args = 3, conflicts_with = "directions")]
    pub tasks: Vec<PathBuf>,
    /// Instead: a centre and two directions as JSON arrays of d numbers: '[..]' '[..]' '[..]'.
    #[arg(long, num_args = 3)]
    pub directions: Vec<String>,
    /// Grid points per axis.
    #[arg(long, default_value_t = 9, value_parser = at_least::<2>)]
    pub grid: usize,
    /// Extra room around the points, as a fraction of their spread (at least 1 unit).
    #[arg(long, default_value_t = 0.5)]
    pub margin: f32,
    /// dev or test.
    #[arg(long, default_value = "dev")]
    pub split: Split,
    /// Output directory: <task>.<det>.png per DET and <task>.landscape.json.
    #[arg(long)]
    pub out: PathBuf,
    /// A TrueType font for the labels [default: the system's DejaVu Sans or Liberation Sans].
    #[arg(long, env = "DELTASPACE_FONT")]
    pub font: Option<PathBuf>,
}

/// Arguments of `report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Results directory (JSON lines laid out by scripts/pipeline.sh).
    #[arg(long, required_unless_present = "quality")]
    pub results: Option<PathBuf>,
    /// Instead: the comparison against a user's alternatives, from the JSON lines of
    /// scripts/quality.sh (docs/results/quality/baselines.jsonl and <subspace>.jsonl), as one
    /// table per data size. A later file's line of the same run (row, task, shots, seed)
    /// replaces an earlier file's; one subspace at a time.
    #[arg(long, num_args = 1.., conflicts_with_all = ["results", "json"])]
    pub quality: Vec<PathBuf>,
    /// The subspace the main tables are about, as named in the results (e.g. d16).
    #[arg(long, default_value = "d16")]
    pub space: String,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn landscape(config: &Config, args: LandscapeArgs) -> anyhow::Result<()> {
    use crate::train::landscape::{Marker, Plane, draw, evaluate_grid};
    let encoder = args.scoring.encoder(config)?;
    let subspace = args.scoring.subspace(config, &encoder)?;
    let task = args.scoring.task(&encoder)?.remove(0);
    let (plane, markers) = if args.tasks.len() == 3 {
        let tasks: Vec<Task> = args
            .tasks
            .iter()
            .map(|p| Task::load(p))
            .collect::<anyhow::Result<_>>()?;
        for t in &tasks {
            t.validate(subspace.d(), &TaskLimits::default())?;
        }
        let points = [tasks[0].z.clone(), tasks[1].z.clone(), tasks[2].z.clone()];
        let plane = Plane::through(&points)?;
        let markers = tasks
            .iter()
            .map(|t| {
                let (x, y) = plane.coordinates(&t.z);
                Marker {
                    label: format!("z_{}", t.det.letter()),
                    x,
                    y,
                }
            })
            .collect();
        (plane, markers)
    } else if args.directions.len() == 3 {
        let parse = |s: &String| {
            serde_json::from_str::<Vec<f32>>(s)
                .with_context(|| format!("{s:?} is not a JSON array of numbers"))
        };
        let (centre, first, second) = (
            parse(&args.directions[0])?,
            parse(&args.directions[1])?,
            parse(&args.directions[2])?,
        );
        anyhow::ensure!(
            [&centre, &first, &second]
                .iter()
                .all(|v| v.len() == subspace.d()),
            "each of --directions needs d = {} numbers",
            subspace.d()
        );
        let plane = Plane::along(centre, &first, &second)?;
        (
            plane,
            vec![Marker {
                label: "centre".into(),
                x: 0.0,
                y: 0.0,
            }],
        )
    } else {
        bail!("give --tasks A.json L.json P.json or --directions CENTRE E1 E2");
    };
    let landscape = evaluate_grid(
        &encoder,
        &subspace,
        &task,
        plane,
        markers,
        args.grid,
        args.margin,
        args.split,
        args.scoring.limit,
    )?;
    let files = draw(&landscape, &args.out, args.font.as_deref())?;
    let json_path = args.out.join(format!("{}.landscape.json", landscape.task));
    std::fs::write(&json_path, serde_json::to_string_pretty(&landscape)?)?;
    lines::print(&LandscapeLine {
        task: landscape.task.clone(),
        images: files,
        grid: json_path,
    })
}

pub fn report(args: ReportArgs) -> anyhow::Result<()> {
    if !args.quality.is_empty() {
        let lines = quality::read_all(&args.quality)?;
        print!("{}", quality::markdown(&lines));
        return Ok(());
    }
    let results = args
        .results
        .as_deref()
        .context("give --results DIR or --quality FILE")?;
    let report = crate::train::report::build(results, &args.space)?;
    anyhow::ensure!(
        !report.tasks.is_empty(),
        "{} has no original.jsonl results",
        results.display()
    );
    print!("{}", crate::train::report::markdown(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
