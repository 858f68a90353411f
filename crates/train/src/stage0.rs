//! Stage 0: each DET trained for each task in its original space, from the shared θ⁰
//! (paper §2 "Stage 0"). All (task, DET) units train together in shared encoder runs.

use crate::solution::Solution;
use deltaspace_core::det::{DetKind, Theta0};
use deltaspace_core::model::Encoder;
use deltaspace_core::tuning::batch::TrainTask;
use deltaspace_core::tuning::data::Split;
use deltaspace_core::tuning::fit::{
    FitOptions, Space, StepReport, Training, Unit, evaluate_values, fit_observed,
};
use deltaspace_core::tuning::tune::Trace;

/// Trains every DET in `dets` on every task, returning the best-on-dev θ of each with its dev
/// and test scores, task-major (task 0's DETs first). With `trace`, every unit's current δ is
/// scored between steps, as `tune` traces z.
pub fn train_dets(
    encoder: &Encoder,
    theta0: &Theta0,
    tasks: &[TrainTask],
    dets: &[DetKind],
    options: &FitOptions,
    mut trace: Option<&mut Trace>,
) -> anyhow::Result<Vec<Solution>> {
    let units: Vec<Unit> = (0..tasks.len())
        .flat_map(|task| dets.iter().map(move |&det| Unit::new(task, det)))
        .collect();
    let space = Space::Original { theta0 };
    let init = units
        .iter()
        .map(|u| space.len(u.det, encoder).map(|len| vec![0.0; len]))
        .collect::<anyhow::Result<_>>()?;
    let training = Training {
        encoder,
        tasks,
        units: &units,
        space,
    };
    let mut observe = |report: StepReport<'_>| match trace.as_deref_mut() {
        Some(trace) => trace.observe(encoder, tasks, &units, &space, report, options),
        None => Ok(()),
    };
    let result = fit_observed(training, init, options, "train det", &mut observe)?;
    let test = evaluate_values(
        encoder,
        tasks,
        &units,
        &space,
        &result.best,
        Split::Test,
        options.final_limit,
    )?;
    let dev = evaluate_values(
        encoder,
        tasks,
        &units,
        &space,
        &result.best,
        Split::Dev,
        options.final_limit,
    )?;
    Ok(units
        .iter()
        .zip(result.best)
        .enumerate()
        .map(|(index, (unit, delta))| Solution {
            task: tasks[unit.task].data.name.clone(),
            det: unit.det,
            delta,
            dev: dev[index],
            test: test[index],
            step: result.best_step[index],
        })
        .collect())
}
