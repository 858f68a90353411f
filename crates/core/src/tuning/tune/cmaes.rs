//! Stage 2 by CMA-ES, derivative-free (BBT-style): each generation scores its whole population in
//! one encoder run (rows = candidates × minibatch).

use std::time::{Duration, Instant};

use crate::det::DetKind;
use crate::model::Encoder;
use crate::subspace::Subspace;
use crate::tuning::batch::{EncodedRows, Row, TrainTask, row_losses};
use crate::tuning::data::{Split, minibatch};
use crate::tuning::fit::{Space, Unit, evaluate_values};
use crate::tuning::head::HeadTuning;
use crate::tuning::optim::CmaEs;
use crate::tuning::progress::Progress;

use super::start::initial_z;
use super::trace::{Position, Trace};
use super::{Tuned, finish};

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
