//! The training loop every gradient stage shares. A *unit* is one task decoded through one DET;
//! each unit owns a parameter vector: δ = θ − θ⁰ in the original space (stage 0) or the code z
//! in a frozen subspace, followed by its head's parameters when one is tuned (stage 2; see
//! [`super::head`]). All units train together: every step draws rows of every
//! unit into shared encoder runs, each unit's loss is its rows' mean, and each unit gets exactly
//! its own gradient back.
//!
//! Both spaces use the z-graph with one-hot codes: U_det's column j holds δ of the j-th unit of
//! that DET, so θ = base + U e_j = base + δ_j and d loss/d U[:, j] is unit j's gradient. The
//! original space trains δ itself (base = θ⁰); a subspace decodes δ = U z on the host, once per
//! unit and step, and takes z's gradient as Uᵀ (d loss/d δ), so the graph's cost does not grow
//! with d (decoded in the graph, every row paid for all of U: 4× the step time at d = 1,024).
//! One graph, one run, many tasks, no re-export.

mod state;

use std::cell::Cell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use ndarray::{Array1, Array2, ArrayView1, Axis};
use serde::Serialize;

use super::batch::{self, Row, TrainTask};
use super::data::{Split, minibatch};
use super::eval::{self, Scores};
use super::head::HeadTuning;
use super::optim::OptimizerKind;
use super::progress::Progress;
use crate::classifier::Classes;
use crate::det::{DetKind, Theta0};
use crate::model::{DeltaParams, DetParams, Encoder};
use crate::subspace::Subspace;
use state::{FitState, Run, Spent};

/// What the units' parameters mean.
#[derive(Clone, Copy)]
pub enum Space<'a> {
    /// Each unit trains δ (length D of its DET): θ = θ⁰ + δ.
    Original { theta0: &'a Theta0 },
    /// Each unit trains z (length d) through the subspace's frozen U, and the head `head` asks
    /// for after it. With `train_z` false, z keeps its initial value: only the head trains.
    Subspace {
        subspace: &'a Subspace,
        head: HeadTuning,
        train_z: bool,
    },
}

/// What a space makes of the units' values for one encoder run.
pub struct Realised {
    pub params: DeltaParams,
    /// Each unit's row code z.
    pub codes: Vec<Vec<f32>>,
    /// Each unit's classes when it tunes a head (None: its task's descriptions).
    pub classes: Vec<Option<Classes>>,
}

impl Realised {
    /// The classes unit `index` (of task `task`) is scored against.
    pub fn classes_of<'a>(&'a self, index: usize, task: &'a TrainTask) -> &'a Classes {
        self.classes[index].as_ref().unwrap_or(&task.descriptions)
    }
}

/// A task trained through a DET, from one of the run's starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Unit {
    pub task: usize,
    pub det: DetKind,
    /// Which of stage 2's starts for z the unit trains from (0 wherever a run has one start,
    /// which checkpoints leave out, so that their unit lists read as before starts).
    #[serde(skip_serializing_if = "is_first_start")]
    pub start: usize,
}

impl Unit {
    /// `task` through `det` from the run's first (or only) start.
    pub fn new(task: usize, det: DetKind) -> Self {
        Self {
            task,
            det,
            start: 0,
        }
    }
}

/// Whether a unit's start is the run's first, which its serialized forms leave out.
pub(crate) fn is_first_start(start: &usize) -> bool {
    *start == 0
}

/// How long and how fast a run trains, the part of [`FitOptions`] that differs between stages.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub steps: usize,
    pub lr: f32,
    pub eval_every: usize,
    /// Evaluations without improvement before a unit stops, or a perfect dev accuracy
    /// (0: never).
    pub patience: usize,
}

/// Training rows per unit per step, unless a command says otherwise.
pub const BATCH: usize = 16;

/// Rows per encoder run, unless a command says otherwise.
pub const RUN_ROWS: usize = 64;

