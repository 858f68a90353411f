//! Layer 1: the frozen PLM as a function.
//!
//! [`Encoder`] turns rows (tokens, a code z and a DET selector each) into embeddings through the
//! serving graph, and into a loss with exact gradients through the gradient graph;
//! [`ResidentEncoder`] runs the serving graph with U and base resident in its sessions' memory
//! (the GPU path). Both serve through one seam, [`Embedder`]. What a DET
//! *means* lives in `det`; here a DET is only a `det_select` column and the matching U and base
//! inputs. ORT types stop here: callers see ndarray arrays. Must not import layers 2 and up.

mod classify;
mod deltas;
mod embedder;
mod encoder;
mod inputs;
mod manifest;
mod resident;
mod runs;
mod tokenize;

pub use classify::{LabelScore, LabelScores, cosine_logits, softmax_rows};
pub use deltas::{DeltaCache, DeltaCacheStats, MIN_DECODED_D};
pub use embedder::{Embedder, ResidentChoice, WithParams};
pub use encoder::{Encoder, EncoderOptions, Gradients, Pace};
pub use inputs::{Batch, DeltaParams, DetParams, GradBatch};
pub use manifest::{
    Architecture, DetLayout, FORMAT_VERSION, Graphs, Manifest, ModelFiles, TensorSlot, input,
};
pub use resident::{Placement, ResidentEncoder, ResidentOptions};
pub use runs::{CPU_RUN_COST_TOKENS, MAX_RUN_ROWS, length_groups};
pub use tokenize::{TextInput, TextTokenizer, Tokens};

use std::path::PathBuf;

use crate::runtime::RuntimeError;

/// What can go wrong loading or running the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "model directory {dir} not found; export it with export/export.py (see export/README.md)"
    )]
    MissingModel { dir: PathBuf },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Manifest {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    InvalidManifest { path: PathBuf, message: String },
    #[error("graph {path} is missing; run the export (export/README.md)")]
    MissingGraph { path: PathBuf },
    #[error(
        "graph {graph} lacks input {input:?}; it was exported for another interface, re-export it"
    )]
    GraphInterface { graph: String, input: String },
    #[error(
        "the run of a graph returned no output {output:?}; it was exported for another interface, re-export it"
    )]
    MissingOutput { output: String },
    #[error("tokenizer: {context}")]
    Tokenizer {
        context: String,
        #[source]
        source: tokenizers::Error,
    },
    #[error("an empty batch has nothing to encode")]
    EmptyBatch,
    #[error(
        "truncating at {asked} tokens: the model takes {least} to {limit} (a text pair's special \
         tokens and one of text need {least})"
    )]
    SeqLen {
        asked: usize,
        least: usize,
        limit: usize,
    },
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// An array the runtime returned (or the encoder assembled) has another shape than expected.
    #[error("shape of {what}")]
    ArrayShape {
        what: String,
        #[source]
        source: ndarray::ShapeError,
    },
    #[error("the gradient graph was not loaded (EncoderOptions::with_grad)")]
    NoGradGraph,
    #[error("the plain graph was not loaded (EncoderOptions::with_plain)")]
    NoPlainGraph,
    /// A background encoder's pace ended its work (see [`Pace`]).
    #[error("stopped: {0}")]
    Halted(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("ONNX Runtime run: {0}")]
    Run(#[from] ort::Error),
}

#[cfg(test)]
mod tests {
    use super::ModelError;

    #[test]
    fn a_missing_output_is_reported_as_an_output_not_an_input() {
        let text = ModelError::MissingOutput {
            output: "grad_z".into(),
        }
        .to_string();
        assert!(text.contains("no output \"grad_z\""), "{text}");
        assert!(!text.contains("input"), "{text}");
    }
}
