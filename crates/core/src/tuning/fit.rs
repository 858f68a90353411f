//! The training loop every gradient stage shares. A *unit* is one task decoded through one DET;
//! each unit owns a parameter vector: δ = θ − θ⁰ in the original space (stage 0) or the code z
//! in a frozen subspace, followed by its head's parameters when one is tuned (stage 2; see
//! [`super::head`]). All units train together: every step draws rows of every
//! unit into shared encoder runs, each unit's loss is its rows' mean, and each unit gets exactly
//! its own gradient back.
//!
//! Original space uses the z-graph with one-hot codes: U_det's column j holds δ of the j-th unit
//! of that DET and base = θ⁰, so θ = θ⁰ + U e_j = θ⁰ + δ_j and d loss/d U[:, j] is unit j's
//! gradient. One graph, one run, many tasks, no re-export.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use ndarray::{Array1, Array2, Axis};
use serde::Serialize;

use super::batch::{self, Row, TrainTask};
use super::data::{Split, epoch_indices};
use super::eval::{self, Scores};
use super::head::HeadTuning;
use super::optim::{Optimizer, OptimizerKind};
use super::progress::Progress;
use crate::classifier::Classes;
use crate::det::{DetKind, Theta0};
use crate::model::{DeltaParams, DetParams, Encoder};
use crate::subspace::Subspace;
use crate::tensor_file::{Storage, TensorFile};

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

/// A task trained through a DET.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Unit {
    pub task: usize,
    pub det: DetKind,
}

/// How long and how fast a run trains, the part of [`FitOptions`] that differs between stages.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub steps: usize,
    pub lr: f32,
    pub eval_every: usize,
    /// Evaluations without improvement before a unit stops (0: never).
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
    /// improved its dev accuracy; the run ends when every unit has stopped (None: never stop).
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
            Space::Original { .. } => "original space".into(),
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
                Ok(Realised {
                    params: subspace.params().clone(),
                    codes: values.iter().map(|v| v[..d].to_vec()).collect(),
                    classes,
                })
            }
            Space::Original { theta0 } => {
                let (params, codes) = one_hot(encoder, theta0, units, values)?;
                Ok(Realised {
                    params,
                    codes,
                    classes: vec![None; units.len()],
                })
            }
        }
    }
}

