//! A trace of stage 2: every few steps, the current z scored on a split, logged against
//! optimization time (`--trace`).

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::det::DetKind;
use crate::model::Encoder;
use crate::tuning::batch::TrainTask;
use crate::tuning::data::Split;
use crate::tuning::fit::{FitOptions, Space, StepReport, Unit, evaluate_values, is_first_start};

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
    pub(super) scoring: Duration,
}

/// How far a search has gone when the trace scores it (per task).
#[derive(Debug, Clone, Copy)]
pub(super) struct Position {
    pub(super) step: usize,
    /// Time in optimizer steps so far.
    pub(super) optimizing: Duration,
    /// Adam, Adafactor: training examples through the gradient graph; CMA-ES: candidates scored.
    pub(super) evaluations: usize,
    /// Training examples through the encoder (CMA-ES: candidates × minibatch).
    pub(super) examples: usize,
}

impl Position {
    pub(super) const START: Self = Self {
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

    pub(super) fn due(&self, step: usize, last: usize) -> bool {
        step.is_multiple_of(self.options.every.max(1)) || step == last
    }

    /// Scores a gradient run's units (tasks through DETs in `space`) when `report` is due: at
    /// step 0, every `every` steps, and at the last step, including that of a run that stops
    /// early. What [`fit_observed`](crate::tuning::fit::fit_observed)'s observer calls, for stage 2 and stage 0 alike.
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
    pub(super) fn record(
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
