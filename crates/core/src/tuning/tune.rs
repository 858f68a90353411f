//! Stage 2: only z is trained, through one DET's frozen U (paper §3). Gradient optimizers use
//! the exact d loss/d z of the gradient graph; CMA-ES is derivative-free (BBT-style) and scores
//! a whole population in one encoder run (rows = candidates × minibatch). With a [`Trace`],
//! both also score their current z every few steps and log accuracy against optimization time.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use ndarray::{Array1, Array2, Axis};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::batch::{EncodedRows, Row, TrainTask, row_losses};
use super::data::{Split, minibatch};
use super::eval::Scores;
use super::fit::{
    FitOptions, Schedule, Space, StepReport, Training, Unit, evaluate_values, fit_observed,
    is_first_start,
};
use super::head::HeadTuning;
use super::optim::CmaEs;
use super::progress::Progress;
use crate::det::DetKind;
use crate::model::{Encoder, TextInput};
use crate::subspace::{Subspace, values_sha256};
use crate::task::Head;

/// The code found for one task, with its scores through the DET it was found with.
#[derive(Debug, Clone)]
pub struct Tuned {
    pub task: usize,
    pub det: DetKind,
    pub z: Vec<f32>,
    /// The head tuned with z, if one was asked for.
    pub head: Option<Head>,
    /// Which of the target's starts z was tuned from (CMA-ES: 0, its own mean).
    pub start: usize,
    /// The upstream code [`Start::Upstream`] chose for the task, if the target has that start.
    pub upstream: Option<UpstreamChoice>,
    pub dev: Scores,
    pub test: Scores,
    /// The dev score of every unit the task was tuned as; `det` and `start` are the best's.
    pub candidates: Vec<Candidate>,
    /// Wall time of the search (all tasks of the run share it), the choice of upstream codes
    /// included.
    pub seconds: f64,
}

impl Tuned {
    /// How output lines and job results name start `index` of the target's `starts` for this
    /// task: "normal", or "upstream:TASK" with the code chosen for it; None for given values,
    /// which only the caller can name (by their file, say).
    pub fn start_name(&self, starts: &[Start<'_>], index: usize) -> Option<String> {
        match (starts[index], &self.upstream) {
            (Start::Normal, _) => Some("normal".to_string()),
            (Start::Upstream, Some(chosen)) => Some(format!("upstream:{}", chosen.task)),
            _ => None,
        }
    }

    /// The best dev accuracy over the DETs of each start the task was tuned from, by the start's
    /// name (`name` of its index: [`Tuned::start_name`], or the caller's name for given values).
    pub fn dev_by_start(&self, name: impl Fn(usize) -> String) -> BTreeMap<String, f32> {
        let mut best = BTreeMap::new();
        for candidate in &self.candidates {
            let accuracy = best
                .entry(name(candidate.start))
                .or_insert(candidate.dev.accuracy);
            *accuracy = accuracy.max(candidate.dev.accuracy);
        }
        best
    }
}

/// One unit of a task's tuning, a DET from a start, with its dev score.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub det: DetKind,
    pub start: usize,
    pub dev: Scores,
}

/// Where stage 2 starts z.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Start<'a> {
    /// The paper's N(0, 0.02²), seeded per task.
    Normal,
    /// These values: another task's z (a warm start, such as an upstream task's code).
    Values(&'a [f32]),
    /// The code of the upstream task (among those the subspace carries) whose label descriptions
    /// are nearest to the task's: the largest cosine between the mean embeddings of the two
    /// tasks' descriptions (frozen model), the first of equals. A warm start from the nearest
    /// upstream task, chosen without a labelled example: a choice on a few-shot task's own
    /// examples is mostly their draw, and dev then judges the chosen start without bias when the
    /// target also tunes from [`Start::Normal`] (docs/RESULTS.md, "A warm start").
    Upstream,
}

impl Start<'static> {
    /// The start a word names, as `tune --init` and a tune job's `init` take them: "normal" or
    /// "upstream".
    pub fn named(word: &str) -> Option<Self> {
        match word {
            "normal" => Some(Start::Normal),
            "upstream" => Some(Start::Upstream),
            _ => None,
        }
    }
}

