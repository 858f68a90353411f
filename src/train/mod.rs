//! Layer 3, offline: the paper's pipeline on ONNX Runtime with exact gradients from the
//! gradient graph. Stage 0 trains DETs in their original space ([`stage0`]), stage 1 finds the
//! unified subspace ([`stage1`]), stage 2 tunes z for new tasks ([`tune`]); [`eval`] scores
//! codes and solutions on any DET (transfer is evaluation through another DET).
//! Must not import `server` or `cli`; reports progress through tracing and indicatif.

pub mod batch;
pub mod data;
pub mod eval;
pub mod fit;
pub mod landscape;
pub mod optim;
pub mod progress;
pub mod report;
pub mod solution;
pub mod stage0;
pub mod stage1;
pub mod tune;
