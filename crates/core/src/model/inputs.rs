//! The graphs' inputs as Rust values, besides the token ids: U and base of every DET
//! ([`DeltaParams`]), and the rows of one run ([`Batch`], and [`GradBatch`] with what the loss
//! needs). The encoder, the θ cache and the resident encoder all take them.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2};

use super::ModelError;
use super::manifest::Manifest;
use super::tokenize::Tokens;

/// U `[D, d]` and base `[D]` of one DET: θ = base + U z.
#[derive(Debug, Clone)]
pub struct DetParams {
    pub u: Array2<f32>,
    pub base: Array1<f32>,
}

/// U and base for every DET of the manifest, in `det_select` column order; all share one d.
#[derive(Debug, Clone)]
pub struct DeltaParams {
    dets: Vec<DetParams>,
}

/// Every DET has the manifest's D, and all share one d ≥ 1.
fn check_shapes(manifest: &Manifest, dets: &[DetParams]) -> Result<(), ModelError> {
    if dets.len() != manifest.dets.len() {
        return Err(ModelError::Shape(format!(
            "{} DETs given, the model has {}",
            dets.len(),
            manifest.dets.len()
        )));
    }
    let d = dets.first().map_or(0, |p| p.u.ncols());
    if d == 0 {
        return Err(ModelError::Shape("d must be at least 1".into()));
    }
    for (layout, params) in manifest.dets.iter().zip(dets) {
        let (rows, cols) = params.u.dim();
        if rows != layout.size || params.base.len() != layout.size || cols != d {
            return Err(ModelError::Shape(format!(
                "DET {}: U is [{rows}, {cols}] and base [{}], expected [{}, {d}] and [{}]",
                layout.name,
                params.base.len(),
                layout.size,
                layout.size
            )));
        }
    }
    Ok(())
}

impl DeltaParams {
    /// Checks that every DET has the manifest's D and that all share one d.
    pub fn new(manifest: &Manifest, dets: Vec<DetParams>) -> Result<Self, ModelError> {
        check_shapes(manifest, &dets)?;
        Ok(Self { dets })
    }

    /// The check of [`Self::new`] on parameters already made (for `manifest`, another model's
    /// files), without copying them.
    pub fn check(&self, manifest: &Manifest) -> Result<(), ModelError> {
        check_shapes(manifest, &self.dets)
    }

    /// All-zero U and base of width `d`: with every `det_select` at 0 this is the frozen model.
    pub fn zeros(manifest: &Manifest, d: usize) -> Self {
        let dets = manifest
            .dets
            .iter()
            .map(|layout| DetParams {
                u: Array2::zeros((layout.size, d)),
                base: Array1::zeros(layout.size),
            })
            .collect();
        Self { dets }
    }

    /// The same shapes with `f` applied to base and to the first `columns` columns of every U
    /// (e.g. rounding stored values to f16).
    pub fn map_columns(&self, columns: usize, f: impl Fn(f32) -> f32) -> Self {
        let dets = self
            .dets
            .iter()
            .map(|det| {
                let mut u = det.u.clone();
                u.slice_mut(ndarray::s![.., ..columns]).mapv_inplace(&f);
                DetParams {
                    u,
                    base: det.base.mapv(&f),
                }
            })
            .collect();
        Self { dets }
    }

    /// The subspace dimension d.
    pub fn d(&self) -> usize {
        self.dets[0].u.ncols()
    }

    /// The parameters of the DET in `det_select` column `index`.
    pub fn det(&self, index: usize) -> &DetParams {
        &self.dets[index]
    }

    /// All DETs, in column order.
    pub fn dets(&self) -> &[DetParams] {
        &self.dets
    }
}

/// Rows to encode: tokens plus each row's code z [rows, d] and DET selector [rows, n_dets].
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub tokens: &'a Tokens,
    pub z: ArrayView2<'a, f32>,
    pub det_select: ArrayView2<'a, f32>,
}

/// A [`Batch`] with what the loss needs.
#[derive(Debug, Clone, Copy)]
pub struct GradBatch<'a> {
    pub batch: Batch<'a>,
    /// Label-description embeddings of every class in the batch: [classes, H].
    pub targets: ArrayView2<'a, f32>,
    /// 1 where a class belongs to the row's task, 0 elsewhere: [rows, classes].
    pub class_mask: ArrayView2<'a, f32>,
    /// Added to each row's logits: its task head's class priors (0 without a head): [rows, classes].
    pub logit_bias: ArrayView2<'a, f32>,
    /// The true class of each row, an index into `targets`: `[rows]`.
    pub labels: ArrayView1<'a, i64>,
    /// Each row's weight in the loss Σ_b w_b · CE_b: `[rows]`.
    pub row_weight: ArrayView1<'a, f32>,
}