impl Start<'_> {
    /// The start's name in checkpoints: "normal", the values' digest, or "upstream by labels" and
    /// the digests of every code it chooses from and of their descriptions (a checkpoint from
    /// when the choice was made on examples, "upstream" or "upstream on train", is refused rather
    /// than resumed from another code).
    fn name(&self, subspace: &Subspace) -> String {
        match self {
            Start::Normal => "normal".to_string(),
            Start::Values(values) => digest(values),
            Start::Upstream => {
                let codes = subspace.codes();
                let z = codes.map(|c| c.z.concat()).unwrap_or_default();
                let descriptions = codes.and_then(|c| c.descriptions.as_ref());
                let texts = serde_json::to_string(&descriptions).expect("texts serialize");
                let texts = format!("{:x}", Sha256::digest(texts.as_bytes()));
                format!("upstream by labels {}, labels {}", digest(&z), &texts[..12])
            }
        }
    }
}

/// The upstream code chosen for a task: the upstream task's name and the cosine between the two
/// tasks' mean label-description embeddings.
#[derive(Debug, Clone)]
pub struct UpstreamChoice {
    pub task: String,
    pub similarity: f32,
}

/// The paper's init for z: N(0, 0.02²), seeded per task.
fn initial_z(d: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.02).expect("finite std. This is a bug.");
    (0..d).map(|_| normal.sample(&mut rng)).collect()
}

/// A start's name in checkpoints: "z" and the first 12 hex digits of its values' SHA-256.
fn digest(values: &[f32]) -> String {
    format!("z {}", &values_sha256(values)[..12])
}

/// Stage 2's schedule, for `deltaspace tune` and the server's tune jobs alike: a learning rate
/// that moves z (its init is N(0, 0.02²)), and early stopping on dev, so that a task stops when
/// it stops improving rather than after a fixed budget. The patience is long because dev
/// accuracy on a whole training set rises slowly under swings of up to 13 points: a patience of 4
/// stopped mrpc at step 125 (Adapter) and 300 (LoRA), and it went on to gain 7 to 9 points of dev
/// by step 1,000 (`scripts/replay_patience.py docs/results/screen-schedule-trace.jsonl`).
pub const TUNING: Schedule = Schedule {
    steps: 1000,
    lr: 0.05,
    eval_every: 25,
    patience: 12,
};

/// CMA-ES's schedule: stage 2's, with the 500 generations it has always had by default.
pub const CMAES: Schedule = Schedule {
    steps: 500,
    ..TUNING
};

/// What stage 2 tunes for each task.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The DETs to tune through; each task keeps the one that scores best on dev.
    pub dets: &'a [DetKind],
    /// The head trained with z.
    pub head: HeadTuning,
    /// False: z stays 0 and only the head trains (with LoRA, whose θ⁰ is a no-op, that is a
    /// head on the frozen model).
    pub train_z: bool,
    /// Where z starts: every task is tuned through every DET from each start, and keeps the
    /// (DET, start) that scores best on dev, the first of equals. More than one start is a
    /// guarded warm start: [`Start::Normal`] and an upstream task's code, say.
    pub starts: &'a [Start<'a>],
}

impl Target<'static> {
    /// What stage 2 tunes unless told otherwise: z and a prototypes head together, through every
    /// DET, each task keeping the DET that scores best on dev. Its starts are N(0, 0.02²) alone;
    /// `tune` and tune jobs start from [`default_starts`] unless told otherwise.
    pub const DEFAULT: Self = Self {
        dets: &DetKind::ALL,
        head: HeadTuning::Prototypes,
        train_z: true,
        starts: &[Start::Normal],
    };
}

