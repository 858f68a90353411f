//! `deltaspace train det|subspace`: stages 0 and 1 of the paper's trainer, and the options every
//! training command shares.

use std::path::PathBuf;

use anyhow::{Context, bail};

use super::{at_least, load_encoder, non_negative, positive};
use crate::config::Config;
use crate::det::{DetKind, Theta0};
use crate::model::{Encoder, EncoderOptions, ModelFiles};
use crate::subspace::{self, RandomColumns, Subspace};
use crate::tensor_file::Storage;
use crate::train::lines::{self, SolutionLine, SubspaceLine};
use crate::train::solution::Solution;
use crate::train::stage0::train_dets;
use crate::train::stage1::{SubspaceOptions, collect_solutions, find_subspace};
use crate::tuning::batch::TrainTask;
use crate::tuning::data::Split;
use crate::tuning::fit::{self, FitOptions, Schedule};
use crate::tuning::optim::OptimizerKind;
use crate::tuning::tune::{Trace, TraceOptions};

/// Options shared by every training command. The schedule flags (steps, lr, eval-every,
/// patience) default per command: see [`TRAINING`] and [`TUNING`](crate::tuning::tune::TUNING).
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
    /// Examples per task in the final dev and test scores, and so in the dev scores that choose
    /// tune's DET and start [default: all].
    #[arg(long, value_parser = at_least::<1>)]
    pub final_limit: Option<usize>,
    /// Rows per ONNX Runtime run; larger steps are split and their gradients summed
    /// [default: 64, fit::RUN_ROWS].
    #[arg(long, value_parser = at_least::<1>)]
    pub run_rows: Option<usize>,
    /// Stop training after this many seconds of wall time in this process (a run resumed from
    /// --checkpoint gets them again): the step that ends past it is evaluated and ends the run;
    /// off the --eval-every grid, that evaluation keeps a better z but does not count toward the
    /// patience of a resumed run [default: no limit].
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
    /// learning rate, batch, --max-seq-len, --eval-every, --eval-limit or tune's --init) is
    /// refused; --steps and --patience may change on resume.
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
    pub(super) fn tasks(
        &self,
        encoder: &Encoder,
        dirs: &[PathBuf],
    ) -> anyhow::Result<Vec<TrainTask>> {
        let shots = self.shots.map(|k| (k, self.seed));
        load_tasks(encoder, dirs, self.max_examples, shots)
    }

    /// The schedule: the flags given, `defaults` for the others.
    pub(super) fn schedule(&self, defaults: Schedule) -> Schedule {
        Schedule {
            steps: self.steps.unwrap_or(defaults.steps),
            lr: self.lr.unwrap_or(defaults.lr),
            eval_every: self.eval_every.unwrap_or(defaults.eval_every),
            patience: self.patience.unwrap_or(defaults.patience),
        }
    }

    /// Refuses the flags among --steps (above 0), --eval-every, --eval-limit, --max-examples, --shots,
    /// --checkpoint, --patience, --max-seconds, --final-limit, --lr and --run-rows that `command`
    /// does not read (`unread`), naming those given, so that none is dropped silently.
    pub(super) fn refuse_unread(&self, command: &str, unread: &[&str]) -> anyhow::Result<()> {
        let given = [
            ("--steps", self.steps.is_some_and(|steps| steps > 0)),
            ("--eval-every", self.eval_every.is_some()),
            ("--eval-limit", self.eval_limit.is_some()),
            ("--max-examples", self.max_examples.is_some()),
            ("--shots", self.shots.is_some()),
            ("--checkpoint", self.checkpoint.is_some()),
            ("--patience", self.patience.is_some()),
            ("--max-seconds", self.max_seconds.is_some()),
            ("--final-limit", self.final_limit.is_some()),
            ("--lr", self.lr.is_some()),
            ("--run-rows", self.run_rows.is_some()),
        ];
        let named: Vec<&str> = (given.iter())
            .filter(|(flag, given)| *given && unread.contains(flag))
            .map(|(flag, _)| *flag)
            .collect();
        anyhow::ensure!(
            named.is_empty(),
            "{command} does not use {}: drop it",
            named.join(" or ")
        );
        Ok(())
    }

    /// Rows per ONNX Runtime run, given or the default.
    pub(super) fn run_rows(&self) -> usize {
        self.run_rows.unwrap_or(fit::RUN_ROWS)
    }

    pub(super) fn fit_options(&self, optimizer: OptimizerKind, defaults: Schedule) -> FitOptions {
        FitOptions {
            batch: self.batch,
            optimizer,
            eval_limit: self.eval_limit,
            run_rows: self.run_rows(),
            checkpoint: self.checkpoint.clone(),
            final_limit: self.final_limit,
            max_seconds: self.max_seconds,
            ..FitOptions::new(self.schedule(defaults), self.seed)
        }
    }

    pub(super) fn encoder(&self, config: &Config) -> anyhow::Result<Encoder> {
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
    ///
    /// The refinement runs its steps whole, so --checkpoint, --patience, --max-seconds and
    /// --final-limit are refused; without --data-root there is no refinement, and --lr,
    /// --eval-every, --eval-limit, --run-rows, --max-examples, --shots and --steps above 0 are
    /// refused too.
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
    #[arg(long, default_value_t = 1.0, value_parser = non_negative)]
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
    pub(super) fn open(
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

pub fn train(config: &Config, command: TrainCommand) -> anyhow::Result<()> {
    match command {
        TrainCommand::Det(args) => train_det(config, args),
        TrainCommand::Subspace(args) => train_subspace(config, args),
    }
}

fn train_subspace(config: &Config, args: SubspaceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.dim >= 1, "--dim must be at least 1");
    // Before the decomposition allocates solutions × d.
    let d = args.complete_to.unwrap_or(args.dim);
    subspace::check_d(d).map_err(|why| anyhow::anyhow!("--dim or --complete-to: {why}"))?;
    // Stage 1's refinement runs its steps whole, without checkpoints or early stopping; without
    // task data there is no refinement, and none of its flags is read.
    let mut unread = vec![
        "--checkpoint",
        "--patience",
        "--max-seconds",
        "--final-limit",
    ];
    if args.data_root.is_none() {
        unread.extend([
            "--steps",
            "--lr",
            "--eval-every",
            "--eval-limit",
            "--run-rows",
            "--max-examples",
            "--shots",
        ]);
    }
    let command = match args.data_root {
        Some(_) => "train subspace",
        None => "train subspace without --data-root (no refinement)",
    };
    args.training.refuse_unread(command, &unread)?;
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
        run_rows: args.training.run_rows(),
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

/// The DETs named (each once), every one for `all`; every name is read, so a typo beside `all`
/// is refused too.
fn parse_dets(names: &[String]) -> anyhow::Result<Vec<DetKind>> {
    let mut dets: Vec<DetKind> = Vec::new();
    for name in names.iter().filter(|n| *n != "all") {
        let det: DetKind = name.parse()?;
        if !dets.contains(&det) {
            dets.push(det);
        }
    }
    Ok(match names.iter().any(|n| n == "all") {
        true => DetKind::ALL.to_vec(),
        false => dets,
    })
}

/// Task data and label embeddings; with `shots = Some((k, seed))`, k examples per label in train
/// and in dev, drawn with seed.
pub(super) fn load_tasks(
    encoder: &Encoder,
    dirs: &[PathBuf],
    max_examples: Option<usize>,
    shots: Option<(usize, u64)>,
) -> anyhow::Result<Vec<TrainTask>> {
    // A task's outputs are named by its directory's name: two of one name would overwrite.
    for (index, dir) in dirs.iter().enumerate() {
        if let Some(first) = dirs[..index]
            .iter()
            .find(|other| other.file_name() == dir.file_name())
        {
            bail!(
                "--data {} and {} name the same task: its outputs would overwrite each other",
                first.display(),
                dir.display()
            );
        }
    }
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
    // Every file first: a reader that leaves stdout early must not cost a trained solution.
    let mut saved = Vec::with_capacity(solutions.len());
    for solution in &solutions {
        let path = if single_file {
            args.out.clone()
        } else {
            Solution::path_in(&args.out, &solution.task, solution.det)
        };
        let storage = if args.f16 { Storage::F16 } else { Storage::F32 };
        solution.save(&path, encoder.manifest(), storage)?;
        saved.push(SolutionLine {
            task: solution.task.clone(),
            det: solution.det,
            dev: solution.dev,
            test: solution.test,
            step: solution.step,
            file: path,
        });
    }
    saved.iter().try_for_each(lines::print)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_det_named_twice_is_trained_once() {
        let names = ["lora", "adapter", "lora"].map(String::from);
        assert_eq!(
            parse_dets(&names).unwrap(),
            [DetKind::Lora, DetKind::Adapter]
        );
        assert_eq!(parse_dets(&["all".into()]).unwrap(), DetKind::ALL);
        // A typo beside `all` was never read.
        assert!(parse_dets(&["all".into(), "lorra".into()]).is_err());
    }
}
