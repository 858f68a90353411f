//! deltaspace serves one frozen language model for many text classifiers, where each classifier
//! is a tiny vector z in a unified delta-tuning subspace: θ_det = base_det + U_det z for LoRA,
//! Adapter and Prefix-tuning alike (Yi et al., "Different Tunes Played with Equal Skill", EMNLP
//! 2022 Findings).
//!
//! # Layout
//!
//! ```text
//!    runtime  →  model  →  det · subspace · task · classifier · tuning  →  server │ train  →  cli, main.rs
//!    (ORT)       (PLM as a function)   (what a task is, how z is fitted)   (online) (offline)  (edge)
//!    └──────────────────────── crates/core ────────────────────────┘    crates/server, crates/train   this package
//! ```
//!
//! An arrow means "is used by". Each layer group is a crate of the workspace, so the compiler
//! keeps the arrows: `server` and `train` cannot import each other, and neither can import the
//! command line. Inside the core crate, `tests/it/layers.rs` checks the order of the modules and
//! that ONNX Runtime types stay in `runtime` and `model`.
//!
//! This crate is the edge: [`config`] (the TOML file, environment overrides) and [`cli`] (every
//! command) are the only code that reads files named by users or the environment. It re-exports
//! the other crates under one name, so a user of the library writes `deltaspace::model::Encoder`,
//! `deltaspace::server::run` or `deltaspace::train::stage1`.

pub use deltaspace_core::{
    atomic_file, classifier, det, model, runtime, secret, subspace, task, tensor_file, tuning,
};
pub use deltaspace_server as server;
pub use deltaspace_train as train;

pub mod cli;
pub mod config;