/// How to train.
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// Optimizer steps.
    pub steps: usize,
    /// Training rows per unit per step.
    pub batch: usize,
    pub lr: f32,
    pub optimizer: OptimizerKind,
    /// Evaluate on dev (and checkpoint) every this many steps, and at the end.
    pub eval_every: usize,
    /// Early stopping: a unit stops training once this many evaluations in a row have not
    /// improved its dev accuracy, or once that accuracy is perfect; the run ends when every unit
    /// has stopped (None: never stop).
    pub patience: Option<usize>,
    /// Dev examples per unit in those evaluations (None: all).
    pub eval_limit: Option<usize>,
    /// Rows per encoder run; a step's rows are split into runs and their gradients summed.
    pub run_rows: usize,
    pub seed: u64,
    /// Checkpoint file: written at every evaluation, resumed from when it exists.
    pub checkpoint: Option<PathBuf>,
    /// Examples per unit in the final dev and test scores (None: all).
    pub final_limit: Option<usize>,
    /// Wall-clock budget in seconds: the first step that ends past it is evaluated and ends the
    /// run (None: no limit). The final scores come after it.
    pub max_seconds: Option<f64>,
    /// What the values start from when it is not the seeded default (stage 2 names a warm
    /// start's z by its digest): part of the run a checkpoint must have been written by.
    pub start: Option<String>,
}

impl FitOptions {
    /// `schedule` with what every stage shares unless told otherwise: Adam, [`BATCH`] rows per
    /// unit per step, [`RUN_ROWS`] rows per run, whole dev and test splits, no checkpoint, no
    /// time limit.
    pub fn new(schedule: Schedule, seed: u64) -> Self {
        Self {
            steps: schedule.steps,
            batch: BATCH,
            lr: schedule.lr,
            optimizer: OptimizerKind::Adam,
            eval_every: schedule.eval_every,
            patience: (schedule.patience > 0).then_some(schedule.patience),
            eval_limit: None,
            run_rows: RUN_ROWS,
            seed,
            checkpoint: None,
            final_limit: None,
            max_seconds: None,
            start: None,
        }
    }
}

/// What training found, per unit.
#[derive(Debug, Clone)]
pub struct FitResult {
    /// The parameters with the best dev accuracy.
    pub best: Vec<Vec<f32>>,
    pub best_dev: Vec<Scores>,
    pub best_step: Vec<usize>,
    /// (step, mean training loss over the units still training) at every step.
    pub losses: Vec<(usize, f32)>,
    pub seconds: f64,
}

