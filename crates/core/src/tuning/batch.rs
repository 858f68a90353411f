//! Assembling encoder batches from rows of many tasks, DETs and codes: the one mechanism every
//! stage uses. A row names its task, example, DET and code z; the batch concatenates the label
//! embeddings of the tasks present and masks each row to its own task's labels.

use std::path::Path;

use anyhow::Context;
use ndarray::{Array1, Array2, ArrayView2};

use super::data::{Example, TaskData};
use crate::classifier::{code_matrices, embed_labels};
use crate::det::DetKind;
use crate::model::{Batch, DeltaParams, Encoder, GradBatch, Gradients, Tokens};

/// A task's data with its label descriptions embedded by the frozen model.
#[derive(Debug, Clone)]
pub struct TrainTask {
    pub data: TaskData,
    /// [labels, H]
    pub label_embeddings: Array2<f32>,
}

impl TrainTask {
    /// Reads a task directory and embeds its label descriptions.
    pub fn load(
        encoder: &Encoder,
        dir: &Path,
        max_per_split: Option<usize>,
    ) -> anyhow::Result<Self> {
        let data = TaskData::load(dir, max_per_split)?;
        let label_embeddings = embed_labels(&data.labels, encoder)
            .with_context(|| format!("embedding the labels of {}", data.name))?;
        Ok(Self {
            data,
            label_embeddings,
        })
    }
}

/// One row of a batch.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    /// Index into the task list the batch is built over.
    pub task: usize,
    pub example: &'a Example,
    pub det: DetKind,
    /// The code z this row decodes (one-hot over tasks in original-space training).
    pub z: &'a [f32],
    /// The row's weight in the loss; 1/n over a unit's n rows gives each unit a mean loss.
    pub weight: f32,
}

/// Tokens, z and DET selector of some rows.
pub struct EncodedRows {
    pub tokens: Tokens,
    pub z: Array2<f32>,
    pub det_select: Array2<f32>,
}

impl EncodedRows {
    pub fn new(encoder: &Encoder, rows: &[Row<'_>], d: usize) -> anyhow::Result<Self> {
        let inputs: Vec<_> = rows.iter().map(|r| r.example.input.clone()).collect();
        let tokens = encoder.tokenize(&inputs)?;
        let codes = rows.iter().map(|row| (row.z, row.det));
        let (z, det_select) = code_matrices(encoder.manifest(), d, codes)?;
        Ok(Self {
            tokens,
            z,
            det_select,
        })
    }

    pub fn batch(&self) -> Batch<'_> {
        Batch {
            tokens: &self.tokens,
            z: self.z.view(),
            det_select: self.det_select.view(),
        }
    }
}

/// Loss and exact gradients of `rows` under `params`: targets are the label embeddings of every
/// task present, and each row's logits are masked to its own task's labels.
pub fn gradients(
    encoder: &Encoder,
    tasks: &[TrainTask],
    rows: &[Row<'_>],
    params: &DeltaParams,
) -> anyhow::Result<Gradients> {
    let encoded = EncodedRows::new(encoder, rows, params.d())?;
    // Offsets of each task's labels inside the concatenated targets.
    let mut offsets = vec![usize::MAX; tasks.len()];
    let mut classes = 0;
    for row in rows {
        if offsets[row.task] == usize::MAX {
            offsets[row.task] = classes;
            classes += tasks[row.task].label_embeddings.nrows();
        }
    }
    let hidden = encoder.manifest().hidden();
    let mut targets = Array2::zeros((classes, hidden));
    for (task, &offset) in tasks
        .iter()
        .zip(&offsets)
        .filter(|(_, o)| **o != usize::MAX)
    {
        let n = task.label_embeddings.nrows();
        targets
            .slice_mut(ndarray::s![offset..offset + n, ..])
            .assign(&task.label_embeddings);
    }
    let mut class_mask = Array2::zeros((rows.len(), classes));
    let mut labels = Array1::zeros(rows.len());
    let mut row_weight = Array1::zeros(rows.len());
    for (index, row) in rows.iter().enumerate() {
        let offset = offsets[row.task];
        let n = tasks[row.task].label_embeddings.nrows();
        class_mask
            .slice_mut(ndarray::s![index, offset..offset + n])
            .fill(1.0);
        labels[index] = (offset + row.example.label) as i64;
        row_weight[index] = row.weight;
    }
    let batch = GradBatch {
        batch: encoded.batch(),
        targets: targets.view(),
        class_mask: class_mask.view(),
        labels: labels.view(),
        row_weight: row_weight.view(),
    };
    Ok(encoder.gradients(batch, params)?)
}

/// Cross-entropy of each row of `embeddings` against its task's labels (scaled cosine logits).
pub fn row_losses(
    embeddings: ArrayView2<f32>,
    tasks: &[TrainTask],
    rows: &[Row<'_>],
    logit_scale: f32,
) -> Vec<f32> {
    rows.iter()
        .zip(embeddings.rows())
        .map(|(row, embedding)| {
            let logits = tasks[row.task].label_embeddings.dot(&embedding) * logit_scale;
            let max = logits.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let log_sum = logits.mapv(|l| (l - max).exp()).sum().ln() + max;
            log_sum - logits[row.example.label]
        })
        .collect()
}
