//! deltaspace's core: one frozen language model as a function, and tasks as tiny vectors z in a
//! unified delta-tuning subspace: θ_det = base_det + U_det z for LoRA, Adapter and Prefix-tuning
//! alike (Yi et al., "Different Tunes Played with Equal Skill", EMNLP 2022 Findings).
//!
//! # Layout
//!
//! ```text
//!    runtime  →  model  →  det · subspace · task · classifier  →  tuning
//!    (ORT)       (PLM as a function)   (what a task is)           (fitting z and δ)
//! ```
//!
//! An arrow means "is used by"; imports go rightward only, and ONNX Runtime types stop at
//! `model`. The crates `deltaspace-server` and `deltaspace-train` build on this one and never on
//! each other; the `deltaspace` binary is the edge.
//! - [`runtime`]: finds and loads ONNX Runtime, picks the execution provider, pools sessions.
//! - [`model`]: manifest, tokenizer, [`model::Encoder`] (embeddings and exact gradients from rows
//!   of any tasks and DETs), cosine classification.
//! - [`det`], [`subspace`], [`task`], [`classifier`]: the paper's objects: DET kinds and θ⁰, the
//!   subspace artifact (U, base), tasks (z plus labels), and applying tasks to text.
//! - [`tuning`]: task data, batches of rows from many tasks, the training loop every gradient
//!   stage shares, evaluation, optimizers (Adam, Adafactor, CMA-ES), and stage 2 itself (tuning
//!   z for a new task), which both the trainer and the server run.
//! - [`tensor_file`]: named f32 tensors in safetensors files (θ⁰, subspaces, solutions).
//! - [`atomic_file`]: files written whole or not at all (tensor files, task files, exports).
//! - [`secret`]: values that never show in logs (tokens, credentials).

pub mod atomic_file;
pub mod classifier;
pub mod det;
pub mod model;
pub mod runtime;
pub mod secret;
pub mod subspace;
pub mod task;
pub mod tensor_file;
pub mod tuning;
