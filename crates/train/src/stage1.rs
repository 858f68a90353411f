//! Stage 1: the unified subspace from stage-0 solutions (paper §2 "Projections", "Loss").
//!
//! 1. Joint decomposition: each task's stacked δ = [δ_L; δ_A; δ_P] (δ = θ − θ⁰) is a
//!    column of M [3D, T]; the top-d left singular vectors of M (via the T×T Gram matrix) give
//!    U_stack, so every task gets one shared code z_t = Σ Vᵀ e_t. U_det is U_stack's block for that
//!    DET and base_det = θ⁰_det. Directions beyond M's rank (d > T) are random, orthogonalised.
//! 2. Refinement with the paper's objective: per task and DET a code z_{t,det} (from z_t), and
//!    loss = Σ_det [α_rec ‖δ_{t,det} − U_det z_{t,det}‖ + task loss of DET det decoding the random
//!    convex mix α z_{t,A} + β z_{t,L} + (1−α−β) z_{t,P}], α ~ U(0,1), β ~ U(0, 1−α).

use std::time::Instant;

use anyhow::{Context, ensure};
use nalgebra::{DMatrix, SymmetricEigen};
use ndarray::{Array1, Array2};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::solution::Solution;
use deltaspace_core::det::{DetKind, Theta0};
use deltaspace_core::model::{DetParams, Encoder, Manifest};
use deltaspace_core::subspace::Subspace;
use deltaspace_core::tuning::batch::{self, Row, TrainTask};
use deltaspace_core::tuning::data::{Split, minibatch};
use deltaspace_core::tuning::fit::{Space, Unit, evaluate_values};
use deltaspace_core::tuning::head::HeadTuning;
use deltaspace_core::tuning::optim::{Adam, Optimizer};
use deltaspace_core::tuning::progress::Progress;

/// The stage-0 solutions of one task, one per DET (column order).
pub struct TaskSolutions {
    pub task: String,
    /// δ = θ − θ⁰ per DET, in `det_select` column order.
    pub deltas: Vec<Vec<f32>>,
}

/// Groups solution files by task; only tasks with every DET of the model are kept.
pub fn collect_solutions(
    solutions: &[Solution],
    manifest: &Manifest,
) -> anyhow::Result<Vec<TaskSolutions>> {
    // The paper's convex mix weighs Adapter, LoRA and Prefix: a model exporting fewer has no mix.
    let missing: Vec<DetKind> = (DetKind::ALL.into_iter())
        .filter(|det| det.column(manifest).is_err())
        .collect();
    ensure!(
        missing.is_empty(),
        "stage 1 mixes the codes of all three DETs, and the model lacks {missing:?}"
    );
    let mut names: Vec<&str> = solutions.iter().map(|s| s.task.as_str()).collect();
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        let mut deltas = vec![Vec::new(); manifest.dets.len()];
        for solution in solutions.iter().filter(|s| s.task == name) {
            let column = solution.det.column(manifest)?;
            // Two files of one (task, DET), another seed say, would keep whichever came last.
            ensure!(
                deltas[column].is_empty(),
                "two {} solutions of task {name}: keep one in the solutions directory",
                solution.det
            );
            deltas[column] = solution.delta.clone();
        }
        if deltas.iter().all(|d| !d.is_empty()) {
            out.push(TaskSolutions {
                task: name.to_string(),
                deltas,
            });
        } else {
            tracing::warn!(task = name, "skipped: it lacks a solution for some DET");
        }
    }
    ensure!(!out.is_empty(), "no task has solutions for every DET");
    Ok(out)
}

