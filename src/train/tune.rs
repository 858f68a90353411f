//! Stage 2: only z is trained, through one DET's frozen U (paper §3). Gradient optimizers use
//! the exact d loss/d z of the gradient graph; CMA-ES is derivative-free (BBT-style) and scores
//! a whole population in one encoder run (rows = candidates × minibatch).

use std::time::Instant;

use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use super::batch::{EncodedRows, Row, TrainTask, row_losses};
use super::data::{Split, epoch_indices};
use super::eval::Metrics;
use super::fit::{FitOptions, Space, Unit, evaluate_values, fit};
use super::optim::CmaEs;
use super::progress::Progress;
use crate::det::DetKind;
use crate::model::Encoder;
use crate::subspace::Subspace;

/// The code found for one task, with its scores through the DET it was found with.
#[derive(Debug, Clone)]
pub struct Tuned {
    pub task: usize,
    pub det: DetKind,
    pub z: Vec<f32>,
    pub dev: Metrics,
    pub test: Metrics,
    /// Wall time of the search (all tasks of the run share it).
    pub seconds: f64,
}

/// The paper's init for z: N(0, 0.02²), seeded per task.
fn initial_z(d: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.02).expect("finite std. This is a bug.");
    (0..d).map(|_| normal.sample(&mut rng)).collect()
}

/// Gradient tuning of z for every task through `det`, all tasks in shared runs.
pub fn tune_gradient(
    encoder: &Encoder,
    subspace: &Subspace,
    tasks: &[TrainTask],
    det: DetKind,
    options: &FitOptions,
) -> anyhow::Result<Vec<Tuned>> {
    let units: Vec<Unit> = (0..tasks.len()).map(|task| Unit { task, det }).collect();
    let space = Space::Subspace { subspace };
    let init = (0..tasks.len())
        .map(|t| initial_z(subspace.d(), options.seed + t as u64))
        .collect();
    let result = fit(
        encoder,
        tasks,
        &units,
        space,
        init,
        options,
        &format!("tune {det}"),
    )?;
    finish(
        encoder,
        subspace,
        tasks,
        &units,
        result.best,
        result.seconds,
        options.final_limit,
    )
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
) -> anyhow::Result<Vec<Tuned>> {
    let started = Instant::now();
    let d = subspace.d();
    let space = Space::Subspace { subspace };
    let mut best = Vec::new();
    for (task_index, task) in tasks.iter().enumerate() {
        let unit = [Unit {
            task: task_index,
            det,
        }];
        let mut search = CmaEs::new(
            &initial_z(d, options.seed + task_index as u64),
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
        for generation in 0..options.generations {
            let candidates = search.ask();
            let train = &task.data.train;
            let picks = epoch_indices(
                train.len(),
                options.seed ^ task_index as u64,
                generation * options.batch,
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
                    })
                })
                .collect();
            let encoded = EncodedRows::new(encoder, &rows, d)?;
            let embeddings = encoder.embed(encoded.batch(), subspace.params())?;
            let per_row = row_losses(
                embeddings.view(),
                tasks,
                &rows,
                encoder.manifest().logit_scale,
            );
            let losses: Vec<f32> = per_row
                .chunks(picks.len())
                .map(|c| c.iter().sum::<f32>() / c.len().max(1) as f32)
                .collect();
            search.tell(&losses);
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
        }
        progress.finish();
        best.push(best_z);
    }
    let units: Vec<Unit> = (0..tasks.len()).map(|task| Unit { task, det }).collect();
    finish(
        encoder,
        subspace,
        tasks,
        &units,
        best,
        started.elapsed().as_secs_f64(),
        options.final_limit,
    )
}

/// Full dev and test scores of the chosen codes.
fn finish(
    encoder: &Encoder,
    subspace: &Subspace,
    tasks: &[TrainTask],
    units: &[Unit],
    best: Vec<Vec<f32>>,
    seconds: f64,
    limit: Option<usize>,
) -> anyhow::Result<Vec<Tuned>> {
    let space = Space::Subspace { subspace };
    let dev = evaluate_values(encoder, tasks, units, &space, &best, Split::Dev, limit)?;
    let test = evaluate_values(encoder, tasks, units, &space, &best, Split::Test, limit)?;
    Ok(units
        .iter()
        .zip(best)
        .enumerate()
        .map(|(i, (unit, z))| Tuned {
            task: unit.task,
            det: unit.det,
            z,
            dev: dev[i],
            test: test[i],
            seconds,
        })
        .collect())
}
