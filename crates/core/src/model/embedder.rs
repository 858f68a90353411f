//! The one seam between what serves rows and the graph that embeds them: [`Embedder`].
//!
//! Two models implement it, over the same serving graph:
//! - an [`Encoder`] paired with a subspace's U and base ([`Encoder::with_params`]), which sends
//!   them with every run: the CPU path, and the trainer's;
//! - a [`ResidentEncoder`], which uploaded U and base once into each session's memory and runs
//!   with shape buckets and, on CUDA, CUDA graphs: the GPU path (docs/design/gpu.md).
//!
//! `classifier::embed_tokens`, and so the server's batcher, runs through this trait; which model
//! serves is chosen once, at start ([`ResidentChoice`]).

use ndarray::Array2;

use super::deltas::DeltaCache;
use super::encoder::Encoder;
use super::inputs::{Batch, DeltaParams};
use super::resident::ResidentEncoder;
use super::{CPU_RUN_COST_TOKENS, Manifest, ModelError};
use crate::runtime::Provider;

/// Embeds batches of rows, each row through its own code z and DET.
pub trait Embedder: Send + Sync {
    /// The model's manifest (DET columns, hidden size).
    fn manifest(&self) -> &Manifest;

    /// The subspace dimension d: the width of each row's z.
    fn d(&self) -> usize;

    /// The execution provider the runs go to.
    fn provider(&self) -> Provider;

    /// Runs it can take at once.
    fn sessions(&self) -> usize;

    /// Embeddings [rows, H] of a batch, in its rows' order.
    fn embed(&self, batch: Batch<'_>) -> Result<Array2<f32>, ModelError>;

    /// Whether a batch whose rows share one DET runs a graph without the other DETs' plug
    /// points (so that splitting a mixed batch by DET saves work).
    fn has_one_det_graphs(&self) -> bool {
        false
    }

    /// What one more run costs, in padded tokens, when a batch's rows are split by length
    /// ([`super::length_groups`]): [`CPU_RUN_COST_TOKENS`] on the CPU; on CUDA a run's fixed cost
    /// dominates, so a batch stays one run.
    fn run_cost_tokens(&self) -> usize {
        match self.provider() {
            Provider::Cpu => CPU_RUN_COST_TOKENS,
            Provider::Cuda => usize::MAX,
        }
    }
}

/// Which model serves: U and base sent with each run, or resident in the sessions' memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResidentChoice {
    /// Resident on CUDA, where copying U and base every run costs milliseconds; sent with each
    /// run on the CPU, where the graph reads them in place anyway.
    #[default]
    Auto,
    /// Always resident (on the CPU too: the tests run the GPU path's code this way).
    Always,
    /// Never resident.
    Never,
}

impl ResidentChoice {
    /// Whether to serve through a [`ResidentEncoder`] on `provider`.
    pub fn resident_on(self, provider: Provider) -> bool {
        match self {
            Self::Auto => provider == Provider::Cuda,
            Self::Always => true,
            Self::Never => false,
        }
    }
}

/// An [`Encoder`] with the U and base its runs send: see [`Encoder::with_params`].
#[derive(Clone, Copy)]
pub struct WithParams<'a> {
    encoder: &'a Encoder,
    params: &'a DeltaParams,
    deltas: Option<&'a DeltaCache>,
}

impl Encoder {
    /// This encoder as an [`Embedder`] whose runs decode z through `params`.
    pub fn with_params<'a>(&'a self, params: &'a DeltaParams) -> WithParams<'a> {
        WithParams {
            encoder: self,
            params,
            deltas: None,
        }
    }
}

impl<'a> WithParams<'a> {
    /// The same, with runs of few distinct codes decoded through `deltas`
    /// ([`Encoder::embed_decoding`]): what serving does, where the same tasks keep coming.
    pub fn decoding(self, deltas: &'a DeltaCache) -> Self {
        Self {
            deltas: Some(deltas),
            ..self
        }
    }
}

impl Embedder for WithParams<'_> {
    fn manifest(&self) -> &Manifest {
        self.encoder.manifest()
    }

    fn d(&self) -> usize {
        self.params.d()
    }

    fn provider(&self) -> Provider {
        self.encoder.provider()
    }

    fn sessions(&self) -> usize {
        self.encoder.sessions()
    }

    fn has_one_det_graphs(&self) -> bool {
        self.encoder.has_one_det_graphs()
    }

    fn embed(&self, batch: Batch<'_>) -> Result<Array2<f32>, ModelError> {
        // `Batch` is invariant in its lifetime: re-borrow it for as long as the call needs.
        let batch = Batch {
            tokens: batch.tokens,
            z: batch.z.view(),
            det_select: batch.det_select.view(),
        };
        match self.deltas {
            Some(deltas) => self.encoder.embed_decoding(batch, self.params, deltas),
            None => self.encoder.embed(batch, self.params),
        }
    }
}

impl Embedder for ResidentEncoder {
    fn manifest(&self) -> &Manifest {
        self.manifest()
    }

    fn d(&self) -> usize {
        self.d()
    }

    fn provider(&self) -> Provider {
        self.provider()
    }

    fn sessions(&self) -> usize {
        self.sessions()
    }

    fn embed(&self, batch: Batch<'_>) -> Result<Array2<f32>, ModelError> {
        self.embed(batch)
    }
}