/// The joint decomposition: U per DET `[D, d]` and each task's code z_t `[d]`.
pub fn decompose(
    solutions: &[TaskSolutions],
    d: usize,
    seed: u64,
) -> (Vec<Array2<f32>>, Vec<Vec<f32>>) {
    let tasks = solutions.len();
    let sizes: Vec<usize> = solutions[0].deltas.iter().map(Vec::len).collect();
    let total: usize = sizes.iter().sum();
    // Column t of M is task t's stacked δ.
    let column = |t: usize| solutions[t].deltas.iter().flatten().map(|&v| f64::from(v));
    let mut gram = DMatrix::<f64>::zeros(tasks, tasks);
    for a in 0..tasks {
        for b in a..tasks {
            let dot: f64 = column(a).zip(column(b)).map(|(x, y)| x * y).sum();
            gram[(a, b)] = dot;
            gram[(b, a)] = dot;
        }
    }
    // M = W Σ Vᵀ with MᵀM = V Σ² Vᵀ; W = M V Σ⁻¹.
    let eigen = SymmetricEigen::new(gram);
    let mut order: Vec<usize> = (0..tasks).collect();
    order.sort_by(|&a, &b| eigen.eigenvalues[b].total_cmp(&eigen.eigenvalues[a]));
    let rank = order
        .iter()
        .filter(|&&i| eigen.eigenvalues[i] > 1e-9 * eigen.eigenvalues[order[0]].max(1e-30))
        .count();
    let mut u_stack = Array2::<f64>::zeros((total, d));
    let mut codes = vec![vec![0.0f32; d]; tasks];
    for (k, &i) in order.iter().take(rank.min(d)).enumerate() {
        let sigma = eigen.eigenvalues[i].sqrt();
        let v = eigen.eigenvectors.column(i);
        for t in 0..tasks {
            for (row, value) in column(t).enumerate() {
                u_stack[[row, k]] += value * v[t] / sigma;
            }
            codes[t][k] = (sigma * v[t]) as f32;
        }
    }
    // Beyond the rank: random directions, Gram-Schmidt against the ones before. Their stream is
    // not --complete-to's (`RandomColumns`, drawn from `seed` itself), which would otherwise draw
    // these very values again as its first column.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ BEYOND_RANK_STREAM);
    for k in rank.min(d)..d {
        let mut direction: Array1<f64> = (0..total)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        for j in 0..k {
            let previous = u_stack.column(j);
            let projection = previous.dot(&direction);
            direction.scaled_add(-projection, &previous);
        }
        let norm = direction.dot(&direction).sqrt();
        u_stack.column_mut(k).assign(&(direction / norm));
    }
    let mut blocks = Vec::new();
    let mut start = 0;
    for size in sizes {
        blocks.push(
            u_stack
                .slice(ndarray::s![start..start + size, ..])
                .mapv(|v| v as f32),
        );
        start += size;
    }
    (blocks, codes)
}

/// Rescales each direction k (every DET's column k of U) by the RMS of the codes along it, and
/// the codes by its inverse, so that U z_t is unchanged and the upstream codes have unit RMS on
/// every learned coordinate. The decomposition's directions have unit norm across the stacked
/// DETs, while the upstream solutions lie tens of units along them (a MiniLM stage-0 δ has a
/// norm of 10–55 per DET); stage 2's steps in z, at most its learning rate per coordinate with
/// Adam, then move θ along a learned direction about as far as upstream solutions differ.
/// Random directions (codes all 0) are left as they are.
pub fn unit_codes(u: &mut [Array2<f32>], codes: &mut [Vec<f32>]) {
    let Some(d) = codes.first().map(Vec::len) else {
        return;
    };
    for k in 0..d {
        let mean_square =
            codes.iter().map(|z| f64::from(z[k]).powi(2)).sum::<f64>() / codes.len() as f64;
        let rms = mean_square.sqrt() as f32;
        if rms <= 0.0 {
            continue;
        }
        for block in u.iter_mut() {
            block.column_mut(k).mapv_inplace(|v| v * rms);
        }
        for z in codes.iter_mut() {
            z[k] /= rms;
        }
    }
}

/// How stage 1 runs.
#[derive(Debug, Clone)]
pub struct SubspaceOptions {
    pub d: usize,
    /// Refinement steps (0: the decomposition alone).
    pub steps: usize,
    /// Training rows per (task, DET) per step.
    pub batch: usize,
    /// Relative learning rate: U and the codes step by lr × their own RMS value.
    pub lr: f32,
    /// α_rec: weight of the reconstruction term.
    pub rec_alpha: f32,
    pub eval_every: usize,
    pub eval_limit: Option<usize>,
    pub run_rows: usize,
    pub seed: u64,
    pub name: String,
    /// Scale each learned direction so that the upstream codes have unit RMS along it
    /// ([`unit_codes`]).
    pub unit_codes: bool,
}