impl Space<'_> {
    /// Length of one unit's δ or z (without its head).
    pub fn len(&self, det: DetKind, encoder: &Encoder) -> anyhow::Result<usize> {
        Ok(match self {
            Space::Original { .. } => encoder.manifest().dets[det.column(encoder.manifest())?].size,
            Space::Subspace { subspace, .. } => subspace.d(),
        })
    }

    /// The space in words, recorded in checkpoints so a run resumes only its own.
    pub fn describe(&self) -> String {
        match self {
            Space::Original { theta0 } => format!("original space θ⁰ {}", &theta0.digest()[..12]),
            Space::Subspace {
                subspace,
                head,
                train_z,
            } => format!("subspace {} head {head} train_z {train_z}", subspace.id()),
        }
    }

    /// What of the head trains (none in the original space).
    pub fn head(&self) -> HeadTuning {
        match self {
            Space::Original { .. } => HeadTuning::None,
            Space::Subspace { head, .. } => *head,
        }
    }

    /// The encoder inputs that realise `values`, each unit's row code z and its classes.
    pub fn realise(
        &self,
        encoder: &Encoder,
        tasks: &[TrainTask],
        units: &[Unit],
        values: &[Vec<f32>],
    ) -> anyhow::Result<Realised> {
        match self {
            Space::Subspace { subspace, head, .. } => {
                let d = subspace.d();
                let classes = units
                    .iter()
                    .zip(values)
                    .map(|(unit, value)| {
                        (*head != HeadTuning::None)
                            .then(|| head.classes(&tasks[unit.task].descriptions, &value[d..]))
                    })
                    .collect();
                let deltas = units
                    .iter()
                    .zip(values)
                    .map(|(unit, value)| {
                        let column = unit.det.column(encoder.manifest())?;
                        let u = &subspace.params().det(column).u;
                        Ok(u.dot(&ArrayView1::from(&value[..d])).to_vec())
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let bases = subspace.params().dets().iter().map(|det| &det.base);
                let (params, codes) = one_hot(encoder, bases.collect(), units, &deltas)?;
                Ok(Realised {
                    params,
                    codes,
                    classes,
                })
            }
            Space::Original { theta0 } => {
                let bases = (0..encoder.manifest().dets.len()).map(|c| theta0.det(c));
                let (params, codes) = one_hot(encoder, bases.collect(), units, values)?;
                Ok(Realised {
                    params,
                    codes,
                    classes: vec![None; units.len()],
                })
            }
        }
    }
}

/// Units through the z-graph by their δ (module docs): U_det's column j holds δ of the j-th unit
/// of that DET, base_det is `bases[det column]`, and that unit's code is e_j.
fn one_hot(
    encoder: &Encoder,
    bases: Vec<&Array1<f32>>,
    units: &[Unit],
    deltas: &[Vec<f32>],
) -> anyhow::Result<(DeltaParams, Vec<Vec<f32>>)> {
    let manifest = encoder.manifest();
    // Position of each unit among the units of its DET: its one-hot column.
    let mut counts = vec![0usize; manifest.dets.len()];
    let mut position = Vec::with_capacity(units.len());
    for unit in units {
        let column = unit.det.column(manifest)?;
        position.push(counts[column]);
        counts[column] += 1;
    }
    let d = counts.iter().copied().max().unwrap_or(1).max(1);
    let mut dets: Vec<DetParams> = manifest
        .dets
        .iter()
        .enumerate()
        .map(|(column, layout)| DetParams {
            u: Array2::zeros((layout.size, d)),
            base: bases[column].clone(),
        })
        .collect();
    let mut codes = Vec::with_capacity(units.len());
    for ((unit, &j), delta) in units.iter().zip(&position).zip(deltas) {
        let column = unit.det.column(manifest)?;
        dets[column]
            .u
            .column_mut(j)
            .assign(&ArrayView1::from(&delta[..]));
        let mut code = vec![0.0; d];
        code[j] = 1.0;
        codes.push(code);
    }
    Ok((DeltaParams::new(manifest, dets)?, codes))
}

/// Where a run of [`fit`] stands, shown to an observer ([`fit_observed`]).
#[derive(Debug, Clone, Copy)]
pub struct StepReport<'a> {
    /// Steps done (0 before the first).
    pub step: usize,
    /// Every unit's current parameters.
    pub values: &'a [Vec<f32>],
    /// Time in optimizer steps so far (encoder runs on training rows and updates), without the
    /// dev evaluations and the observer.
    pub optimizing: Duration,
    /// The step's mean training loss over the units still training (none before the first).
    pub loss: Option<f32>,
    /// Every unit's dev scores, when this step was evaluated.
    pub dev: Option<&'a [Scores]>,
    /// True for one last report when every unit has stopped early, before the step budget: the
    /// same step was reported before, when it was not yet known to be the last.
    pub stopped: bool,
}

/// What [`fit`] trains: units of tasks, decoded through DETs in a space, on an encoder.
#[derive(Clone, Copy)]
pub struct Training<'a> {
    pub encoder: &'a Encoder,
    pub tasks: &'a [TrainTask],
    pub units: &'a [Unit],
    pub space: Space<'a>,
}

/// Trains every unit from `init` and returns the best parameters on dev.
pub fn fit(
    training: Training<'_>,
    init: Vec<Vec<f32>>,
    options: &FitOptions,
    label: &str,
) -> anyhow::Result<FitResult> {
    fit_observed(training, init, options, label, &mut |_| Ok(()))
}

