//! Where a run of [`fit`](super::fit) stands: every unit's values and the best it has kept on
//! dev, early stopping, and the checkpoint that lets a cut run continue exactly where it was.

use std::collections::HashMap;

use anyhow::Context;

use super::{FitOptions, Training, Unit};
use crate::tensor_file::{Storage, TensorFile};
use crate::tuning::eval::Scores;
use crate::tuning::optim::Optimizer;

/// What a checkpoint must have been written by to be resumed, in its metadata.
pub(super) struct Run {
    /// The space, the seed, each task's training set size (which --shots and --max-examples
    /// change), and a start other than the seeded default.
    id: String,
    /// Each task's name and the first 12 hex digits of its
    /// [`TaskData::digest`](crate::tuning::data::TaskData::digest): other examples or label
    /// descriptions would continue on other data.
    data: String,
    /// That start, if any ([`FitOptions::start`]).
    start: Option<String>,
    /// The optimizer, its learning rate, rows per step and tokens per row (another of them would
    /// continue another trajectory), and the dev examples per evaluation (the kept best dev would
    /// be compared with scores on another set). The step budget and the patience may change
    /// between a run and its resume: they only say when it ends.
    schedule: String,
    /// Steps between dev evaluations: the stale counts that early stopping keeps are counts of
    /// them, so another cadence would stop the resumed run elsewhere.
    eval_every: String,
}

impl Run {
    pub(super) fn of(training: &Training<'_>, options: &FitOptions) -> Self {
        let sizes: Vec<String> = training
            .tasks
            .iter()
            .map(|t| format!("{}:{}", t.data.name, t.data.train.len()))
            .collect();
        let start = options
            .start
            .as_ref()
            .map_or(String::new(), |start| format!(" start {start}"));
        Self {
            id: format!(
                "{} seed {} train {}{start}",
                training.space.describe(),
                options.seed,
                sizes.join(",")
            ),
            start: options.start.clone(),
            // Only a run that checkpoints records its data: the digest is a pass over every example.
            data: match options.checkpoint {
                None => String::new(),
                Some(_) => (training.tasks.iter())
                    .map(|t| format!("{}:{}", t.data.name, &t.data.digest()[..12]))
                    .collect::<Vec<_>>()
                    .join(","),
            },
            schedule: format!(
                "{} lr {} batch {} tokens {} dev {}",
                options.optimizer,
                options.lr,
                options.batch,
                training.encoder.tokenizer().max_seq_len(),
                options
                    .eval_limit
                    .map_or("all".to_string(), |limit| limit.to_string())
            ),
            eval_every: options.eval_every.to_string(),
        }
    }

    /// Refuses a checkpoint's metadata written by another run: other units (tasks, DETs,
    /// starts), another run identity, other data or another schedule.
    fn check(
        &self,
        path: &std::path::Path,
        metadata: &HashMap<String, String>,
        units: &[Unit],
    ) -> anyhow::Result<()> {
        let found = (metadata.get("units"))
            .with_context(|| format!("{}: units missing", path.display()))?;
        anyhow::ensure!(
            *found == serde_json::to_string(units)?,
            "checkpoint {} is for other tasks, DETs or starts (tune --init); delete it to start over",
            path.display()
        );
        // Checkpoints written before runs were recorded have no "run", those written before the
        // run named its training set sizes lack the " train ..." part, and those written before
        // it named its schedule have no "schedule": all are taken as they are, unless this run
        // has a start of its own (all of them started from the seeded default).
        let older = |found: Option<&String>| {
            self.start.is_none()
                && found.is_none_or(|found| {
                    (self.id.strip_prefix(found.as_str()))
                        .is_some_and(|rest| rest.starts_with(" train "))
                })
        };
        let found = metadata.get("run");
        if found != Some(&self.id) && !older(found) {
            anyhow::bail!(
                "checkpoint {} was written by another run ({}, not {}); delete it to start over",
                path.display(),
                found.map_or("a run that did not record itself", String::as_str),
                self.id
            );
        }
        // Checkpoints written before runs recorded their data's digest have no "data".
        if let Some(found) = metadata.get("data").filter(|found| **found != self.data) {
            anyhow::bail!(
                "checkpoint {} was written on other data ({found}, not {}: other examples or label \
                 descriptions); delete it to start over",
                path.display(),
                self.data
            );
        }
        if let Some(found) = metadata
            .get("schedule")
            .filter(|found| **found != self.schedule)
        {
            anyhow::bail!(
                "checkpoint {} was written with another schedule ({found}, not {}); delete it to \
                 start over",
                path.display(),
                self.schedule
            );
        }
        // Checkpoints written before runs recorded their cadence have no "eval_every".
        if let Some(found) = (metadata.get("eval_every")).filter(|found| **found != self.eval_every)
        {
            anyhow::bail!(
                "checkpoint {} was written evaluating dev every {found} steps, not {}; resume \
                 with --eval-every {found}, or delete it to start over",
                path.display(),
                self.eval_every
            );
        }
        Ok(())
    }
}