/// What refinement did on held-out data: the mean dev accuracy over the upstream tasks and DETs
/// (each task's code decoded through every DET), of the decomposition alone and of the best
/// refined U, which is kept only if it is higher.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RefinementDev {
    pub decomposition: f32,
    pub best: f32,
    /// The refinement step of `best` (0: the decomposition itself).
    pub best_step: usize,
}

/// The subspace stage 1 found, carrying the upstream tasks' codes, and what its refinement
/// measured (none without refinement).
pub struct FoundSubspace {
    pub subspace: Subspace,
    pub dev: Option<RefinementDev>,
}

/// Finds the subspace: decomposition, then refinement on the tasks' data (same order as `solutions`;
/// when it is given, the codes carry the tasks' label descriptions).
pub fn find_subspace(
    encoder: &Encoder,
    theta0: &Theta0,
    solutions: &[TaskSolutions],
    tasks: &[TrainTask],
    options: &SubspaceOptions,
) -> anyhow::Result<FoundSubspace> {
    let in_order = tasks.len() == solutions.len()
        && (tasks.iter().zip(solutions)).all(|(task, solution)| task.data.name == solution.task);
    ensure!(
        in_order || (tasks.is_empty() && options.steps == 0),
        "stage 1 needs each solution's task data, in the solutions' order: refinement trains on it"
    );
    let started = Instant::now();
    let (mut u, mut codes) = decompose(solutions, options.d, options.seed);
    if options.unit_codes {
        unit_codes(&mut u, &mut codes);
    }
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        d = options.d,
        tasks = solutions.len(),
        "decomposed"
    );
    let stage = Refinement {
        encoder,
        theta0,
        solutions,
        tasks,
        options,
        dets: encoder
            .manifest()
            .dets
            .iter()
            .map(|l| l.name.parse())
            .collect::<Result<_, _>>()?,
    };
    let (u, codes, dev) = match options.steps {
        0 => (u, codes, None),
        _ => {
            let refined = stage.refine(u, &codes)?;
            (refined.u, refined.codes, Some(refined.dev))
        }
    };
    let names = solutions.iter().map(|s| s.task.clone()).collect();
    let mut subspace = stage.subspace(&u)?.with_codes(names, codes)?;
    if !tasks.is_empty() {
        // The tasks' data is at hand: their label descriptions go with their codes.
        let descriptions = tasks.iter().map(|task| {
            let labels = task.data.labels.iter();
            labels.map(|label| label.description.clone()).collect()
        });
        subspace = subspace.with_code_descriptions(descriptions.collect())?;
    }
    Ok(FoundSubspace { subspace, dev })
}

/// Refinement with the paper's objective (module docs, step 2): what it reads.
struct Refinement<'a> {
    encoder: &'a Encoder,
    theta0: &'a Theta0,
    solutions: &'a [TaskSolutions],
    tasks: &'a [TrainTask],
    options: &'a SubspaceOptions,
    /// The DETs in column order.
    dets: Vec<DetKind>,
}

/// What refinement keeps: U and each task's code at its best step, and what it measured.
struct Refined {
    u: Vec<Array2<f32>>,
    codes: Vec<Vec<f32>>,
    dev: RefinementDev,
}

/// One task's random convex mix of its per-DET codes.
struct Mix {
    /// Each DET's weight, in column order.
    weights: Vec<f32>,
    /// Σ_k weights[k] z_{t,k}.
    code: Vec<f32>,
}

/// The task loss of one refinement step and its gradients.
struct TaskGradients {
    loss: f32,
    /// d loss / d U, per DET.
    grad_u: Vec<Array2<f32>>,
    /// d loss / d mix code, per task.
    grad_mix: Vec<Vec<f32>>,
}

