//! Stage 2 by CMA-ES, derivative-free (BBT-style): each generation scores its whole population in
//! one encoder run (rows = candidates × minibatch).

use std::time::{Duration, Instant};

use crate::det::DetKind;
use crate::model::Encoder;
use crate::subspace::Subspace;
use crate::tuning::batch::{EncodedRows, Row, TrainTask, row_losses};
use crate::tuning::data::{Split, minibatch};
use crate::tuning::fit::{Space, Training, Unit, evaluate_values};
use crate::tuning::head::HeadTuning;
use crate::tuning::optim::CmaEs;
use crate::tuning::progress::Progress;

use super::start::initial_z;
use super::trace::{Position, Trace};
use super::{Choice, Tuned, finish};

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
    let search = Search {
        encoder,
        subspace,
        tasks,
        det,
        options,
        space: Space::Subspace {
            subspace,
            head: HeadTuning::None,
            train_z: true,
        },
    };
    let best = (0..tasks.len())
        .map(|task| search.task(task, trace.as_deref_mut()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let units: Vec<Unit> = (0..tasks.len()).map(|task| Unit::new(task, det)).collect();
    // The search's wall time, as without a trace: its scoring is left out.
    let scoring = trace.map_or(Duration::ZERO, |t| t.scoring);
    let seconds = started.elapsed().saturating_sub(scoring);
    let training = Training {
        encoder,
        tasks,
        units: &units,
        space: search.space,
    };
    // One start: no margin to weigh.
    let choice = Choice {
        start_margin: 0.0,
        limit: options.final_limit,
    };
    finish(training, best, seconds.as_secs_f64(), choice)
}

/// What every task's search shares.
struct Search<'a> {
    encoder: &'a Encoder,
    subspace: &'a Subspace,
    tasks: &'a [TrainTask],
    det: DetKind,
    options: &'a CmaOptions,
    space: Space<'a>,
}

impl Search<'_> {
    /// One task's search: the mean of the generation best on dev (every `eval_every`
    /// generations and at the end).
    fn task(&self, task: usize, mut trace: Option<&mut Trace>) -> anyhow::Result<Vec<f32>> {
        let (options, det) = (self.options, self.det);
        let unit = [Unit::new(task, det)];
        let start = initial_z(self.subspace.d(), options.seed.wrapping_add(task as u64));
        let mut search = CmaEs::new(&start, options.sigma, options.population, options.seed);
        let (mut best_z, mut best_accuracy) = (search.mean(), -1.0);
        let name = &self.tasks[task].data.name;
        let progress = Progress::new(&format!("cmaes {name} {det}"), options.generations as u64);
        let lambda = search.lambda();
        // Seconds of this task's search, evaluations excluded.
        let mut optimizing = Duration::ZERO;
        if let Some(trace) = trace.as_deref_mut() {
            let mean = [search.mean()];
            trace.record(
                self.encoder,
                self.tasks,
                &unit,
                &self.space,
                &mean,
                Position::START,
            )?;
        }
        for generation in 0..options.generations {
            let generation_started = Instant::now();
            let candidates = search.ask();
            let train_len = self.tasks[task].data.train.len();
            let picks = minibatch(train_len, options.seed, task, generation, options.batch);
            let losses = self.losses(task, &candidates, &picks)?;
            search.tell(&losses);
            optimizing += generation_started.elapsed();
            let done = generation + 1;
            let mean_loss = losses.iter().sum::<f32>() / losses.len() as f32;
            let mut dev_accuracy = None;
            if done.is_multiple_of(options.eval_every.max(1)) || done == options.generations {
                let mean = search.mean();
                let dev = evaluate_values(
                    self.encoder,
                    self.tasks,
                    &unit,
                    &self.space,
                    std::slice::from_ref(&mean),
                    Split::Dev,
                    options.eval_limit,
                )?;
                if dev[0].accuracy > best_accuracy {
                    (best_accuracy, best_z) = (dev[0].accuracy, mean);
                }
                dev_accuracy = Some(dev[0].accuracy);
            }
            progress.report(done as u64, mean_loss, dev_accuracy);
            if let Some(trace) = (trace.as_deref_mut()).filter(|t| t.due(done, options.generations))
            {
                // The mean is CMA-ES's current solution, as z is Adam's.
                let mean = [search.mean()];
                let at = Position {
                    step: done,
                    optimizing,
                    evaluations: done * lambda,
                    examples: done * lambda * picks.len(),
                };
                trace.record(self.encoder, self.tasks, &unit, &self.space, &mean, at)?;
            }
        }
        progress.finish();
        Ok(best_z)
    }

    /// Each candidate's mean loss on the training examples `picks` of `task`, all candidates in
    /// one encoder run (rows = candidates × picks).
    fn losses(
        &self,
        task: usize,
        candidates: &[Vec<f32>],
        picks: &[usize],
    ) -> anyhow::Result<Vec<f32>> {
        let data = &self.tasks[task];
        let rows: Vec<Row> = (candidates.iter())
            .flat_map(|z| {
                picks.iter().map(move |&i| Row {
                    task,
                    example: &data.data.train[i],
                    det: self.det,
                    z,
                    weight: 1.0,
                    classes: &data.descriptions,
                })
            })
            .collect();
        let encoded = EncodedRows::new(self.encoder, &rows, self.subspace.d())?;
        let embeddings = self
            .encoder
            .embed(encoded.batch(), self.subspace.params())?;
        let logit_scale = self.encoder.manifest().logit_scale;
        let per_row = row_losses(embeddings.view(), &rows, logit_scale);
        Ok((per_row.chunks(picks.len()))
            .map(|c| c.iter().sum::<f32>() / c.len().max(1) as f32)
            .collect())
    }
}