/// [`fit`], calling `observe` before the first step (unless the run resumes from a checkpoint,
/// whose step was observed before it was written) and after every step (after its evaluation,
/// when it has one). A unit never scored on dev (one stopped before its first evaluation)
/// shows `n` 0 there. Time spent in `observe` counts in neither [`FitResult::seconds`] nor
/// [`StepReport::optimizing`].
pub fn fit_observed(
    training: Training<'_>,
    init: Vec<Vec<f32>>,
    options: &FitOptions,
    label: &str,
    observe: &mut dyn FnMut(StepReport<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<FitResult> {
    // With no dev example every evaluation scores 0, and the first would be kept for good.
    if let Some(task) = training.tasks.iter().find(|t| t.data.dev.is_empty()) {
        anyhow::bail!(
            "task {}: its dev split has no examples, and dev chooses what training keeps",
            task.data.name
        );
    }
    let started = Instant::now();
    let observing = Cell::new(Duration::ZERO);
    let mut report =
        |step, values: &[Vec<f32>], optimizing, loss, dev: Option<&[Scores]>, stopped| {
            let observe_started = Instant::now();
            observe(StepReport {
                step,
                values,
                optimizing,
                loss,
                dev,
                stopped,
            })?;
            observing.set(observing.get() + observe_started.elapsed());
            anyhow::Ok(())
        };
    let run = Run::of(&training, options);
    let mut state = FitState::new(init, options);
    if let Some(path) = options.checkpoint.as_ref().filter(|p| p.is_file()) {
        state.resume(path, training.units, &run)?;
        tracing::info!(step = state.step, checkpoint = %path.display(), "resuming");
        if state.step > options.steps {
            tracing::warn!(
                step = state.step,
                steps = options.steps,
                "the checkpoint is past the step budget: the run ends with what it kept"
            );
        }
    }
    // Times count every segment of a resumed run.
    let before = state.spent_before;
    let mut optimizing = before.optimizing;
    let spent = |optimizing| Spent {
        seconds: before.seconds
            + started
                .elapsed()
                .saturating_sub(observing.get())
                .as_secs_f64(),
        optimizing,
    };
    let mut losses = Vec::new();
    let progress = Progress::new(label, options.steps as u64);
    progress.set_position(state.step as u64);
    // A resumed run's step was reported by the segment that wrote its checkpoint.
    if state.step == 0 {
        report(state.step, &state.values, optimizing, None, None, false)?;
    }
    while state.step < options.steps {
        let active = state.active(options.patience);
        if active.is_empty() {
            tracing::info!(step = state.step, "every unit has stopped early");
            report(state.step, &state.values, optimizing, None, None, true)?;
            break;
        }
        let step_started = Instant::now();
        let loss = train_step(&training, &mut state, &active, options)?;
        optimizing += step_started.elapsed();
        losses.push((state.step, loss));
        let out_of_time = options
            .max_seconds
            .is_some_and(|limit| started.elapsed().as_secs_f64() >= limit);
        let due = state.step.is_multiple_of(options.eval_every.max(1));
        if !(due || state.step == options.steps || out_of_time) {
            progress.report(state.step as u64, loss, None);
            report(
                state.step,
                &state.values,
                optimizing,
                Some(loss),
                None,
                false,
            )?;
            continue;
        }
        // A unit the step stopped (its values diverged) is not scored: its restored values
        // must not count as an improvement that trains it again.
        let active = state.active(options.patience);
        let dev = evaluate_dev(&training, &state, &active, options)?;
        state.record_dev(&active, &dev, options.patience, due);
        let scored: Vec<f32> = (dev.iter())
            .filter(|m| m.n > 0)
            .map(|m| m.accuracy)
            .collect();
        let mean_dev = scored.iter().sum::<f32>() / scored.len().max(1) as f32;
        progress.report(state.step as u64, loss, Some(mean_dev));
        report(
            state.step,
            &state.values,
            optimizing,
            Some(loss),
            Some(&dev),
            false,
        )?;
        // After the report, so that a resumed run, which does not report its first step again,
        // finds it reported.
        if let Some(path) = &options.checkpoint {
            state.write(path, training.units, &run, spent(optimizing))?;
        }
        if out_of_time {
            tracing::info!(step = state.step, "out of time: the run ends here");
            break;
        }
    }
    progress.finish();
    Ok(FitResult {
        best: state.best,
        best_dev: state.best_dev,
        best_step: state.best_step,
        losses,
        seconds: spent(optimizing).seconds,
    })
}

/// Every unit's dev scores: the units still training are scored, and a stopped unit, which is
/// not scored again, shows the best it keeps.
fn evaluate_dev(
    training: &Training<'_>,
    state: &FitState,
    active: &[usize],
    options: &FitOptions,
) -> anyhow::Result<Vec<Scores>> {
    if active.is_empty() {
        return Ok(state.best_dev.clone());
    }
    let units: Vec<Unit> = active.iter().map(|&unit| training.units[unit]).collect();
    let values: Vec<Vec<f32>> = active
        .iter()
        .map(|&unit| state.values[unit].clone())
        .collect();
    let scored = evaluate_values(
        training.encoder,
        training.tasks,
        &units,
        &training.space,
        &values,
        Split::Dev,
        options.eval_limit,
    )?;
    let mut dev = state.best_dev.clone();
    for (&unit, scores) in active.iter().zip(scored) {
        dev[unit] = scores;
    }
    Ok(dev)
}

/// One optimizer step of the `active` units: their rows through the encoder in runs of
/// `options.run_rows`, each unit's gradient summed over its rows, one update each. Returns the
/// mean training loss over the active units.
fn train_step(
    training: &Training<'_>,
    state: &mut FitState,
    active: &[usize],
    options: &FitOptions,
) -> anyhow::Result<f32> {
    let realised = training.space.realise(
        training.encoder,
        training.tasks,
        training.units,
        &state.values,
    )?;
    let rows = step_rows(training, &realised, active, options, state.step);
    let mut gradients: Vec<Vec<f32>> = state.values.iter().map(|v| vec![0.0; v.len()]).collect();
    let mut loss = 0.0;
    for chunk in rows.chunks(options.run_rows.max(1)) {
        let run_rows: Vec<Row<'_>> = chunk.iter().map(|row| row.row).collect();
        // d loss/d U gives each unit's d loss/d δ (module docs).
        let run = batch::gradients(training.encoder, &run_rows, &realised.params)?;
        loss += run.output.loss;
        accumulate(
            training,
            &realised,
            &state.values,
            chunk,
            &run,
            &mut gradients,
        )?;
    }
    for &index in active {
        state.optimizers[index].step(&mut state.values[index], &gradients[index]);
    }
    state.settle_diverged(active, options);
    state.step += 1;
    Ok(loss / active.len() as f32)
}

/// A training row and the unit it belongs to.
#[derive(Clone, Copy)]
struct UnitRow<'a> {
    unit: usize,
    row: Row<'a>,
}

/// The training rows of one step: `options.batch` rows of every active unit ([`minibatch`], one
/// stream per task and DET, numbered as the units of the first start: every start of a task
/// sees the same rows in the same order, so that the choice between starts compares starts).
fn step_rows<'a>(
    training: &Training<'a>,
    realised: &'a Realised,
    active: &[usize],
    options: &FitOptions,
    step: usize,
) -> Vec<UnitRow<'a>> {
    let mut rows = Vec::with_capacity(active.len() * options.batch);
    for &index in active {
        let unit = training.units[index];
        let task = &training.tasks[unit.task];
        let train = &task.data.train;
        let stream = training
            .units
            .iter()
            .position(|other| (other.task, other.det) == (unit.task, unit.det))
            .expect("a unit is among the units. This is a bug.");
        for example in minibatch(train.len(), options.seed, stream, step, options.batch) {
            let row = Row {
                task: unit.task,
                example: &train[example],
                det: unit.det,
                z: &realised.codes[index],
                weight: 1.0 / options.batch as f32,
                classes: realised.classes_of(index, task),
            };
            rows.push(UnitRow { unit: index, row });
        }
    }
    rows
}