impl Refinement<'_> {
    /// The subspace with these U (base = θ⁰).
    fn subspace(&self, u: &[Array2<f32>]) -> anyhow::Result<Subspace> {
        let dets = u
            .iter()
            .enumerate()
            .map(|(c, u)| DetParams {
                u: u.clone(),
                base: self.theta0.det(c).clone(),
            })
            .collect();
        Ok(Subspace::new(
            &self.options.name,
            self.encoder.manifest(),
            dets,
        )?)
    }

    /// Trains U and the per-(task, DET) codes z (flattened task-major) from the decomposition,
    /// and returns the U of the best mean dev accuracy, with each task's code there: the
    /// decomposition itself is the first candidate, so refinement is kept only where it helps.
    fn refine(&self, mut u: Vec<Array2<f32>>, codes: &[Vec<f32>]) -> anyhow::Result<Refined> {
        let (options, n_dets) = (self.options, self.dets.len());
        let mut z: Vec<Vec<f32>> = (0..self.tasks.len() * n_dets)
            .map(|i| codes[i / n_dets].clone())
            .collect();
        // Adam steps are about lr per value whatever the gradient's scale, and U's entries are
        // tiny (unit columns over 3D values) while codes are O(‖δ‖): so --lr is relative, and
        // each group steps by lr × its own RMS. With --unit-codes the learned columns are 10–55
        // times longer than the random ones, so one RMS over U gives the random columns the
        // larger relative steps; the refinement was measured only without it.
        let u_lr = options.lr * rms(u.iter().flat_map(|m| m.iter().copied()));
        let z_lr = options.lr * rms(z.iter().flatten().copied());
        let mut u_optimizers: Vec<Adam> = u.iter().map(|m| Adam::new(m.len(), u_lr)).collect();
        let mut z_optimizers: Vec<Adam> = z.iter().map(|c| Adam::new(c.len(), z_lr)).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(options.seed);
        let decomposition = self.dev_accuracy(&u, &z)?;
        let mut best = (decomposition, u.clone(), 0, z.clone());
        tracing::info!(dev_accuracy = decomposition, "the decomposition alone");
        let progress = Progress::new("train subspace", options.steps as u64);
        for step in 0..options.steps {
            let mixes = self.convex_mixes(&mut rng, &z);
            let TaskGradients {
                loss: task_loss,
                mut grad_u,
                grad_mix,
            } = self.task_gradients(&u, &mixes, step)?;
            // The task loss reaches z_{t,k} through the mix, with weight w_k.
            let mut grad_z: Vec<Vec<f32>> = (0..z.len())
                .map(|i| {
                    let (t, k) = (i / n_dets, i % n_dets);
                    grad_mix[t]
                        .iter()
                        .map(|g| mixes[t].weights[k] * g)
                        .collect()
                })
                .collect();
            let rec_loss = self.reconstruction(&u, &z, &mut grad_u, &mut grad_z);
            for ((matrix, gradient), optimizer) in u.iter_mut().zip(&grad_u).zip(&mut u_optimizers)
            {
                let values = matrix
                    .as_slice_mut()
                    .context("U is contiguous. This is a bug.")?;
                optimizer.step(values, gradient.as_slice().context("contiguous gradient")?);
            }
            for ((code, gradient), optimizer) in z.iter_mut().zip(&grad_z).zip(&mut z_optimizers) {
                optimizer.step(code, gradient);
            }
            let done = step + 1;
            let mean_loss = (task_loss + rec_loss) / self.tasks.len() as f32;
            if done.is_multiple_of(options.eval_every.max(1)) || done == options.steps {
                let mean = self.dev_accuracy(&u, &z)?;
                // Diverged values (a learning rate too large) score their logits' first label,
                // which can win on a skewed dev set: never the best.
                if mean > best.0 && all_finite(&u, &z) {
                    best = (mean, u.clone(), done, z.clone());
                }
                progress.report(done as u64, mean_loss, Some(mean));
            } else {
                progress.report(done as u64, mean_loss, None);
            }
        }
        progress.finish();
        let (best_dev, best_u, best_step, best_z) = best;
        let dev = RefinementDev {
            decomposition,
            best: best_dev,
            best_step,
        };
        tracing::info!(?dev, "refinement");
        // A task's code: the mean of its per-DET codes (the mix with equal weights).
        let task_codes = best_z
            .chunks(n_dets)
            .map(|codes| {
                (0..options.d)
                    .map(|i| codes.iter().map(|z| z[i]).sum::<f32>() / n_dets as f32)
                    .collect()
            })
            .collect();
        Ok(Refined {
            u: best_u,
            codes: task_codes,
            dev,
        })
    }

    /// Each task's random convex mix α z_A + β z_L + (1−α−β) z_P, α ~ U(0, 1), β ~ U(0, 1−α):
    /// α to Adapter, which the paper favours.
    fn convex_mixes(&self, rng: &mut impl Rng, z: &[Vec<f32>]) -> Vec<Mix> {
        let n_dets = self.dets.len();
        (0..self.tasks.len())
            .map(|t| {
                let alpha: f32 = rng.random();
                let beta: f32 = rng.random_range(0.0..=(1.0 - alpha).max(0.0));
                let weights = mix_weights(&self.dets, alpha, beta);
                let code = (0..self.options.d)
                    .map(|i| (0..n_dets).map(|k| weights[k] * z[t * n_dets + k][i]).sum())
                    .collect();
                Mix { weights, code }
            })
            .collect()
    }

    /// The task loss of one step: every DET of every task decodes the task's mix on a minibatch
    /// of its training rows.
    fn task_gradients(
        &self,
        u: &[Array2<f32>],
        mixes: &[Mix],
        step: usize,
    ) -> anyhow::Result<TaskGradients> {
        let options = self.options;
        let subspace = self.subspace(u)?;
        let mut rows: Vec<Row> = Vec::new();
        let mut row_task = Vec::new();
        for (t, task) in self.tasks.iter().enumerate() {
            let train = &task.data.train;
            for (k, &det) in self.dets.iter().enumerate() {
                let stream = t * self.dets.len() + k;
                for i in minibatch(train.len(), options.seed, stream, step, options.batch) {
                    rows.push(Row {
                        task: t,
                        example: &train[i],
                        det,
                        z: &mixes[t].code,
                        weight: 1.0 / options.batch as f32,
                        classes: &task.descriptions,
                    });
                    row_task.push(t);
                }
            }
        }
        let mut grad_u: Vec<Array2<f32>> = u.iter().map(|m| Array2::zeros(m.dim())).collect();
        let mut grad_mix = vec![vec![0.0f32; options.d]; self.tasks.len()];
        let mut loss = 0.0;
        let run_rows = options.run_rows.max(1);
        for (chunk, chunk_tasks) in rows.chunks(run_rows).zip(row_task.chunks(run_rows)) {
            let output = batch::gradients(self.encoder, chunk, subspace.params())?.output;
            loss += output.loss;
            for (k, g) in output.grad_u.iter().enumerate() {
                grad_u[k] += g;
            }
            for (row, &t) in chunk_tasks.iter().enumerate() {
                for (g, v) in grad_mix[t].iter_mut().zip(output.grad_z.row(row)) {
                    *g += v;
                }
            }
        }
        Ok(TaskGradients {
            loss,
            grad_u,
            grad_mix,
        })
    }

    /// The reconstruction term α_rec Σ ‖r‖, r = δ − U z, added to the gradients
    /// (d‖r‖/dU = −r zᵀ/‖r‖, d‖r‖/dz = −Uᵀ r/‖r‖); returns its value.
    fn reconstruction(
        &self,
        u: &[Array2<f32>],
        z: &[Vec<f32>],
        grad_u: &mut [Array2<f32>],
        grad_z: &mut [Vec<f32>],
    ) -> f32 {
        let (n_dets, rec_alpha) = (self.dets.len(), self.options.rec_alpha);
        let mut loss = 0.0;
        for (t, solution) in self.solutions.iter().enumerate() {
            for k in 0..n_dets {
                let code = Array1::from(z[t * n_dets + k].clone());
                let residual = Array1::from(solution.deltas[k].clone()) - u[k].dot(&code);
                let norm = residual.dot(&residual).sqrt().max(1e-12);
                loss += rec_alpha * norm;
                let scale = -rec_alpha / norm;
                for (mut row, r) in grad_u[k].rows_mut().into_iter().zip(residual.iter()) {
                    row.scaled_add(scale * r, &code);
                }
                let g = u[k].t().dot(&residual) * scale;
                for (out, g) in grad_z[t * n_dets + k].iter_mut().zip(g.iter()) {
                    *out += g;
                }
            }
        }
        loss
    }

    /// Selection as in the paper: the mean dev accuracy of every DET decoding its task's mixed
    /// code (here the mix's centre, the mean of the task's codes).
    fn dev_accuracy(&self, u: &[Array2<f32>], z: &[Vec<f32>]) -> anyhow::Result<f32> {
        let n_dets = self.dets.len();
        let centre = |t: usize| -> Vec<f32> {
            (0..self.options.d)
                .map(|i| (0..n_dets).map(|k| z[t * n_dets + k][i]).sum::<f32>() / n_dets as f32)
                .collect()
        };
        let units: Vec<Unit> = (0..self.tasks.len())
            .flat_map(|task| self.dets.iter().map(move |&det| Unit::new(task, det)))
            .collect();
        let codes: Vec<Vec<f32>> = units.iter().map(|unit| centre(unit.task)).collect();
        let candidate = self.subspace(u)?;
        let space = Space::Subspace {
            subspace: &candidate,
            head: HeadTuning::None,
            train_z: true,
        };
        let dev = evaluate_values(
            self.encoder,
            self.tasks,
            &units,
            &space,
            &codes,
            Split::Dev,
            self.options.eval_limit,
        )?;
        Ok(dev.iter().map(|m| m.accuracy).sum::<f32>() / dev.len() as f32)
    }
}

