//! Layer 2: tasks applied to text. Builds one encoder batch from rows of any tasks and DETs
//! (each row carries its own z and DET selector), then scores each row against its own task's
//! label embeddings. Shared by the CLI, the server's batcher and the trainer's evaluation.

use std::sync::Arc;

use ndarray::{Array2, ArrayView1, ArrayView2};

use crate::det::{DetError, DetKind};
use crate::model::{
    Batch, Encoder, LabelScores, Manifest, ModelError, TextInput, cosine_logits, softmax_rows,
};
use crate::subspace::Subspace;
use crate::task::{Label, Task};

/// What can go wrong classifying.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Det(#[from] DetError),
}

/// A task's labels with their descriptions embedded by the frozen model. The embeddings depend
/// only on the labels, so tasks with the same labels can share one set (the server does).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSet {
    pub labels: Vec<Label>,
    /// Label-description embeddings, [labels, H], unit rows.
    pub embeddings: Array2<f32>,
}

impl LabelSet {
    /// Embeds the label descriptions with the frozen model.
    pub fn embed(labels: Vec<Label>, encoder: &Encoder) -> Result<Self, ModelError> {
        let embeddings = embed_labels(&labels, encoder)?;
        Ok(Self { labels, embeddings })
    }

    /// Label names in order.
    pub fn names(&self) -> Vec<String> {
        self.labels.iter().map(|l| l.name.clone()).collect()
    }
}

/// A task ready to apply: its labels embedded once by the frozen model.
#[derive(Debug, Clone)]
pub struct PreparedTask {
    pub task: Task,
    pub labels: Arc<LabelSet>,
}

impl PreparedTask {
    /// Embeds the task's label descriptions with the frozen model.
    pub fn prepare(task: Task, encoder: &Encoder) -> Result<Self, ClassifyError> {
        let labels = Arc::new(LabelSet::embed(task.labels.clone(), encoder)?);
        Ok(Self { task, labels })
    }
}

/// Embeddings of label descriptions by the frozen model (no DET), [labels, H].
pub fn embed_labels(labels: &[Label], encoder: &Encoder) -> Result<Array2<f32>, ModelError> {
    let descriptions: Vec<TextInput> = labels
        .iter()
        .map(|l| TextInput::single(l.description.clone()))
        .collect();
    encoder.embed_frozen(&descriptions)
}

/// One row to encode: a text, the code z it is decoded with, and the DET that decodes it.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    pub input: &'a TextInput,
    pub z: &'a [f32],
    pub det: DetKind,
}

/// Each row's code z [rows, d] and one-hot DET selector [rows, n_dets], as the graphs take them.
pub fn code_matrices<'a>(
    manifest: &Manifest,
    d: usize,
    rows: impl ExactSizeIterator<Item = (&'a [f32], DetKind)>,
) -> Result<(Array2<f32>, Array2<f32>), ClassifyError> {
    let mut z = Array2::<f32>::zeros((rows.len(), d));
    let mut det_select = Array2::<f32>::zeros((rows.len(), manifest.dets.len()));
    for (index, (code, det)) in rows.enumerate() {
        if code.len() != d {
            let message = format!("row {index}: z has {} values, d = {d}", code.len());
            return Err(ModelError::Shape(message).into());
        }
        z.row_mut(index).assign(&ArrayView1::from(code));
        det_select[[index, det.column(manifest)?]] = 1.0;
    }
    Ok((z, det_select))
}

/// Embeds rows of any tasks and DETs in one encoder run: [rows, H].
pub fn embed_rows(
    encoder: &Encoder,
    subspace: &Subspace,
    rows: &[Row<'_>],
) -> Result<Array2<f32>, ClassifyError> {
    let inputs: Vec<TextInput> = rows.iter().map(|r| r.input.clone()).collect();
    let tokens = encoder.tokenize(&inputs)?;
    let codes = rows.iter().map(|row| (row.z, row.det));
    let (z, det_select) = code_matrices(encoder.manifest(), subspace.d(), codes)?;
    let batch = Batch {
        tokens: &tokens,
        z: z.view(),
        det_select: det_select.view(),
    };
    Ok(encoder.embed(batch, subspace.params())?)
}

/// Label probabilities of each embedding row against a task's labels.
pub fn score(embedding: ArrayView2<f32>, labels: &LabelSet, logit_scale: f32) -> Vec<LabelScores> {
    let probabilities = softmax_rows(&cosine_logits(
        embedding,
        labels.embeddings.view(),
        logit_scale,
    ));
    let names = labels.names();
    probabilities
        .rows()
        .into_iter()
        .map(|p| LabelScores::rank(&names, p.as_slice().unwrap_or_default()))
        .collect()
}

/// Classifies texts of one task, decoding its z with `det` (the task's own DET by default).
pub fn predict(
    encoder: &Encoder,
    subspace: &Subspace,
    task: &PreparedTask,
    det: Option<DetKind>,
    inputs: &[TextInput],
) -> Result<Vec<LabelScores>, ClassifyError> {
    let det = det.unwrap_or(task.task.det);
    let rows: Vec<Row> = inputs
        .iter()
        .map(|input| Row {
            input,
            z: &task.task.z,
            det,
        })
        .collect();
    let embeddings = embed_rows(encoder, subspace, &rows)?;
    Ok(score(
        embeddings.view(),
        &task.labels,
        encoder.manifest().logit_scale,
    ))
}
