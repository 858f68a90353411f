//! deltaspace serves one frozen language model for many tasks, where each task is a tiny vector
//! z in a unified delta-tuning subspace: θ_det = base_det + U_det z for LoRA, Adapter and
//! Prefix-tuning alike (Yi et al., "Different Tunes Played with Equal Skill", EMNLP 2022 Findings).
//!
//! # Layout
//!
//! ```text
//!    runtime  →  model  →  det · subspace · task · classifier  →  cli, main.rs
//!    (ORT)       (PLM as a function)  (what a task is)            (edge)
//! ```
//!
//! An arrow means "is used by"; imports go rightward only.
//! - [`runtime`]: finds and loads ONNX Runtime, picks the execution provider, pools sessions.
//! - [`model`]: manifest, tokenizer, [`model::Encoder`] (embeddings and exact gradients from rows
//!   of any tasks and DETs), cosine classification. ORT types stop here.
//! - [`det`], [`subspace`], [`task`], [`classifier`]: the paper's objects: DET kinds and θ⁰, the
//!   subspace artifact (U, base), tasks (z plus labels), and applying tasks to text.
//! - [`server`]: the HTTP server (layer 3, online): task store (SQLite), a dynamic batcher that
//!   mixes tasks and DETs in one encoder run, bearer-token auth, Prometheus metrics.
//! - [`config`] and [`cli`]: the edge, the only code that reads files named by users or the
//!   environment.

pub mod classifier;
pub mod cli;
pub mod config;
pub mod det;
pub mod model;
pub mod runtime;
pub mod server;
pub mod subspace;
pub mod task;
pub mod tensor_file;
pub mod train;
