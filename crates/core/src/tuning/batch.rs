//! Assembling encoder batches from rows of many tasks, DETs and codes: the one mechanism every
//! stage uses. A row names its task, example, DET, code z and the classes it is scored against;
//! the batch concatenates the classes present and masks each row to its own.

use std::path::Path;

use anyhow::Context;
use ndarray::{Array1, Array2, ArrayView2, Axis};

use super::data::{Example, TaskData};
use crate::classifier::{Classes, code_matrices, embed_labels};
use crate::det::DetKind;
use crate::model::{Batch, DeltaParams, Encoder, GradBatch, Gradients, Tokens};

/// A task's data with its label descriptions embedded by the frozen model.
#[derive(Debug, Clone)]
pub struct TrainTask {
    pub data: TaskData,
    /// The descriptions as classes: what a task without a head is scored against.
    pub descriptions: Classes,
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
            descriptions: Classes::descriptions(label_embeddings),
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
    /// The classes the row is scored against (its task's descriptions, or its unit's head).
    pub classes: &'a Classes,
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

/// The gradient graph's outputs for some rows, with where each row's classes sit in `logits`.
pub struct RowGradients {
    pub output: Gradients,
    /// The column of `output.logits` where each row's first class is.
    pub class_offset: Vec<usize>,
}

/// Loss and exact gradients of `rows` under `params`: the targets are the prototypes of every
/// distinct [`Classes`] present, each row's logits get its classes' biases and are masked to
/// its own classes.
pub fn gradients(
    encoder: &Encoder,
    rows: &[Row<'_>],
    params: &DeltaParams,
) -> anyhow::Result<RowGradients> {
    let encoded = EncodedRows::new(encoder, rows, params.d())?;
    // Each distinct Classes once, in order of first use; rows refer to theirs by address.
    let mut present: Vec<(&Classes, usize)> = Vec::new();
    let mut class_offset = Vec::with_capacity(rows.len());
    let mut classes = 0;
    for row in rows {
        let offset = match present.iter().find(|(c, _)| std::ptr::eq(*c, row.classes)) {
            Some(&(_, offset)) => offset,
            None => {
                present.push((row.classes, classes));
                classes += row.classes.len();
                classes - row.classes.len()
            }
        };
        class_offset.push(offset);
    }
    let hidden = encoder.manifest().hidden();
    let mut targets = Array2::zeros((classes, hidden));
    for (block, offset) in &present {
        targets
            .slice_mut(ndarray::s![*offset..*offset + block.len(), ..])
            .assign(&block.prototypes);
    }
    let mut class_mask = Array2::zeros((rows.len(), classes));
    let mut logit_bias = Array2::zeros((rows.len(), classes));
    let mut labels = Array1::zeros(rows.len());
    let mut row_weight = Array1::zeros(rows.len());
    for (index, (row, &offset)) in rows.iter().zip(&class_offset).enumerate() {
        let span = ndarray::s![index, offset..offset + row.classes.len()];
        class_mask.slice_mut(span).fill(1.0);
        logit_bias.slice_mut(span).assign(&row.classes.bias);
        labels[index] = (offset + row.example.label) as i64;
        row_weight[index] = row.weight;
    }
    let batch = GradBatch {
        batch: encoded.batch(),
        targets: targets.view(),
        class_mask: class_mask.view(),
        logit_bias: logit_bias.view(),
        labels: labels.view(),
        row_weight: row_weight.view(),
    };
    Ok(RowGradients {
        output: encoder.gradients(batch, params)?,
        class_offset,
    })
}

/// Cross-entropy of each row of `embeddings` against its classes.
pub fn row_losses(embeddings: ArrayView2<f32>, rows: &[Row<'_>], logit_scale: f32) -> Vec<f32> {
    rows.iter()
        .zip(embeddings.axis_iter(Axis(0)))
        .map(|(row, embedding)| {
            let logits = row.classes.logits(embedding, logit_scale);
            let max = logits.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let log_sum = logits.mapv(|l| (l - max).exp()).sum().ln() + max;
            log_sum - logits[row.example.label]
        })
        .collect()
}