/// The root mean square of `values` (at least 1e-12).
fn rms(values: impl Iterator<Item = f32>) -> f32 {
    let (sum, n) = values.fold((0.0f64, 0usize), |(s, n), v| (s + f64::from(v * v), n + 1));
    ((sum / n.max(1) as f64).sqrt() as f32).max(1e-12)
}

/// The weight of each DET's code in the paper's random convex mix α z_A + β z_L + (1−α−β) z_P,
/// in the order of `dets` (the manifest's column order, which is not the mix's).
fn mix_weights(dets: &[DetKind], alpha: f32, beta: f32) -> Vec<f32> {
    dets.iter()
        .map(|det| match det {
            DetKind::Adapter => alpha,
            DetKind::Lora => beta,
            DetKind::Prefix => 1.0 - alpha - beta,
        })
        .collect()
}

/// Salts the seed of the directions drawn beyond the solutions' rank.
const BEYOND_RANK_STREAM: u64 = 0xbe70_d0a4_c0de_0001;

/// Every value of U and of the codes is finite.
fn all_finite(u: &[Array2<f32>], z: &[Vec<f32>]) -> bool {
    let finite = |v: &f32| v.is_finite();
    u.iter().all(|matrix| matrix.iter().all(finite)) && z.iter().all(|code| code.iter().all(finite))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second file of one (task, DET) replaced the first in path order, without a word.
    #[test]
    fn two_solutions_of_one_task_and_det_are_refused() {
        let tiny =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
        let manifest = Manifest::load(&tiny).unwrap();
        let scores = deltaspace_core::tuning::eval::Scores {
            accuracy: 0.5,
            macro_f1: 0.5,
            n: 2,
        };
        let solution = |det: DetKind| Solution {
            task: "sst2".into(),
            det,
            delta: vec![0.0; manifest.det(det.name()).unwrap().size],
            dev: scores,
            test: scores,
            step: 1,
        };
        let every: Vec<Solution> = DetKind::ALL.into_iter().map(solution).collect();
        assert_eq!(collect_solutions(&every, &manifest).unwrap().len(), 1);
        let twice = [&every[..], &[solution(DetKind::Lora)]].concat();
        let error = (collect_solutions(&twice, &manifest).map(drop))
            .unwrap_err()
            .to_string();
        assert!(error.contains("two lora solutions of task sst2"), "{error}");
    }

    /// With --dim beyond the solutions' rank and --complete-to, both drew from one seed's stream,
    /// so the completion's first column repeated the decomposition's drawn one (cosine ≈ 1).
    #[test]
    fn directions_drawn_beyond_the_rank_are_not_drawn_again_by_the_completion() {
        use deltaspace_core::subspace::RandomColumns;
        let tiny =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
        let manifest = Manifest::load(&tiny).unwrap();
        let solutions: Vec<TaskSolutions> = (0..2)
            .map(|t| TaskSolutions {
                task: format!("t{t}"),
                deltas: (manifest.dets.iter())
                    .map(|layout| {
                        (0..layout.size)
                            .map(|i| ((i * (t + 2)) % 7) as f32)
                            .collect()
                    })
                    .collect(),
            })
            .collect();
        let seed = 7;
        let (u, _) = decompose(&solutions, 3, seed);
        let dets = (u.into_iter())
            .map(|u| DetParams {
                base: ndarray::Array1::zeros(u.nrows()),
                u,
            })
            .collect();
        let completed = Subspace::new("hybrid", &manifest, dets)
            .unwrap()
            .with_random_columns(&manifest, RandomColumns { count: 1, seed })
            .unwrap();
        for det in completed.params().dets() {
            let (drawn, completion) = (det.u.column(2), det.u.column(3));
            let cosine =
                drawn.dot(&completion) / (drawn.dot(&drawn) * completion.dot(&completion)).sqrt();
            assert!(cosine.abs() < 0.5, "cosine {cosine}");
        }
    }

    #[test]
    fn diverged_values_are_not_finite() {
        let u = vec![Array2::<f32>::zeros((2, 2))];
        assert!(all_finite(&u, &[vec![1.0, 2.0]]));
        assert!(!all_finite(&u, &[vec![1.0, f32::NAN]]));
        assert!(!all_finite(
            &[Array2::from_elem((1, 1), f32::INFINITY)],
            &[vec![]]
        ));
    }

    #[test]
    fn the_mix_gives_alpha_to_adapter_beta_to_lora_and_the_rest_to_prefix() {
        let columns = [DetKind::Lora, DetKind::Adapter, DetKind::Prefix];
        let weights = mix_weights(&columns, 0.6, 0.3);
        assert_eq!(weights[0], 0.3);
        assert_eq!(weights[1], 0.6);
        assert!((weights[2] - 0.1).abs() < 1e-6);
    }

    #[test]
    fn unit_codes_keep_each_delta_and_give_learned_coordinates_unit_rms() {
        let solutions: Vec<TaskSolutions> = (0..3)
            .map(|t| TaskSolutions {
                task: format!("t{t}"),
                deltas: vec![
                    (0..6)
                        .map(|i| ((i * 7 + t * 3) % 5) as f32 * 4.0 - 8.0)
                        .collect(),
                    (0..4).map(|i| ((i + t * 2) % 3) as f32 * 10.0).collect(),
                ],
            })
            .collect();
        let (mut u, mut codes) = decompose(&solutions, 4, 1);
        let decoded = |u: &[Array2<f32>], z: &[f32]| -> Vec<f32> {
            let z = ndarray::ArrayView1::from(z);
            u.iter().flat_map(|block| block.dot(&z).to_vec()).collect()
        };
        let before: Vec<Vec<f32>> = codes.iter().map(|z| decoded(&u, z)).collect();
        let random_column = u[0].column(3).to_owned();
        unit_codes(&mut u, &mut codes);
        for (t, z) in codes.iter().enumerate() {
            let after = decoded(&u, z);
            for (a, b) in after.iter().zip(&before[t]) {
                assert!(
                    (a - b).abs() <= 1e-3 * b.abs().max(1.0),
                    "task {t}: {a} vs {b}"
                );
            }
        }
        for k in 0..3 {
            let rms = (codes.iter().map(|z| z[k] * z[k]).sum::<f32>() / 3.0).sqrt();
            assert!((rms - 1.0).abs() < 1e-4, "direction {k}: RMS {rms}");
        }
        assert_eq!(
            u[0].column(3),
            random_column,
            "the random direction is left as it was"
        );
    }
}