/// Where a run of [`fit`](super::fit) stands, and so its checkpoint: everything needed to continue it.
pub(super) struct FitState {
    /// Steps done.
    pub(super) step: usize,
    /// Every unit's current parameters.
    pub(super) values: Vec<Vec<f32>>,
    /// Every unit's parameters at its best dev accuracy so far, that accuracy, and its step.
    pub(super) best: Vec<Vec<f32>>,
    pub(super) best_dev: Vec<Scores>,
    pub(super) best_step: Vec<usize>,
    /// Evaluations since each unit's last improvement on dev (early stopping, with `best_dev`:
    /// see `active`).
    stale: Vec<usize>,
    pub(super) optimizers: Vec<Box<dyn Optimizer>>,
    /// What the run spent before this process took it up (from its checkpoint; none for a new
    /// run), so its times count every segment.
    pub(super) spent_before: Spent,
}

/// Time a run has spent: wall seconds without its observer, and the part of it in optimizer
/// steps.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Spent {
    pub(super) seconds: f64,
    pub(super) optimizing: std::time::Duration,
}

impl FitState {
    /// A run about to take its first step from `init`.
    pub(super) fn new(init: Vec<Vec<f32>>, options: &FitOptions) -> Self {
        let units = init.len();
        let never = Scores {
            accuracy: -1.0,
            macro_f1: 0.0,
            n: 0,
        };
        Self {
            step: 0,
            optimizers: init
                .iter()
                .map(|v| options.optimizer.build(v.len(), options.lr))
                .collect(),
            best: init.clone(),
            values: init,
            best_dev: vec![never; units],
            best_step: vec![0; units],
            stale: vec![0; units],
            spent_before: Spent::default(),
        }
    }

    /// The units still training: with early stopping, those whose dev accuracy improved within
    /// `patience` evaluations and is not yet perfect (nothing could beat the values a perfect
    /// unit keeps, so its steps would be wasted); all of them without.
    pub(super) fn active(&self, patience: Option<usize>) -> Vec<usize> {
        (0..self.values.len())
            .filter(|&unit| patience.is_none_or(|p| self.stale[unit] < p && !self.perfect(unit)))
            .collect()
    }

    fn perfect(&self, unit: usize) -> bool {
        self.best_dev[unit].accuracy >= 1.0
    }

    /// Puts each of the `active` units whose values diverged (a NaN or an infinity) back to the
    /// best it kept, with a fresh optimizer (its moments hold the NaN too), and stops it under
    /// early stopping. A diverged unit must not stay: every step decodes all units at once
    /// (θ = (base + U z) · det_select per row, and NaN · 0 is NaN), so its values would reach
    /// every other unit's θ. Returns the units put back.
    pub(super) fn settle_diverged(&mut self, active: &[usize], options: &FitOptions) -> Vec<usize> {
        let diverged: Vec<usize> = (active.iter().copied())
            .filter(|&unit| !self.values[unit].iter().all(|v| v.is_finite()))
            .collect();
        for &unit in &diverged {
            self.values[unit] = self.best[unit].clone();
            self.optimizers[unit] = (options.optimizer).build(self.values[unit].len(), options.lr);
            if let Some(patience) = options.patience {
                self.stale[unit] = self.stale[unit].max(patience);
            }
            tracing::warn!(
                unit,
                step = self.step,
                "diverged: back to its best values, stopped"
            );
        }
        diverged
    }