/// Something shown every step of a run (a server's tune job shows its progress this way); an
/// error it returns ends the run with that error.
pub type Watch<'w> = &'w mut dyn FnMut(StepReport<'_>) -> anyhow::Result<()>;

/// Gradient tuning of z, and of the head the target asks for, for every task through each DET
/// of the target from each of its starts, all (task, DET, start) units in shared runs; each task
/// keeps the unit that scores best on dev. A head starts at the descriptions with zero biases.
/// With `trace`, every unit's current values are scored between steps (that time is left out of
/// `seconds`); `watch` sees every step.
pub fn tune_gradient(
    encoder: &Encoder,
    subspace: &Subspace,
    tasks: &[TrainTask],
    target: Target<'_>,
    options: &FitOptions,
    mut trace: Option<&mut Trace>,
    mut watch: Option<Watch<'_>>,
) -> anyhow::Result<Vec<Tuned>> {
    anyhow::ensure!(!target.dets.is_empty(), "tune through at least one DET");
    check_starts(target, subspace)?;
    // A checkpoint names the starts it was written from (none: the seeded default alone).
    let names: Vec<String> = target.starts.iter().map(|s| s.name(subspace)).collect();
    let options = &FitOptions {
        start: (target.starts != [Start::Normal]).then(|| names.join(" + ")),
        ..options.clone()
    };
    let units: Vec<Unit> = (0..target.starts.len())
        .flat_map(|start| {
            (0..tasks.len()).flat_map(move |task| {
                target
                    .dets
                    .iter()
                    .map(move |&det| Unit { task, det, start })
            })
        })
        .collect();
    let (head, dets) = (target.head, target.dets);
    let space = Space::Subspace {
        subspace,
        head,
        train_z: target.train_z,
    };
    // Per task, the upstream code it starts from (when a start asks for one).
    let choosing = Instant::now();
    let upstream = if target.starts.contains(&Start::Upstream) {
        choose_upstream(encoder, subspace, tasks)?
    } else {
        Vec::new()
    };
    let choosing = choosing.elapsed().as_secs_f64();
    let init = initial_values(
        encoder,
        subspace,
        tasks,
        &units,
        target,
        &upstream,
        options.seed,
    );
    let mut observe = |report: StepReport<'_>| -> anyhow::Result<()> {
        if let Some(watch) = watch.as_deref_mut() {
            watch(report)?;
        }
        match trace.as_deref_mut() {
            Some(trace) => trace.observe(encoder, tasks, &units, &space, report, options),
            None => Ok(()),
        }
    };
    let det_names: Vec<String> = dets.iter().map(ToString::to_string).collect();
    let label = match target.starts.len() {
        1 => format!("tune {}", det_names.join("+")),
        n => format!("tune {} from {n} starts", det_names.join("+")),
    };
    let training = Training {
        encoder,
        tasks,
        units: &units,
        space,
    };
    let result = fit_observed(training, init, options, &label, &mut observe)?;
    let mut tuned = finish(
        encoder,
        space,
        tasks,
        &units,
        result.best,
        result.seconds,
        options.final_limit,
    )?;
    for tuned in &mut tuned {
        tuned.upstream = upstream.get(tuned.task).map(|start| start.choice.clone());
        tuned.seconds += choosing;
    }
    Ok(tuned)
}

/// Every unit's values as it starts: z from its start, then the head's parameters at 0 (the
/// descriptions, zero biases). Every DET of a task starts from the same z within a start, so the
/// choice among them compares DETs, not inits.
fn initial_values(
    encoder: &Encoder,
    subspace: &Subspace,
    tasks: &[TrainTask],
    units: &[Unit],
    target: Target<'_>,
    upstream: &[UpstreamStart],
    seed: u64,
) -> Vec<Vec<f32>> {
    let (d, hidden) = (subspace.d(), encoder.manifest().hidden());
    let values = |unit: &Unit| {
        let mut values = match (target.train_z, target.starts[unit.start]) {
            (false, _) => vec![0.0; d],
            (true, Start::Values(start)) => start.to_vec(),
            (true, Start::Normal) => initial_z(d, seed.wrapping_add(unit.task as u64)),
            (true, Start::Upstream) => upstream[unit.task].z.clone(),
        };
        let head = target.head.len(tasks[unit.task].descriptions.len(), hidden);
        values.resize(values.len() + head, 0.0);
        values
    };
    units.iter().map(values).collect()
}

