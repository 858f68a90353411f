//! Layer 2: tasks applied to text. Builds one encoder batch from rows of any tasks and DETs
//! (each row carries its own z and DET selector), then scores each row against its own task's
//! label embeddings. Shared by the CLI, the server's batcher and the trainer's evaluation.

use std::sync::Arc;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

use crate::det::{DetError, DetKind};
use crate::model::{
    Batch, Embedder, Encoder, LabelScores, Manifest, ModelError, TextInput, Tokens, cosine_logits,
    length_groups, softmax_rows,
};
use crate::subspace::Subspace;
use crate::task::{Head, Label, Task};

/// What can go wrong classifying.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Det(#[from] DetError),
    #[error("head: {0}")]
    Head(String),
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

/// What a row's logits are computed against: one unit-norm prototype `[C, H]` and one bias `[C]` per
/// label, so label c scores `logit_scale · cos(e, p_c) + bias_c`. Without a tuned head the
/// prototypes are the label descriptions' embeddings and the biases are 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Classes {
    pub prototypes: Array2<f32>,
    pub bias: Array1<f32>,
}

impl Classes {
    /// Classes from prototypes of any norm (normalised here) and biases.
    pub fn new(mut prototypes: Array2<f32>, bias: Array1<f32>) -> Self {
        for mut row in prototypes.rows_mut() {
            let norm = row.dot(&row).sqrt().max(1e-12);
            row /= norm;
        }
        Self { prototypes, bias }
    }

    /// The label descriptions alone: their embeddings, no bias.
    pub fn descriptions(embeddings: Array2<f32>) -> Self {
        let bias = Array1::zeros(embeddings.nrows());
        Self::new(embeddings, bias)
    }

    pub fn len(&self) -> usize {
        self.bias.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bias.is_empty()
    }

    /// A head's classes: its prototypes (or the descriptions' embeddings) and its biases.
    pub fn with_head(descriptions: &Array2<f32>, head: &Head) -> Result<Self, ClassifyError> {
        let prototypes = match &head.prototypes {
            None => descriptions.clone(),
            Some(rows) => {
                let hidden = descriptions.ncols();
                if let Some(wrong) = rows.iter().find(|r| r.len() != hidden) {
                    return Err(ClassifyError::Head(format!(
                        "a prototype has {} values, the model's embeddings {hidden}",
                        wrong.len()
                    )));
                }
                Array2::from_shape_fn((rows.len(), hidden), |(c, h)| rows[c][h])
            }
        };
        if head.bias.len() != descriptions.nrows() || prototypes.nrows() != descriptions.nrows() {
            return Err(ClassifyError::Head(format!(
                "{} biases and {} prototypes for {} labels",
                head.bias.len(),
                prototypes.nrows(),
                descriptions.nrows()
            )));
        }
        Ok(Self::new(prototypes, Array1::from(head.bias.clone())))
    }

    /// Label probabilities of each embedding row (unit-norm) against these classes.
    pub fn score(
        &self,
        embedding: ArrayView2<f32>,
        names: &[String],
        logit_scale: f32,
    ) -> Vec<LabelScores> {
        let logits = cosine_logits(embedding, self.prototypes.view(), logit_scale) + &self.bias;
        rank_rows(&logits, names)
    }

    /// `logit_scale · cos(embedding, p_c) + bias_c` for every label c; `embedding` is unit-norm.
    pub fn logits(&self, embedding: ArrayView1<f32>, logit_scale: f32) -> Array1<f32> {
        self.prototypes.dot(&embedding) * logit_scale + &self.bias
    }
}

/// A task ready to apply: its labels embedded once by the frozen model, and its head's classes
/// when it has a head.
#[derive(Debug, Clone)]
pub struct PreparedTask {
    pub task: Task,
    pub labels: Arc<LabelSet>,
    pub head: Option<Classes>,
}

impl PreparedTask {
    /// Embeds the task's label descriptions with the frozen model.
    pub fn prepare(task: Task, encoder: &Encoder) -> Result<Self, ClassifyError> {
        let labels = Arc::new(LabelSet::embed(task.labels.clone(), encoder)?);
        let head = match &task.head {
            Some(head) => Some(Classes::with_head(&labels.embeddings, head)?),
            None => None,
        };
        Ok(Self { task, labels, head })
    }
}

/// Embeddings of label descriptions by the frozen model (no DET), [labels, H].
pub fn embed_labels(labels: &[Label], encoder: &Encoder) -> Result<Array2<f32>, ModelError> {
    embed_labels_in_turns(labels, encoder, || ())
}

/// As [`embed_labels`], holding what `turn` returns while each chunk runs
/// ([`Encoder::embed_frozen_in_turns`]).
pub fn embed_labels_in_turns<T>(
    labels: &[Label],
    encoder: &Encoder,
    turn: impl FnMut() -> T,
) -> Result<Array2<f32>, ModelError> {
    let descriptions: Vec<TextInput> = labels
        .iter()
        .map(|l| TextInput::single(l.description.clone()))
        .collect();
    encoder.embed_frozen_in_turns(&descriptions, turn)
}

/// One row to encode: a text, the code z it is decoded with, and the DET that decodes it.
#[derive(Debug, Clone, Copy)]
pub struct TextRow<'a> {
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

