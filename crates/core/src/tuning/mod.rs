//! The machinery every training stage shares, on ONNX Runtime with exact gradients from the
//! gradient graph: task data ([`data`]), encoder batches that mix rows of many tasks and DETs
//! ([`batch`]), the training loop over (task, DET) units ([`fit`]), scores ([`eval`]),
//! optimizers ([`optim`]), and stage 2, which tunes z for a new task ([`tune`]). Stages 0 and 1
//! live in `deltaspace-train`; the server runs stage 2 for tune jobs. Reports progress through
//! tracing and indicatif.

pub mod batch;
pub mod data;
pub mod eval;
pub mod fit;
pub mod head;
pub mod optim;
pub mod progress;
pub mod tune;