/// Original space through the z-graph: U_det's column j holds δ of the j-th unit of that DET,
/// base = θ⁰, and that unit's code is e_j.
fn one_hot(
    encoder: &Encoder,
    theta0: &Theta0,
    units: &[Unit],
    values: &[Vec<f32>],
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
            base: theta0.det(column).clone(),
        })
        .collect();
    let mut codes = Vec::with_capacity(units.len());
    for ((unit, &j), delta) in units.iter().zip(&position).zip(values) {
        let column = unit.det.column(manifest)?;
        dets[column]
            .u
            .column_mut(j)
            .assign(&Array1::from(delta.clone()));
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

/// Trains every unit from `init` and returns the best parameters on dev.
pub fn fit(
    encoder: &Encoder,
    tasks: &[TrainTask],
    units: &[Unit],
    space: Space<'_>,
    init: Vec<Vec<f32>>,
    options: &FitOptions,
    label: &str,
) -> anyhow::Result<FitResult> {
    let mut ignore = |_: StepReport<'_>| Ok(());
    fit_observed(
        encoder,
        tasks,
        units,
        space,
        init,
        options,
        label,
        &mut ignore,
    )
}

/// [`fit`], calling `observe` before the first step and after every step (after its evaluation,
/// when it has one). Time spent in `observe` counts in neither [`FitResult::seconds`] nor
/// [`StepReport::optimizing`].
#[allow(clippy::too_many_arguments)]
pub fn fit_observed(
    encoder: &Encoder,
    tasks: &[TrainTask],
    units: &[Unit],
    space: Space<'_>,
    init: Vec<Vec<f32>>,
    options: &FitOptions,
    label: &str,
    observe: &mut dyn FnMut(StepReport<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<FitResult> {
    let started = Instant::now();
    let mut observing = Duration::ZERO;
    let mut optimizing = Duration::ZERO;
    let mut timed_observe = |report: StepReport<'_>| -> anyhow::Result<()> {
        let observe_started = Instant::now();
        observe(report)?;
        observing += observe_started.elapsed();
        Ok(())
    };
    let mut values = init;
    // What a checkpoint must have been written by to be resumed here: the space, the seed, and
    // each task's training set size (which --shots and --max-examples change).
    let sizes: Vec<String> = tasks
        .iter()
        .map(|t| format!("{}:{}", t.data.name, t.data.train.len()))
        .collect();
    let run = format!(
        "{} seed {} train {}",
        space.describe(),
        options.seed,
        sizes.join(",")
    );
    let mut optimizers: Vec<Box<dyn Optimizer>> = values
        .iter()
        .map(|v| options.optimizer.build(v.len(), options.lr))
        .collect();
    let mut best = values.clone();
    let mut best_dev = vec![
        Scores {
            accuracy: -1.0,
            macro_f1: 0.0,
            n: 0
        };
        units.len()
    ];
    let mut best_step = vec![0; units.len()];
    let mut stale = vec![0; units.len()];
    let mut losses = Vec::new();
    let mut start_step = 0;
    if let Some(path) = options.checkpoint.as_ref().filter(|p| p.is_file()) {
        let state = Checkpoint::read(path, units, &run)?;
        tracing::info!(step = state.step, checkpoint = %path.display(), "resuming");
        start_step = state.step;
        values = state.values;
        best = state.best;
        best_dev = state.best_dev;
        best_step = state.best_step;
        stale = state.stale;
        for (optimizer, saved) in optimizers.iter_mut().zip(&state.optimizers) {
            anyhow::ensure!(
                optimizer.restore(saved),
                "checkpoint {} has another optimizer state",
                path.display()
            );
        }
    }
    let progress = Progress::new(label, options.steps as u64);
    progress.set_position(start_step as u64);
    timed_observe(StepReport {
        step: start_step,
        values: &values,
        optimizing,
        loss: None,
        dev: None,
        stopped: false,
    })?;
    let training =
        |stale: &[usize], index: usize| options.patience.is_none_or(|p| stale[index] < p);
    for step in start_step..options.steps {
        let active: Vec<usize> = (0..units.len()).filter(|&u| training(&stale, u)).collect();
        if active.is_empty() {
            tracing::info!(step, "every unit has stopped early");
            timed_observe(StepReport {
                step,
                values: &values,
                optimizing,
                loss: None,
                dev: None,
                stopped: true,
            })?;
            break;
        }
        let step_started = Instant::now();
        let realised = space.realise(encoder, tasks, units, &values)?;
        let (rows, unit_of_row) = step_rows(tasks, units, &realised, &active, options, step);
        let mut gradients: Vec<Vec<f32>> = values.iter().map(|v| vec![0.0; v.len()]).collect();
        let mut loss = 0.0;
        let run_rows = options.run_rows.max(1);
        for (chunk, chunk_units) in rows.chunks(run_rows).zip(unit_of_row.chunks(run_rows)) {
            let run = batch::gradients(encoder, chunk, &realised.params)?;
            loss += run.output.loss;
            let ran = Ran {
                rows: chunk,
                units: chunk_units,
                gradients: &run,
            };
            accumulate(
                &space,
                encoder,
                tasks,
                units,
                &realised,
                &values,
                &ran,
                &mut gradients,
            )?;
        }
        for &index in &active {
            optimizers[index].step(&mut values[index], &gradients[index]);
        }
        optimizing += step_started.elapsed();
        let mean_loss = loss / active.len() as f32;
        losses.push((step + 1, mean_loss));
        let done = step + 1;
        let out_of_time = options
            .max_seconds
            .is_some_and(|limit| started.elapsed().as_secs_f64() >= limit);
        if !(done.is_multiple_of(options.eval_every.max(1)) || done == options.steps || out_of_time)
        {
            progress.report(done as u64, mean_loss, None);
            timed_observe(StepReport {
                step: done,
                values: &values,
                optimizing,
                loss: Some(mean_loss),
                dev: None,
                stopped: false,
            })?;
            continue;
        }
        let dev = evaluate_values(
            encoder,
            tasks,
            units,
            &space,
            &values,
            Split::Dev,
            options.eval_limit,
        )?;
        for &index in &active {
            if dev[index].accuracy > best_dev[index].accuracy {
                best_dev[index] = dev[index];
                best[index] = values[index].clone();
                best_step[index] = done;
                stale[index] = 0;
            } else {
                stale[index] += 1;
                if !training(&stale, index) {
                    tracing::info!(
                        unit = index,
                        step = done,
                        best_step = best_step[index],
                        "stopped early"
                    );
                }
            }
        }
        let mean_dev = dev.iter().map(|m| m.accuracy).sum::<f32>() / dev.len().max(1) as f32;
        progress.report(done as u64, mean_loss, Some(mean_dev));
        tracing::debug!(
            step = done,
            loss = mean_loss,
            dev_accuracy = mean_dev,
            "evaluated"
        );
        if let Some(path) = &options.checkpoint {
            let state = Checkpoint {
                step: done,
                values: values.clone(),
                best: best.clone(),
                best_dev: best_dev.clone(),
                best_step: best_step.clone(),
                stale: stale.clone(),
                optimizers: optimizers.iter().map(|o| o.state()).collect(),
            };
            state.write(path, units, &run)?;
        }
        timed_observe(StepReport {
            step: done,
            values: &values,
            optimizing,
            loss: Some(mean_loss),
            dev: Some(&dev),
            stopped: false,
        })?;
        if out_of_time {
            tracing::info!(step = done, "out of time: the run ends here");
            break;
        }
    }
    progress.finish();
    Ok(FitResult {
        best,
        best_dev,
        best_step,
        losses,
        seconds: started.elapsed().saturating_sub(observing).as_secs_f64(),
    })
}

/// The training rows of one step: `options.batch` rows of every active unit, drawn by a
/// stateless function of (seed, unit, step), each with the index of the unit it belongs to.
fn step_rows<'a>(
    tasks: &'a [TrainTask],
    units: &[Unit],
    realised: &'a Realised,
    active: &[usize],
    options: &FitOptions,
    step: usize,
) -> (Vec<Row<'a>>, Vec<usize>) {
    let mut rows = Vec::with_capacity(active.len() * options.batch);
    let mut unit_of_row = Vec::with_capacity(active.len() * options.batch);
    for &index in active {
        let unit = units[index];
        let task = &tasks[unit.task];
        let unit_seed = options.seed ^ ((index as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
        for example in epoch_indices(
            task.data.train.len(),
            unit_seed,
            step * options.batch,
            options.batch,
        ) {
            rows.push(Row {
                task: unit.task,
                example: &task.data.train[example],
                det: unit.det,
                z: &realised.codes[index],
                weight: 1.0 / options.batch as f32,
                classes: realised.classes_of(index, task),
            });
            unit_of_row.push(index);
        }
    }
    (rows, unit_of_row)
}

/// One encoder run's rows, the unit of each row, and what the gradient graph gave for them.
struct Ran<'r, 'a> {
    rows: &'r [Row<'a>],
    units: &'r [usize],
    gradients: &'r batch::RowGradients,
}

/// Adds each unit's gradient from one run to `gradients`.
#[allow(clippy::too_many_arguments)]
fn accumulate(
    space: &Space<'_>,
    encoder: &Encoder,
    tasks: &[TrainTask],
    units: &[Unit],
    realised: &Realised,
    values: &[Vec<f32>],
    ran: &Ran<'_, '_>,
    gradients: &mut [Vec<f32>],
) -> anyhow::Result<()> {
    let output = &ran.gradients.output;
    match space {
        Space::Subspace {
            subspace,
            head,
            train_z,
        } => {
            let d = subspace.d();
            let logit_scale = encoder.manifest().logit_scale;
            for (index, (row, &unit)) in ran.rows.iter().zip(ran.units).enumerate() {
                let gradient = &mut gradients[unit];
                if *train_z {
                    for (g, v) in gradient.iter_mut().zip(output.grad_z.row(index)) {
                        *g += v;
                    }
                }
                let offset = ran.gradients.class_offset[index];
                let logits = output.logits.row(index);
                head.accumulate(
                    &tasks[units[unit].task].descriptions,
                    &values[unit][d..],
                    logits.slice(ndarray::s![offset..offset + row.classes.len()]),
                    output.embeddings.index_axis(Axis(0), index),
                    row.example.label,
                    row.weight,
                    logit_scale,
                    ndarray::ArrayViewMut1::from(&mut gradient[d..]),
                );
            }
        }
        Space::Original { .. } => {
            let mut seen = vec![false; units.len()];
            for &unit in ran.units {
                if std::mem::replace(&mut seen[unit], true) {
                    continue;
                }
                let column = units[unit].det.column(encoder.manifest())?;
                let j = realised.codes[unit]
                    .iter()
                    .position(|&c| c == 1.0)
                    .context("a one-hot code. This is a bug.")?;
                for (g, v) in gradients[unit]
                    .iter_mut()
                    .zip(output.grad_u[column].column(j))
                {
                    *g += v;
                }
            }
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

/// Everything needed to continue a run where it stopped.
struct Checkpoint {
    step: usize,
    values: Vec<Vec<f32>>,
    best: Vec<Vec<f32>>,
    best_dev: Vec<Scores>,
    best_step: Vec<usize>,
    /// Evaluations since each unit's last improvement on dev (early stopping).
    stale: Vec<usize>,
    optimizers: Vec<Vec<f32>>,
}

impl Checkpoint {
    fn write(&self, path: &std::path::Path, units: &[Unit], run: &str) -> anyhow::Result<()> {
        let mut names = Vec::new();
        for (index, ((value, best), optimizer)) in self
            .values
            .iter()
            .zip(&self.best)
            .zip(&self.optimizers)
            .enumerate()
        {
            names.push((format!("value.{index}"), value.clone()));
            names.push((format!("best.{index}"), best.clone()));
            names.push((format!("optimizer.{index}"), optimizer.clone()));
        }
        let shapes: Vec<[usize; 1]> = names.iter().map(|(_, v)| [v.len()]).collect();
        let tensors: Vec<(&str, &[usize], &[f32])> = names
            .iter()
            .zip(&shapes)
            .map(|((n, v), s)| (n.as_str(), &s[..], v.as_slice()))
            .collect();
        let metadata = std::collections::HashMap::from([
            ("step".to_string(), self.step.to_string()),
            ("units".to_string(), serde_json::to_string(units)?),
            (
                "best_dev".to_string(),
                serde_json::to_string(&self.best_dev)?,
            ),
            (
                "best_step".to_string(),
                serde_json::to_string(&self.best_step)?,
            ),
            ("stale".to_string(), serde_json::to_string(&self.stale)?),
            ("run".to_string(), run.to_string()),
        ]);
        TensorFile::write(path, &tensors, metadata, Storage::F32)?;
        Ok(())
    }

    fn read(path: &std::path::Path, units: &[Unit], run: &str) -> anyhow::Result<Self> {
        let mut file = TensorFile::read(path)?;
        let meta = |key: &str| {
            file.metadata
                .get(key)
                .cloned()
                .with_context(|| format!("{}: {key} missing", path.display()))
        };
        anyhow::ensure!(
            meta("units")? == serde_json::to_string(units)?,
            "checkpoint {} is for other tasks or DETs; delete it to start over",
            path.display()
        );
        // Checkpoints written before runs were recorded have no "run", and those written before
        // the run named its training set sizes lack the " train ..." part: both are taken as
        // they are.
        let older = |found: &str| {
            run.strip_prefix(found)
                .is_some_and(|rest| rest.starts_with(" train "))
        };
        if let Some(found) = file
            .metadata
            .get("run")
            .filter(|found| *found != run && !older(found))
        {
            anyhow::bail!(
                "checkpoint {} was written by another run ({found}, not {run}); delete it to start over",
                path.display()
            );
        }
        let step = meta("step")?.parse()?;
        let best_dev: Vec<Scores> = serde_json::from_str(&meta("best_dev")?)?;
        let best_step: Vec<usize> = serde_json::from_str(&meta("best_step")?)?;
        // Checkpoints from before early stopping have no "stale": every unit still trains.
        let stale: Vec<usize> = match file.metadata.get("stale") {
            Some(text) => serde_json::from_str(text)?,
            None => vec![0; units.len()],
        };
        anyhow::ensure!(
            [best_dev.len(), best_step.len(), stale.len()] == [units.len(); 3],
            "checkpoint {} is damaged: its per-unit records do not match its {} units",
            path.display(),
            units.len()
        );
        let mut take = |name: String| file.take(&name).map(|t| t.values);
        let (mut values, mut best, mut optimizers) = (Vec::new(), Vec::new(), Vec::new());
        for index in 0..units.len() {
            values.push(take(format!("value.{index}"))?);
            best.push(take(format!("best.{index}"))?);
            optimizers.push(take(format!("optimizer.{index}"))?);
        }
        Ok(Self {
            step,
            values,
            best,
            best_dev,
            best_step,
            stale,
            optimizers,
        })
    }
}
