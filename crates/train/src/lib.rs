//! deltaspace's trainer (offline): the paper's pipeline on the core's tuning machinery. Stage 0
//! trains DETs in their original space ([`stage0`], [`solution`]), stage 1 finds the unified
//! subspace ([`stage1`]); stage 2 (tuning z for new tasks) is `deltaspace_core::tuning::tune`,
//! shared with the server. [`landscape`] draws accuracy over a plane of the subspace,
//! [`probe`] fits the linear-probe baseline, [`report`] builds the paper's tables from result
//! lines ([`lines`]: one type per command's output) and [`quality`] the comparison against a
//! user's alternatives. Never depends on the server.

pub mod landscape;
pub mod lines;
pub mod probe;
pub mod quality;
pub mod report;
pub mod solution;
pub mod stage0;
pub mod stage1;