/// Adds each unit's gradient from one encoder run of `rows` to `gradients`: d loss/d δ in the
/// original space; in a subspace Uᵀ (d loss/d δ) for z (unless it is frozen), then the head's.
fn accumulate(
    training: &Training<'_>,
    realised: &Realised,
    values: &[Vec<f32>],
    rows: &[UnitRow<'_>],
    run: &batch::RowGradients,
    gradients: &mut [Vec<f32>],
) -> anyhow::Result<()> {
    let (encoder, units) = (training.encoder, training.units);
    let output = &run.output;
    let mut seen = vec![false; units.len()];
    for &UnitRow { unit, .. } in rows {
        if std::mem::replace(&mut seen[unit], true) {
            continue;
        }
        let column = units[unit].det.column(encoder.manifest())?;
        let j = realised.codes[unit]
            .iter()
            .position(|&c| c == 1.0)
            .context("a one-hot code. This is a bug.")?;
        let grad_delta = output.grad_u[column].column(j);
        match training.space {
            Space::Original { .. } => {
                for (g, v) in gradients[unit].iter_mut().zip(grad_delta) {
                    *g += v;
                }
            }
            Space::Subspace {
                subspace, train_z, ..
            } => {
                if train_z {
                    // (d loss/d δ)ᵀ U as a [1, D] × [D, d] product: it streams U's rows in order,
                    // where Uᵀ (d loss/d δ) would stride down its columns (10× slower at d = 1,024).
                    let u = &subspace.params().det(column).u;
                    let grad_z = grad_delta.insert_axis(Axis(0)).dot(u);
                    for (g, v) in gradients[unit].iter_mut().zip(grad_z) {
                        *g += v;
                    }
                }
            }
        }
    }
    if let Space::Subspace { subspace, head, .. } = training.space {
        let d = subspace.d();
        let logit_scale = encoder.manifest().logit_scale;
        for (index, UnitRow { unit, row }) in rows.iter().enumerate() {
            let offset = run.class_offset[index];
            let logits = output.logits.row(index);
            head.accumulate(
                &training.tasks[units[*unit].task].descriptions,
                &values[*unit][d..],
                logits.slice(ndarray::s![offset..offset + row.classes.len()]),
                output.embeddings.index_axis(Axis(0), index),
                row.example.label,
                row.weight,
                logit_scale,
                ndarray::ArrayViewMut1::from(&mut gradients[*unit][d..]),
            );
        }
    }
    Ok(())
}

/// Scores of every unit with parameters `values`.
pub fn evaluate_values(
    encoder: &Encoder,
    tasks: &[TrainTask],
    units: &[Unit],
    space: &Space<'_>,
    values: &[Vec<f32>],
    split: Split,
    limit: Option<usize>,
) -> anyhow::Result<Vec<Scores>> {
    let realised = space.realise(encoder, tasks, units, values)?;
    let eval_units: Vec<eval::CodedUnit> = units
        .iter()
        .enumerate()
        .map(|(index, unit)| eval::CodedUnit {
            task: unit.task,
            det: unit.det,
            z: &realised.codes[index],
            classes: realised.classes_of(index, &tasks[unit.task]),
        })
        .collect();
    eval::evaluate(
        encoder,
        tasks,
        &eval_units,
        &realised.params,
        split,
        64,
        limit,
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::model::{EncoderOptions, ModelFiles};
    use crate::runtime::test_runtime;

    fn fixture(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(path)
    }

    fn scores(accuracy: f32) -> Scores {
        Scores {
            accuracy,
            macro_f1: accuracy,
            n: 8,
        }
    }

    /// Early stopping keeps a unit while it improves within `patience` evaluations, and stops
    /// one at once when its dev accuracy is perfect; without patience every unit goes on.
    #[test]
    fn a_unit_stops_after_patience_stale_evaluations_or_at_a_perfect_dev() {
        let options = FitOptions::new(crate::tuning::tune::TUNING, 1);
        let mut state = FitState::new(vec![vec![0.0]; 3], &options);
        let patience = Some(2);
        state.record_dev(
            &[0, 1, 2],
            &[scores(0.5), scores(0.5), scores(1.0)],
            patience,
            true,
        );
        assert_eq!(state.active(patience), [0, 1], "a perfect dev stops unit 2");
        state.record_dev(&[0, 1], &[scores(0.5), scores(0.75)], patience, true);
        state.record_dev(&[0, 1], &[scores(0.25), scores(0.5)], patience, true);
        assert_eq!(state.active(patience), [1], "unit 0 did not improve twice");
        assert_eq!(state.best_dev[1].accuracy, 0.75);
        // An evaluation off the grid (the time limit's) keeps a better z but counts no stale one.
        state.record_dev(&[1], &[scores(0.0), scores(0.5)], patience, false);
        assert_eq!(state.active(patience), [1]);
        state.record_dev(&[1], &[scores(0.0), scores(0.5)], patience, true);
        assert_eq!(
            state.active(patience),
            Vec::<usize>::new(),
            "unit 1 did not improve twice"
        );
        assert_eq!(state.active(None), [0, 1, 2]);
        // The stop follows from the best dev, which checkpoints keep: a run resumed with
        // another patience leaves the perfect unit stopped.
        assert_eq!(state.active(Some(100)), [0, 1]);

        let mut endless = FitState::new(vec![vec![0.0]], &options);
        endless.record_dev(&[0], &[scores(1.0)], None, true);
        assert_eq!(
            endless.active(None),
            [0],
            "no patience: a perfect dev goes on"
        );
    }

    /// A unit whose step diverged goes back to its best values and stops, so that its NaN never
    /// reaches the other units' θ; the others go on untouched.
    #[test]
    fn a_diverged_unit_goes_back_to_its_best_and_stops() {
        let mut options = FitOptions::new(crate::tuning::tune::TUNING, 1);
        options.patience = Some(3);
        let mut state = FitState::new(vec![vec![0.5, 0.5], vec![0.25]], &options);
        state.record_dev(&[0, 1], &[scores(0.5), scores(0.5)], Some(3), true);
        state.values[0] = vec![f32::NAN, 0.75];
        state.values[1] = vec![0.3];
        assert_eq!(state.settle_diverged(&[0, 1], &options), [0]);
        assert_eq!(state.values, [vec![0.5, 0.5], vec![0.3]]);
        assert_eq!(state.active(Some(3)), [1], "the diverged unit stopped");
        // Without early stopping it stays, at its best values, with an optimizer whose moments
        // hold no NaN: its next step is finite.
        options.patience = None;
        state.optimizers[0].step(&mut state.values[0], &[f32::NAN, 0.0]);
        assert!(state.values[0][0].is_nan());
        assert_eq!(state.settle_diverged(&[0, 1], &options), [0]);
        assert_eq!(state.values[0], [0.5, 0.5]);
        state.optimizers[0].step(&mut state.values[0], &[1.0, 1.0]);
        assert!(
            state.values[0].iter().all(|v| v.is_finite()),
            "{:?}",
            state.values[0]
        );
    }

    /// Values that diverged (a NaN or an infinity) are never kept, however their dev scores: NaN
    /// logits argmax to the first label, which can beat an earlier best on a skewed dev set.
    #[test]
    fn diverged_values_are_never_kept_as_the_best() {
        let options = FitOptions::new(crate::tuning::tune::TUNING, 1);
        let mut state = FitState::new(vec![vec![0.5, 0.5]], &options);
        state.record_dev(&[0], &[scores(0.5)], Some(2), true);
        state.values[0] = vec![f32::NAN, 0.5];
        for _ in 0..2 {
            state.record_dev(&[0], &[scores(0.75)], Some(2), true);
        }
        assert_eq!(state.best[0], [0.5, 0.5]);
        assert_eq!(state.best_dev[0].accuracy, 0.5);
        assert!(
            state.active(Some(2)).is_empty(),
            "each counts as no improvement"
        );
    }

    /// The tiny model's encoder (with its gradient graph when `with_grad`), θ⁰, and sst2.
    fn tiny_sst2(with_grad: bool) -> (Encoder, Theta0, TrainTask) {
        let options = EncoderOptions {
            with_grad,
            ..EncoderOptions::default()
        };
        let encoder = Encoder::load(&test_runtime(), &fixture("tiny"), &options).unwrap();
        let theta0 = Theta0::load(&ModelFiles::open(&fixture("tiny")).unwrap()).unwrap();
        let task = TrainTask::load(&encoder, &fixture("data/sst2"), None).unwrap();
        (encoder, theta0, task)
    }

    /// A unit whose first step diverges, on an evaluation step, stays stopped: its restored
    /// values are not scored as an improvement that would train it again.
    #[test]
    fn a_unit_that_diverges_on_an_evaluation_step_stays_stopped() {
        let (encoder, theta0, task) = tiny_sst2(true);
        let tasks = [task];
        let units = [Unit::new(0, DetKind::Lora)];
        let space = Space::Original { theta0: &theta0 };
        let training = Training {
            encoder: &encoder,
            tasks: &tasks,
            units: &units,
            space,
        };
        let init = vec![vec![0.0; space.len(DetKind::Lora, &encoder).unwrap()]];
        let mut options = FitOptions::new(crate::tuning::tune::TUNING, 1);
        (options.lr, options.steps, options.eval_every) = (f32::INFINITY, 5, 1);
        options.patience = Some(2);
        let result = fit(training, init, &options, "test").unwrap();
        assert_eq!(
            result.losses.len(),
            1,
            "one step, then stopped: {:?}",
            result.losses
        );
        assert_eq!(result.best_step, [0]);
        assert!(result.best[0].iter().all(|v| *v == 0.0));
    }

    /// Only the units still training are scored on dev; a stopped one shows the best it keeps.
    #[test]
    fn a_stopped_unit_is_not_scored_again() {
        let (encoder, theta0, task) = tiny_sst2(false);
        let tasks = [task];
        let units = [DetKind::Lora, DetKind::Adapter].map(|det| Unit::new(0, det));
        let space = Space::Original { theta0: &theta0 };
        let init = units
            .iter()
            .map(|unit| vec![0.0; space.len(unit.det, &encoder).unwrap()])
            .collect();
        let training = Training {
            encoder: &encoder,
            tasks: &tasks,
            units: &units,
            space,
        };
        let options = FitOptions::new(crate::tuning::tune::TUNING, 1);
        let mut state = FitState::new(init, &options);
        state.best_dev[1] = scores(0.125);
        let dev = evaluate_dev(&training, &state, &[0], &options).unwrap();
        assert!(dev[0].n > 0, "the active unit is scored: {:?}", dev[0]);
        assert_eq!(dev[1], scores(0.125), "the stopped unit keeps its best");
    }

    /// A task without dev examples is refused before the first step: every evaluation would
    /// score 0, and the first would be kept whatever followed.
    #[test]
    fn a_task_without_dev_examples_is_refused() {
        let (encoder, theta0, mut task) = tiny_sst2(false);
        task.data.dev.clear();
        let units = [Unit::new(0, DetKind::Lora)];
        let space = Space::Original { theta0: &theta0 };
        let training = Training {
            encoder: &encoder,
            tasks: std::slice::from_ref(&task),
            units: &units,
            space,
        };
        let init = vec![vec![0.0; space.len(DetKind::Lora, &encoder).unwrap()]];
        let options = FitOptions::new(crate::tuning::tune::TUNING, 1);
        let error = fit(training, init, &options, "test")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("sst2") && error.contains("no examples"),
            "{error}"
        );
    }

    /// A subspace unit's gradient, which `fit` takes as Uᵀ (d loss/d δ) with δ decoded on the
    /// host, equals the z-graph's own d loss/d z with U inside the graph, summed over its rows.
    #[test]
    fn host_decoded_z_gradients_equal_the_graphs() {
        let runtime = test_runtime();
        let options = EncoderOptions {
            with_grad: true,
            ..EncoderOptions::default()
        };
        let encoder = Encoder::load(&runtime, &fixture("tiny"), &options).unwrap();
        let theta0 = Theta0::load(&ModelFiles::open(&fixture("tiny")).unwrap()).unwrap();
        let subspace = Subspace::random(encoder.manifest(), &theta0, 6, 3).unwrap();
        let tasks = [TrainTask::load(&encoder, &fixture("data/sst2"), None).unwrap()];
        let units = [DetKind::Lora, DetKind::Adapter, DetKind::Prefix].map(|det| Unit::new(0, det));
        let values: Vec<Vec<f32>> = (0..units.len())
            .map(|u| (0..6).map(|k| ((u * 6 + k) as f32 * 0.7).sin()).collect())
            .collect();
        let training = Training {
            encoder: &encoder,
            tasks: &tasks,
            units: &units,
            space: Space::Subspace {
                subspace: &subspace,
                head: HeadTuning::None,
                train_z: true,
            },
        };
        let options = FitOptions::new(crate::tuning::tune::TUNING, 1);
        let realised = training
            .space
            .realise(&encoder, &tasks, &units, &values)
            .unwrap();
        let rows = step_rows(&training, &realised, &[0, 1, 2], &options, 0);
        let run_rows: Vec<Row<'_>> = rows.iter().map(|row| row.row).collect();
        let run = batch::gradients(&encoder, &run_rows, &realised.params).unwrap();
        let mut host = vec![vec![0.0; 6]; units.len()];
        accumulate(&training, &realised, &values, &rows, &run, &mut host).unwrap();

        let in_graph_rows: Vec<Row<'_>> = (rows.iter())
            .map(|row| Row {
                z: &values[row.unit],
                ..row.row
            })
            .collect();
        let graph = batch::gradients(&encoder, &in_graph_rows, subspace.params()).unwrap();
        for (unit, host) in host.iter().enumerate() {
            let mut expected = Array1::<f32>::zeros(6);
            for (index, row) in rows.iter().enumerate() {
                if row.unit == unit {
                    expected += &graph.output.grad_z.row(index);
                }
            }
            let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let error = (host.iter().zip(&expected)).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                scale > 0.0 && error <= 1e-4 * scale,
                "unit {unit}: {host:?} against {expected}"
            );
        }
    }
}