    /// Keeps each active unit's values if `dev` is its best accuracy so far, and counts an
    /// evaluation without improvement otherwise, if it is `on_grid` (every `eval_every` steps).
    /// One off the grid, forced by the time limit, keeps better values (and restarts the count,
    /// as any improvement does) but never counts as stale, so that a run resumed after it is not
    /// brought nearer its stop by an evaluation an uninterrupted run would not have made.
    pub(super) fn record_dev(
        &mut self,
        active: &[usize],
        dev: &[Scores],
        patience: Option<usize>,
        on_grid: bool,
    ) {
        for &unit in active {
            // Diverged values are never kept, whatever they score (no caller scores them).
            let finite = self.values[unit].iter().all(|v| v.is_finite());
            if finite && dev[unit].accuracy > self.best_dev[unit].accuracy {
                self.best_dev[unit] = dev[unit];
                self.best[unit] = self.values[unit].clone();
                self.best_step[unit] = self.step;
                self.stale[unit] = 0;
                if patience.is_some() && self.perfect(unit) {
                    tracing::info!(unit, step = self.step, "stopped: dev accuracy is perfect");
                }
                continue;
            }
            if !on_grid {
                continue;
            }
            self.stale[unit] = self.stale[unit].saturating_add(1);
            if patience == Some(self.stale[unit]) {
                let (step, best_step) = (self.step, self.best_step[unit]);
                tracing::info!(unit, step, best_step, "stopped early");
            }
        }
    }

    /// Writes the checkpoint of `run`, which has `spent` so far in all.
    pub(super) fn write(
        &self,
        path: &std::path::Path,
        units: &[Unit],
        run: &Run,
        spent: Spent,
    ) -> anyhow::Result<()> {
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
            names.push((format!("optimizer.{index}"), optimizer.state()));
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
            ("run".to_string(), run.id.clone()),
            ("schedule".to_string(), run.schedule.clone()),
            ("eval_every".to_string(), run.eval_every.clone()),
            ("data".to_string(), run.data.clone()),
            ("seconds".to_string(), spent.seconds.to_string()),
            (
                "optimizing_seconds".to_string(),
                spent.optimizing.as_secs_f64().to_string(),
            ),
        ]);
        TensorFile::write(path, &tensors, metadata, Storage::F32)?;
        Ok(())
    }

    /// Continues from the checkpoint at `path`, which `run` must have written.
    pub(super) fn resume(
        &mut self,
        path: &std::path::Path,
        units: &[Unit],
        run: &Run,
    ) -> anyhow::Result<()> {
        let mut file = TensorFile::read(path)?;
        run.check(path, &file.metadata, units)?;
        let meta = |key: &str| {
            file.metadata
                .get(key)
                .cloned()
                .with_context(|| format!("{}: {key} missing", path.display()))
        };
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
        for index in 0..units.len() {
            let width = self.values[index].len();
            for (name, kept) in [
                ("value", &mut self.values[index]),
                ("best", &mut self.best[index]),
            ] {
                let found = take(format!("{name}.{index}"))?;
                anyhow::ensure!(
                    found.len() == width,
                    "checkpoint {} is damaged: its {name}.{index} has {} values, not {width}",
                    path.display(),
                    found.len()
                );
                *kept = found;
            }
            let optimizer = take(format!("optimizer.{index}"))?;
            anyhow::ensure!(
                self.optimizers[index].restore(&optimizer),
                "checkpoint {} has another optimizer state",
                path.display()
            );
        }
        (self.step, self.best_dev, self.best_step, self.stale) = (step, best_dev, best_step, stale);
        // Checkpoints from before times were kept count from here.
        let seconds = |key: &str| -> anyhow::Result<f64> {
            let text = file.metadata.get(key).map_or("0", String::as_str);
            let value: f64 = text
                .parse()
                .with_context(|| format!("{}: {key}", path.display()))?;
            anyhow::ensure!(
                value.is_finite() && value >= 0.0,
                "checkpoint {} is damaged: {key} is {value}",
                path.display()
            );
            Ok(value)
        };
        self.spent_before = Spent {
            seconds: seconds("seconds")?,
            optimizing: std::time::Duration::try_from_secs_f64(seconds("optimizing_seconds")?)
                .with_context(|| format!("checkpoint {} is damaged", path.display()))?,
        };
        Ok(())
    }
}
