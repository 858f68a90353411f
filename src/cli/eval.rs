//! `deltaspace eval` and `transfer`: a task vector, a stage-0 solution, the frozen model or the
//! linear probe scored on a task's data, and a z decoded through every DET.

use std::path::PathBuf;

use anyhow::bail;

use super::predict::load_task;
use super::train::load_tasks;
use super::{at_least, load_encoder, load_subspace};
use crate::config::Config;
use crate::det::{DetKind, Theta0};
use crate::model::{Encoder, EncoderOptions, ModelFiles};
use crate::subspace::Subspace;
use crate::task::{Label, Task};
use crate::train::lines::{self, EvalLine, ProbeLine, TransferLine};
use crate::train::probe::{L2_GRID, linear_probe, zero_shot};
use crate::train::solution::Solution;
use crate::tuning::batch::TrainTask;
use crate::tuning::data::Split;
use crate::tuning::eval::Scores;
use crate::tuning::fit::{Space, Unit, evaluate_values};
use crate::tuning::head::HeadTuning;

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
    /// Few-shot: train and dev become this many examples per label each, drawn with --seed (what
    /// `eval --probe` trains and chooses on, and the dev split others score); test stays whole.
    #[arg(long, value_parser = at_least::<1>)]
    pub shots: Option<usize>,
    /// Seed of the few-shot draw. Nothing else is drawn: without --shots every seed gives the
    /// same line.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl ScoringArgs {
    /// The serving graph only: scoring needs no gradients.
    pub(super) fn encoder(&self, config: &Config) -> anyhow::Result<Encoder> {
        let options = EncoderOptions {
            max_seq_len: self.max_seq_len,
            ..EncoderOptions::default()
        };
        load_encoder(config, self.model.as_deref(), options)
    }

    pub(super) fn subspace(&self, config: &Config, encoder: &Encoder) -> anyhow::Result<Subspace> {
        load_subspace(config, self.subspace.as_deref(), encoder)
    }

    /// The task data, as the only task of a one-element list (what `fit::evaluate_values` takes).
    pub(super) fn task(&self, encoder: &Encoder) -> anyhow::Result<Vec<TrainTask>> {
        let shots = self.shots.map(|k| (k, self.seed));
        load_tasks(encoder, std::slice::from_ref(&self.data), None, shots)
    }
}

/// Arguments of `eval`: one mode of --task, --solution, --zero-shot and --probe.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("mode").required(true)
    .args(["task", "solution", "zero_shot", "probe"])))]
pub struct EvalArgs {
    #[command(flatten)]
    pub scoring: ScoringArgs,
    /// A task vector (TASK.json) to evaluate through the subspace.
    #[arg(long, conflicts_with_all = ["solution", "zero_shot", "probe"])]
    pub task: Option<PathBuf>,
    /// Decode --task's z with this DET (default: its own); only with --task.
    #[arg(long)]
    pub det: Option<DetKind>,
    /// A stage-0 solution file to evaluate in the original space.
    #[arg(long, conflicts_with_all = ["zero_shot", "probe"])]
    pub solution: Option<PathBuf>,
    /// The frozen model with no delta (label descriptions only).
    #[arg(long, conflicts_with = "probe")]
    pub zero_shot: bool,
    /// The linear probe: logistic regression on the frozen model's embeddings of train (or of
    /// --shots per label), its L2 strength chosen on dev; prints it as `l2`. Scored on whole dev
    /// or test sets (no --split train, no --limit).
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

/// The probe is fitted on train and scored on whole dev and test sets: it has no train score, and
/// `--limit` would not change what it scores.
fn refuse_unscored_probe(args: &EvalArgs) -> anyhow::Result<()> {
    if matches!(args.split, Split::Train) {
        bail!(
            "--probe is scored on dev and test only (it is fitted on train): give --split dev or test"
        );
    }
    if args.scoring.limit.is_some() {
        bail!("--probe scores whole splits: --limit does not apply to it");
    }
    Ok(())
}

pub fn eval(config: &Config, args: EvalArgs) -> anyhow::Result<()> {
    if args.probe {
        refuse_unscored_probe(&args)?;
    }
    if args.det.is_some() && args.task.is_none() {
        bail!("--det decodes a --task's z through another DET: give --task, or leave --det out");
    }
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
        let task = load_task(path, &subspace, &config.task_limits()?)?;
        let det = args.det.unwrap_or(task.det);
        let scored = score_through(
            &encoder,
            &subspace,
            &tasks,
            &task,
            &[det],
            args.split,
            limit,
        )?;
        (Some(det), scored[0])
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
    if matches!(args.split, Split::Train) {
        bail!("transfer scores a tuned z on data it was not tuned on: give --split dev or test");
    }
    let encoder = args.scoring.encoder(config)?;
    let subspace = args.scoring.subspace(config, &encoder)?;
    let tasks = args.scoring.task(&encoder)?;
    let limit = args.scoring.limit;
    let task = load_task(&args.task, &subspace, &config.task_limits()?)?;
    let scored = score_through(
        &encoder,
        &subspace,
        &tasks,
        &task,
        &DetKind::ALL,
        args.split,
        limit,
    )?;
    for (target_det, scores) in DetKind::ALL.into_iter().zip(scored) {
        lines::print(&TransferLine {
            task: tasks[0].data.name.clone(),
            source_det: task.det,
            target_det,
            split: args.split,
            scores,
        })?;
    }
    Ok(())
}

/// A task file's z (and head) scored on the `split` of `data` (one task) through each of `dets`.
fn score_through(
    encoder: &Encoder,
    subspace: &Subspace,
    data: &[TrainTask],
    task: &Task,
    dets: &[DetKind],
    split: Split,
    limit: Option<usize>,
) -> anyhow::Result<Vec<Scores>> {
    check_labels_match(task, &data[0])?;
    let units: Vec<Unit> = dets.iter().map(|&det| Unit::new(0, det)).collect();
    let (head, values) = HeadTuning::task_values(task, &data[0].descriptions)?;
    let space = Space::Subspace {
        subspace,
        head,
        train_z: true,
    };
    let values = vec![values; units.len()];
    evaluate_values(encoder, data, &units, &space, &values, split, limit)
}

/// A task file scored on `data` must have the data's labels, with the same descriptions in the
/// same order: otherwise its head and z would be scored against other labels.
pub(super) fn check_labels_match(task: &Task, data: &TrainTask) -> anyhow::Result<()> {
    let labels = &data.data.labels;
    if task.labels != *labels {
        let names = |labels: &[Label]| {
            let names: Vec<&str> = labels.iter().map(|label| label.name.as_str()).collect();
            names.join(", ")
        };
        bail!(
            "{}: the task's labels ({}) are not the data's ({}) with the same descriptions in the \
             same order: its head and z would be scored against other labels",
            task.name,
            names(&task.labels),
            names(labels)
        );
    }
    Ok(())
}