/// Embeds rows of any tasks and DETs: [rows, H], in the rows' order. Tokenizes the texts, then
/// [`embed_tokens`] through `encoder` with the subspace's U and base.
pub fn embed_rows(
    encoder: &Encoder,
    subspace: &Subspace,
    rows: &[TextRow<'_>],
) -> Result<Array2<f32>, ClassifyError> {
    let inputs: Vec<TextInput> = rows.iter().map(|r| r.input.clone()).collect();
    let tokens = encoder.tokenize(&inputs)?;
    let codes: Vec<Code<'_>> = rows.iter().map(|row| (row.z, row.det)).collect();
    embed_tokens(&encoder.with_params(subspace.params()), &tokens, &codes)
}

/// One row's code z and the DET that decodes it.
pub type Code<'a> = (&'a [f32], DetKind);

/// Embeds tokenized rows, each with its own code, through `model`: [rows, H], in the rows' order.
///
/// Rows are padded to the longest row of their run. Where a run's fixed cost is small next to
/// its padded tokens (the CPU), a batch is cut into runs (`runs`); where it dominates (a GPU),
/// it stays one.
pub fn embed_tokens(
    model: &impl Embedder,
    tokens: &Tokens,
    codes: &[Code<'_>],
) -> Result<Array2<f32>, ClassifyError> {
    let (z, det_select) = code_matrices(model.manifest(), model.d(), codes.iter().copied())?;
    let lengths = tokens.lengths();
    let groups = runs(model, codes, &lengths);
    if groups.len() == 1 {
        let batch = Batch {
            tokens,
            z: z.view(),
            det_select: det_select.view(),
        };
        return Ok(model.embed(batch)?);
    }
    let mut embeddings = Array2::zeros((tokens.rows(), model.manifest().hidden()));
    for group in groups {
        let seq = group.iter().map(|&i| lengths[i]).max().unwrap_or(1);
        let group_tokens = tokens.select(&group, seq);
        let (group_z, group_select) = (
            z.select(Axis(0), &group),
            det_select.select(Axis(0), &group),
        );
        let batch = Batch {
            tokens: &group_tokens,
            z: group_z.view(),
            det_select: group_select.view(),
        };
        let group_embeddings = model.embed(batch)?;
        for (&row, embedding) in group.iter().zip(group_embeddings.rows()) {
            embeddings.row_mut(row).assign(&embedding);
        }
    }
    Ok(embeddings)
}

/// What the all-DET serving graph costs beyond a one-DET graph, as a share of the padded tokens
/// it runs: its kernels take about 15 % longer than the plain graph's at 32 × 64 on the CPU
/// (docs/performance/serve-overhead.md), and a one-DET graph runs close to plain.
const ALL_DET_OVERHEAD: f64 = 0.15;

/// The runs a batch is cut into, as lists of row indices. Where the model has one-DET graphs and
/// the all-DET graph's extra work on the batch outweighs the fixed cost of the extra runs (a CPU
/// and a batch big enough), rows go by DET first, so that each run skips the other DETs' plug
/// points; then by length ([`length_groups`]).
fn runs(model: &impl Embedder, codes: &[Code<'_>], lengths: &[usize]) -> Vec<Vec<usize>> {
    let cost = model.run_cost_tokens();
    let mut dets: Vec<DetKind> = codes.iter().map(|&(_, det)| det).collect();
    dets.sort();
    dets.dedup();
    let padded = lengths.len() * lengths.iter().copied().max().unwrap_or(0);
    let saved = ALL_DET_OVERHEAD * padded as f64;
    let split = model.has_one_det_graphs()
        && dets.len() > 1
        && saved > (dets.len() - 1) as f64 * cost as f64;
    let mut by_det: Vec<(DetKind, Vec<usize>)> = Vec::new();
    for (row, &(_, det)) in codes.iter().enumerate() {
        match by_det.iter_mut().find(|(kind, _)| !split || *kind == det) {
            Some((_, rows)) => rows.push(row),
            None => by_det.push((det, vec![row])),
        }
    }
    let mut runs = Vec::new();
    for (_, rows) in by_det {
        let row_lengths: Vec<usize> = rows.iter().map(|&row| lengths[row]).collect();
        for group in length_groups(&row_lengths, cost) {
            runs.push(group.iter().map(|&i| rows[i]).collect());
        }
    }
    runs
}

/// Label probabilities of each embedding row against a task's label descriptions.
pub fn score(embedding: ArrayView2<f32>, labels: &LabelSet, logit_scale: f32) -> Vec<LabelScores> {
    let logits = cosine_logits(embedding, labels.embeddings.view(), logit_scale);
    rank_rows(&logits, &labels.names())
}

/// Each row of logits as label probabilities, best first.
fn rank_rows(logits: &Array2<f32>, names: &[String]) -> Vec<LabelScores> {
    softmax_rows(logits)
        .rows()
        .into_iter()
        .map(|p| LabelScores::rank(names, p))
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
    let rows: Vec<TextRow> = inputs
        .iter()
        .map(|input| TextRow {
            input,
            z: &task.task.z,
            det,
        })
        .collect();
    let embeddings = embed_rows(encoder, subspace, &rows)?;
    let logit_scale = encoder.manifest().logit_scale;
    Ok(match &task.head {
        Some(classes) => classes.score(embeddings.view(), &task.labels.names(), logit_scale),
        None => score(embeddings.view(), &task.labels, logit_scale),
    })
}
