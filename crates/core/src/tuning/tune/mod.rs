//! Stage 2 (paper §3): a new task's z, and its head, tuned in a frozen subspace. Gradient
//! optimizers use the exact d loss/d z of the gradient graph, through every DET asked for and
//! from every start, and each task keeps the (DET, start) best on dev; CMA-ES
//! ([`tune_cmaes`]) is derivative-free. With a [`Trace`], both also score their current z every
//! few steps and log accuracy against optimization time.

mod cmaes;
mod start;
mod trace;

pub use cmaes::{CmaOptions, tune_cmaes};
pub use start::{Start, UpstreamChoice, default_starts, upstream_unavailable};
use start::{UpstreamStart, check_starts, choose_upstream, initial_z};
pub use trace::{Trace, TraceOptions};

use std::collections::BTreeMap;
use std::time::Instant;

use crate::det::DetKind;
use crate::model::Encoder;
use crate::subspace::Subspace;
use crate::task::Head;
use crate::tuning::batch::TrainTask;
use crate::tuning::data::Split;
use crate::tuning::eval::Scores;
use crate::tuning::fit::{
    FitOptions, Schedule, Space, StepReport, Training, Unit, evaluate_values, fit_observed,
};
use crate::tuning::head::HeadTuning;

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
    /// How much more dev accuracy (a fraction: 0.01 is one point) a unit from a later start
    /// needs than the one kept from an earlier start to replace it ([`replaces`]).
    pub start_margin: f32,
}

/// A later start's margin by default: one point of dev accuracy, so that a warm start within
/// dev's noise of the cold one does not replace it. Registered before seed 3's unseen pairs and
/// adopted after them (docs/RESULTS.md, "Left to measure"): on the whole training sets, 77.0 mean
/// test against 76.5 without it (15 pairs); at k = 16 it changes nothing (one dev example is more).
pub const START_MARGIN: f32 = 0.01;

/// Whether a unit of (start, dev accuracy) `other` replaces the `kept` one as a task's choice:
/// a higher dev accuracy, by more than `margin` when it comes from a later start. Units are
/// visited start by start, so an earlier start's unit keeps its place against later ones unless
/// they clearly lead.
pub fn replaces(kept: (usize, f32), other: (usize, f32), margin: f32) -> bool {
    if other.0 > kept.0 && margin > 0.0 {
        // Dev accuracies are f32 fractions: a lead of exactly the margin (27 of 100 against 26)
        // must not pass as more than it by rounding.
        f64::from(other.1) - f64::from(kept.1) > f64::from(margin) + MARGIN_TOLERANCE
    } else {
        other.1 > kept.1
    }
}

/// How much more than the margin a lead must be to count as more, against f32 rounding: far
/// below one example of any dev set (1e-6 of accuracy is one example in a million).
const MARGIN_TOLERANCE: f64 = 1e-6;

impl Target<'static> {
    /// What stage 2 tunes unless told otherwise: z and a prototypes head together, through every
    /// DET, each task keeping the DET that scores best on dev. Its starts are N(0, 0.02²) alone;
    /// `tune` and tune jobs start from [`default_starts`] unless told otherwise.
    pub const DEFAULT: Self = Self {
        dets: &DetKind::ALL,
        head: HeadTuning::Prototypes,
        train_z: true,
        starts: &[Start::Normal],
        start_margin: START_MARGIN,
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
    let choice = Choice {
        start_margin: target.start_margin,
        limit: options.final_limit,
    };
    let mut tuned = finish(training, result.best, result.seconds, choice)?;
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

/// How [`finish`] chooses each task's unit.
struct Choice {
    /// [`Target::start_margin`].
    start_margin: f32,
    /// Score dev and test on at most this many examples.
    limit: Option<usize>,
}

/// Full dev scores of every unit; per task, the unit with the best dev accuracy (the first of
/// equals: the earlier start, then the earlier DET; a later start only by more than the margin,
/// [`replaces`]), with its test score.
fn finish(
    training: Training<'_>,
    best: Vec<Vec<f32>>,
    seconds: f64,
    choice: Choice,
) -> anyhow::Result<Vec<Tuned>> {
    let Training {
        encoder,
        tasks,
        units,
        space,
    } = training;
    let (margin, limit) = (choice.start_margin, choice.limit);
    let dev = evaluate_values(encoder, tasks, units, &space, &best, Split::Dev, limit)?;
    let mut chosen: Vec<usize> = Vec::new();
    for (index, unit) in units.iter().enumerate() {
        match chosen.iter_mut().find(|c| units[**c].task == unit.task) {
            Some(current) => {
                let kept = (units[*current].start, dev[*current].accuracy);
                if replaces(kept, (unit.start, dev[index].accuracy), margin) {
                    *current = index;
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_start_replaces_only_by_more_than_the_margin() {
        // Within a start, any lead wins; a tie keeps the first.
        assert!(replaces((0, 0.70), (0, 0.71), 0.05));
        assert!(!replaces((0, 0.70), (0, 0.70), 0.0));
        // From a later start, only a lead beyond the margin.
        assert!(replaces((0, 0.70), (1, 0.71), 0.0));
        assert!(!replaces((0, 0.70), (1, 0.705), 0.01));
        assert!(replaces((0, 0.70), (1, 0.72), 0.01));
        assert!(!replaces((0, 0.70), (1, 0.70), 0.0));
        // A lead of exactly the margin is not more than it, whatever f32 rounding makes of it.
        let lead_of_one_point = (1..100).filter(|&correct| {
            let (cold, warm) = (correct as f32 / 100.0, (correct + 1) as f32 / 100.0);
            replaces((0, cold), (1, warm), START_MARGIN)
        });
        assert_eq!(lead_of_one_point.count(), 0);
        assert!(replaces((0, 26.0 / 100.0), (1, 28.0 / 100.0), START_MARGIN));
    }
}