/// An upstream code chosen for a task, and why.
struct UpstreamStart {
    z: Vec<f32>,
    choice: UpstreamChoice,
}

/// Per task, the code of the upstream task whose label descriptions are nearest to its own
/// ([`Start::Upstream`]).
fn choose_upstream(
    encoder: &Encoder,
    subspace: &Subspace,
    tasks: &[TrainTask],
) -> anyhow::Result<Vec<UpstreamStart>> {
    let codes = subspace
        .codes()
        .context("a start from upstream needs the subspace's upstream codes")?;
    let descriptions = codes
        .descriptions
        .as_ref()
        .context("a start from upstream needs the upstream tasks' label descriptions")?;
    let upstream = descriptions
        .iter()
        .map(|texts| {
            let inputs: Vec<TextInput> = texts.iter().cloned().map(TextInput::single).collect();
            Ok(mean_direction(&encoder.embed_frozen(&inputs)?))
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .context("embedding the upstream tasks' label descriptions")?;
    let choose = |task: &TrainTask| {
        let own = mean_direction(&task.descriptions.prototypes);
        let cosines: Vec<f32> = upstream.iter().map(|u| u.dot(&own)).collect();
        // The first of equals, as everywhere a choice is made.
        let best = (0..cosines.len())
            .rev()
            .max_by(|&a, &b| cosines[a].total_cmp(&cosines[b]))
            .expect("a subspace's codes are never empty. This is a bug.");
        UpstreamStart {
            z: codes.z[best].clone(),
            choice: UpstreamChoice {
                task: codes.tasks[best].clone(),
                similarity: cosines[best],
            },
        }
    };
    Ok(tasks.iter().map(choose).collect())
}

/// The unit-norm mean of embeddings' rows (each unit-norm): a task's direction.
fn mean_direction(embeddings: &Array2<f32>) -> Array1<f32> {
    let mean = embeddings.mean_axis(Axis(0)).expect("a task has labels");
    let norm = mean.dot(&mean).sqrt().max(1e-12);
    mean / norm
}

/// Where z starts unless told otherwise (`tune` without `--init`, a tune job without `init`):
/// the guarded warm start, [`Start::Normal`] and [`Start::Upstream`], each task keeping the
/// better on dev, where `subspace` can choose an upstream code and z trains; [`Start::Normal`]
/// alone elsewhere (a random subspace, one without described codes, the head alone). At k = 16
/// the guarded start led the cold one by 2.6 points of mean test accuracy on the 5 unseen tasks
/// over 3 seeds, for twice the units (docs/RESULTS.md, "A warm start").
pub fn default_starts(subspace: &Subspace, train_z: bool) -> &'static [Start<'static>] {
    const GUARDED: &[Start<'static>] = &[Start::Normal, Start::Upstream];
    if train_z && upstream_unavailable(GUARDED, subspace).is_none() {
        GUARDED
    } else {
        &[Start::Normal]
    }
}

/// Why `starts` cannot start in `subspace`, if they cannot: [`Start::Upstream`] is among them and
/// the subspace carries no upstream codes, or none of their label descriptions.
pub fn upstream_unavailable(starts: &[Start<'_>], subspace: &Subspace) -> Option<String> {
    if !starts.contains(&Start::Upstream) {
        return None;
    }
    let id = subspace.id();
    match subspace.codes() {
        None => Some(format!(
            "subspace {id} carries no upstream codes to start from (a random subspace, or one made \
             before subspaces carried them: `deltaspace train subspace` makes it again with them)"
        )),
        Some(codes) if codes.descriptions.is_none() => Some(format!(
            "subspace {id} carries no label descriptions of its upstream tasks to choose a code by \
             (made before subspaces carried them: `deltaspace train subspace` with the flags that \
             made it and `--data-root DIR --steps 0` makes it again with them, and the same id)"
        )),
        Some(_) => None,
    }
}

/// Whether `target`'s starts can be tuned in `subspace`.
fn check_starts(target: Target<'_>, subspace: &Subspace) -> anyhow::Result<()> {
    let (starts, d) = (target.starts, subspace.d());
    if let Some(reason) = upstream_unavailable(starts, subspace) {
        anyhow::bail!(reason);
    }
    anyhow::ensure!(!starts.is_empty(), "tune from at least one start");
    for (index, start) in starts.iter().enumerate() {
        anyhow::ensure!(
            !starts[..index].contains(start),
            "start {} repeats start {} (the same z)",
            index + 1,
            starts[..index]
                .iter()
                .position(|s| s == start)
                .map_or(0, |i| i + 1)
        );
        if let Start::Values(values) = start {
            anyhow::ensure!(
                values.len() == d,
                "a start for z needs d = {d} values; start {} has {}",
                index + 1,
                values.len()
            );
        }
    }
    anyhow::ensure!(
        target.train_z || starts == [Start::Normal],
        "a start for z needs z to train"
    );
    Ok(())
}

/// How CMA-ES searches.
#[derive(Debug, Clone)]
pub struct CmaOptions {
    /// Generations (one encoder run each).
    pub generations: usize,
    /// Population λ (0: 4 + ⌊3 ln d⌋).
    pub population: usize,
    /// Training examples each candidate is scored on per generation.
    pub batch: usize,
    /// Initial step size σ.
    pub sigma: f64,
    pub eval_every: usize,
    pub eval_limit: Option<usize>,
    /// Examples per task in the final dev and test scores (None: all).
    pub final_limit: Option<usize>,
    pub seed: u64,
}

/// CMA-ES over z for every task through `det`; each generation is one encoder run per task.
pub fn tune_cmaes(
    encoder: &Encoder,
    subspace: &Subspace,
    tasks: &[TrainTask],
    det: DetKind,
    options: &CmaOptions,
    mut trace: Option<&mut Trace>,
) -> anyhow::Result<Vec<Tuned>> {
    let started = Instant::now();
    let d = subspace.d();
    let space = Space::Subspace {
        subspace,
        head: HeadTuning::None,
        train_z: true,
    };
    let mut best = Vec::new();
    for (task_index, task) in tasks.iter().enumerate() {
        let unit = [Unit::new(task_index, det)];
        let mut search = CmaEs::new(
            &initial_z(d, options.seed.wrapping_add(task_index as u64)),
            options.sigma,
            options.population,
            options.seed,
        );
        let mut best_z = search.mean();
        let mut best_accuracy = -1.0;
        let progress = Progress::new(
            &format!("cmaes {} {det}", task.data.name),
            options.generations as u64,
        );
        let lambda = search.lambda();
        // Seconds of this task's search, evaluations excluded.
        let mut optimizing = Duration::ZERO;
        if let Some(trace) = trace.as_deref_mut() {
            let mean = [search.mean()];
            trace.record(encoder, tasks, &unit, &space, &mean, Position::START)?;
        }
        for generation in 0..options.generations {
            let generation_started = Instant::now();
            let candidates = search.ask();
            let train = &task.data.train;
            let picks = minibatch(
                train.len(),
                options.seed,
                task_index,
                generation,
                options.batch,
            );
            let rows: Vec<Row> = candidates
                .iter()
                .flat_map(|z| {
                    picks.iter().map(move |&i| Row {
                        task: task_index,
                        example: &train[i],
                        det,
                        z,
                        weight: 1.0,
                        classes: &task.descriptions,
                    })
                })
                .collect();
            let encoded = EncodedRows::new(encoder, &rows, d)?;
            let embeddings = encoder.embed(encoded.batch(), subspace.params())?;
            let per_row = row_losses(embeddings.view(), &rows, encoder.manifest().logit_scale);
            let losses: Vec<f32> = per_row
                .chunks(picks.len())
                .map(|c| c.iter().sum::<f32>() / c.len().max(1) as f32)
                .collect();
            search.tell(&losses);
            optimizing += generation_started.elapsed();
            let done = generation + 1;
            let mean_loss = losses.iter().sum::<f32>() / losses.len() as f32;
            if done.is_multiple_of(options.eval_every.max(1)) || done == options.generations {
                let mean = search.mean();
                let dev = evaluate_values(
                    encoder,
                    tasks,
                    &unit,
                    &space,
                    std::slice::from_ref(&mean),
                    Split::Dev,
                    options.eval_limit,
                )?;
                if dev[0].accuracy > best_accuracy {
                    best_accuracy = dev[0].accuracy;
                    best_z = mean;
                }
                progress.report(done as u64, mean_loss, Some(dev[0].accuracy));
            } else {
                progress.report(done as u64, mean_loss, None);
            }
            if let Some(trace) = trace
                .as_deref_mut()
                .filter(|t| t.due(done, options.generations))
            {
                // The mean is CMA-ES's current solution, as z is Adam's.
                let mean = [search.mean()];
                let at = Position {
                    step: done,
                    optimizing,
                    evaluations: done * lambda,
                    examples: done * lambda * picks.len(),
                };
                trace.record(encoder, tasks, &unit, &space, &mean, at)?;
            }
        }
        progress.finish();
        best.push(best_z);
    }
    let units: Vec<Unit> = (0..tasks.len()).map(|task| Unit::new(task, det)).collect();
    // The search's wall time, as without a trace: its scoring is left out.
    let scoring = trace.map_or(Duration::ZERO, |t| t.scoring);
    let seconds = started.elapsed().saturating_sub(scoring);
    finish(
        encoder,
        space,
        tasks,
        &units,
        best,
        seconds.as_secs_f64(),
        options.final_limit,
    )
}

/// Full dev scores of every unit; per task, the unit with the best dev accuracy (the first of
/// equals: the earlier start, then the earlier DET), with its test score.
fn finish(
    encoder: &Encoder,
    space: Space<'_>,
    tasks: &[TrainTask],
    units: &[Unit],
    best: Vec<Vec<f32>>,
    seconds: f64,
    limit: Option<usize>,
) -> anyhow::Result<Vec<Tuned>> {
    let dev = evaluate_values(encoder, tasks, units, &space, &best, Split::Dev, limit)?;
    let mut chosen: Vec<usize> = Vec::new();
    for (index, unit) in units.iter().enumerate() {
        match chosen.iter_mut().find(|c| units[**c].task == unit.task) {
            Some(current) if dev[index].accuracy > dev[*current].accuracy => *current = index,
            Some(_) => {}
            None => chosen.push(index),
        }
    }
    let chosen_units: Vec<Unit> = chosen.iter().map(|&i| units[i]).collect();
    let chosen_values: Vec<Vec<f32>> = chosen.iter().map(|&i| best[i].clone()).collect();
    let test = evaluate_values(
        encoder,
        tasks,
        &chosen_units,
        &space,
        &chosen_values,
        Split::Test,
        limit,
    )?;
    chosen
        .iter()
        .zip(chosen_values)
        .zip(test)
        .map(|((&index, mut values), test)| {
            let unit = units[index];
            let d = space.len(unit.det, encoder)?;
            let head = space
                .head()
                .head(&tasks[unit.task].descriptions, &values[d..]);
            values.truncate(d);
            let candidates = units
                .iter()
                .zip(&dev)
                .filter(|(other, _)| other.task == unit.task)
                .map(|(other, &dev)| Candidate {
                    det: other.det,
                    start: other.start,
                    dev,
                })
                .collect();
            Ok(Tuned {
                task: unit.task,
                det: unit.det,
                z: values,
                head,
                start: unit.start,
                upstream: None,
                dev: dev[index],
                test,
                candidates,
                seconds,
            })
        })
        .collect()
}

/// Where and how often `tune --trace` scores the current z.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    /// JSON lines file, appended to.
    pub path: PathBuf,
    /// Score every this many steps (generations), and at step 0 and the last step.
    pub every: usize,
    pub split: Split,
    /// Examples per task scored (None: the whole split).
    pub limit: Option<usize>,
}

/// Accuracy over optimization time: one JSON line per task at step 0 and every `every` steps.
/// Seconds count optimizer steps only (encoder runs on training rows and updates), never the
/// evaluations; gradient optimizers tune all tasks of a run in shared encoder runs, so their
/// seconds are the run's, while CMA-ES times each task on its own.
pub struct Trace {
    options: TraceOptions,
    optimizer: String,
    file: File,
    /// Wall time spent scoring so far, which the search's own seconds leave out.
    scoring: Duration,
}

/// How far a search has gone when the trace scores it (per task).
#[derive(Debug, Clone, Copy)]
struct Position {
    step: usize,
    /// Time in optimizer steps so far.
    optimizing: Duration,
    /// Adam, Adafactor: training examples through the gradient graph; CMA-ES: candidates scored.
    evaluations: usize,
    /// Training examples through the encoder (CMA-ES: candidates × minibatch).
    examples: usize,
}

impl Position {
    const START: Self = Self {
        step: 0,
        optimizing: Duration::ZERO,
        evaluations: 0,
        examples: 0,
    };
}

/// One line of the trace file.
#[derive(Serialize)]
struct TracePoint<'a> {
    task: &'a str,
    det: DetKind,
    /// Which of the run's starts (`tune --init`, in order) the unit trains from; left out for
    /// the first, so that a run with one start traces as before starts.
    #[serde(skip_serializing_if = "is_first_start")]
    start: usize,
    optimizer: &'a str,
    step: usize,
    seconds: f64,
    evaluations: usize,
    examples: usize,
    split: Split,
    n: usize,
    accuracy: f32,
    macro_f1: f32,
}

impl Trace {
    /// Opens (appends to) the trace file of a run with `optimizer`.
    pub fn open(options: TraceOptions, optimizer: &str) -> anyhow::Result<Self> {
        if let Some(dir) = options.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = File::options()
            .create(true)
            .append(true)
            .open(&options.path)
            .with_context(|| format!("opening {}", options.path.display()))?;
        Ok(Self {
            options,
            optimizer: optimizer.to_string(),
            file,
            scoring: Duration::ZERO,
        })
    }

    fn due(&self, step: usize, last: usize) -> bool {
        step.is_multiple_of(self.options.every.max(1)) || step == last
    }

    /// Scores a gradient run's units (tasks through DETs in `space`) when `report` is due: at
    /// step 0, every `every` steps, and at the last step, including that of a run that stops
    /// early. What [`fit_observed`]'s observer calls, for stage 2 and stage 0 alike.
    pub fn observe(
        &mut self,
        encoder: &Encoder,
        tasks: &[TrainTask],
        units: &[Unit],
        space: &Space<'_>,
        report: StepReport<'_>,
        options: &FitOptions,
    ) -> anyhow::Result<()> {
        // A run that stops early ends its trace at its last step, unless that step was due anyway.
        if self.due(report.step, options.steps) == report.stopped {
            return Ok(());
        }
        let at = Position {
            step: report.step,
            optimizing: report.optimizing,
            evaluations: report.step * options.batch,
            examples: report.step * options.batch,
        };
        self.record(encoder, tasks, units, space, report.values, at)
    }

    /// Scores `values` (one z per unit) and appends a line per unit.
    fn record(
        &mut self,
        encoder: &Encoder,
        tasks: &[TrainTask],
        units: &[Unit],
        space: &Space<'_>,
        values: &[Vec<f32>],
        at: Position,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let split = self.options.split;
        let metrics = evaluate_values(
            encoder,
            tasks,
            units,
            space,
            values,
            split,
            self.options.limit,
        )?;
        let mut lines = String::new();
        for (unit, metrics) in units.iter().zip(metrics) {
            let point = TracePoint {
                task: &tasks[unit.task].data.name,
                det: unit.det,
                start: unit.start,
                optimizer: &self.optimizer,
                step: at.step,
                seconds: at.optimizing.as_secs_f64(),
                evaluations: at.evaluations,
                examples: at.examples,
                split,
                n: metrics.n,
                accuracy: metrics.accuracy,
                macro_f1: metrics.macro_f1,
            };
            lines += &serde_json::to_string(&point)?;
            lines.push('\n');
        }
        self.file
            .write_all(lines.as_bytes())
            .with_context(|| format!("writing {}", self.options.path.display()))?;
        self.scoring += started.elapsed();
        Ok(())
    }
}
