//! The baselines a tuned task is compared with, both on the frozen model: [`zero_shot`], label
//! descriptions alone, and [`linear_probe`], the classifier a user would train first:
//! multinomial logistic regression on the frozen model's embeddings (mean-pooled, unit-norm: what
//! the serving graph gives with no DET), with its L2 strength chosen on dev. linfa-logistic fits
//! it (L-BFGS).

use linfa::prelude::*;
use linfa_logistic::{MultiFittedLogisticRegression, MultiLogisticRegression};
use ndarray016 as nd;

use deltaspace_core::det::{DetKind, Theta0};
use deltaspace_core::model::{Encoder, TextInput};
use deltaspace_core::tuning::batch::TrainTask;
use deltaspace_core::tuning::data::Example;
use deltaspace_core::tuning::data::Split;
use deltaspace_core::tuning::eval::{Scores, score_pairs};
use deltaspace_core::tuning::fit::{Space, Unit, evaluate_values};

/// L2 strengths tried, weakest first, per training example (linfa's `alpha` is this times the
/// number of examples, since its objective sums the loss over them).
pub const L2_GRID: [f64; 6] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1];

/// The frozen model scoring `task`'s `split` by its label descriptions alone. LoRA's θ⁰ has
/// B = 0, so decoding δ = 0 through LoRA from θ⁰ is an exact no-op: that is the frozen model.
pub fn zero_shot(
    encoder: &Encoder,
    theta0: &Theta0,
    task: &TrainTask,
    split: Split,
    limit: Option<usize>,
) -> anyhow::Result<Scores> {
    let units = [Unit::new(0, DetKind::Lora)];
    let lora = encoder.manifest().dets[DetKind::Lora.column(encoder.manifest())?].size;
    let scores = evaluate_values(
        encoder,
        std::slice::from_ref(task),
        &units,
        &Space::Original { theta0 },
        &[vec![0.0; lora]],
        split,
        limit,
    )?;
    Ok(scores[0])
}

/// What the probe found on one task.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub l2: f64,
    pub dev: Scores,
    pub test: Scores,
}

/// Fits the probe on the task's train split for every strength of `grid`, keeps the best on dev
/// (the weakest of equals), and scores it on test.
pub fn linear_probe(encoder: &Encoder, task: &TrainTask, grid: &[f64]) -> anyhow::Result<Probe> {
    let data = &task.data;
    let (train, dev, test) = (
        embed(encoder, &data.train)?,
        embed(encoder, &data.dev)?,
        embed(encoder, &data.test)?,
    );
    let labels = data.labels.len();
    let truth = |examples: &[Example]| examples.iter().map(|e| e.label).collect::<Vec<_>>();
    let targets = nd::Array1::from(truth(&data.train));
    let dataset = Dataset::new(train, targets);
    let mut best: Option<(f64, Scores, MultiFittedLogisticRegression<f64, usize>)> = None;
    // linfa's objective sums the loss over examples, so a strength per example scales with them.
    let examples = data.train.len() as f64;
    for &l2 in grid {
        let model = MultiLogisticRegression::default()
            .alpha(l2 * examples)
            .max_iterations(200)
            .fit(&dataset)
            .map_err(|e| anyhow::anyhow!("fitting the probe on {} (l2 {l2}): {e}", data.name))?;
        let scores = score(&model, &dev, &truth(&data.dev), labels);
        if best
            .as_ref()
            .is_none_or(|(_, m, _)| scores.accuracy > m.accuracy)
        {
            best = Some((l2, scores, model));
        }
    }
    let (l2, dev_scores, model) =
        best.ok_or_else(|| anyhow::anyhow!("the probe needs at least one L2 strength"))?;
    Ok(Probe {
        l2,
        dev: dev_scores,
        test: score(&model, &test, &truth(&data.test), labels),
    })
}

fn score(
    model: &MultiFittedLogisticRegression<f64, usize>,
    features: &nd::Array2<f64>,
    truth: &[usize],
    labels: usize,
) -> Scores {
    let predicted = model.predict(features);
    let pairs: Vec<(usize, Option<usize>)> = truth
        .iter()
        .copied()
        .zip(predicted.iter().copied().map(Some))
        .collect();
    score_pairs(&pairs, labels)
}

/// The frozen model's embeddings of `examples`, as the probe's features.
fn embed(encoder: &Encoder, examples: &[Example]) -> anyhow::Result<nd::Array2<f64>> {
    let inputs: Vec<TextInput> = examples.iter().map(|e| e.input.clone()).collect();
    let embeddings = encoder.embed_frozen(&inputs)?;
    let (rows, hidden) = embeddings.dim();
    Ok(nd::Array2::from_shape_fn((rows, hidden), |(r, h)| {
        f64::from(embeddings[[r, h]])
    }))
}
