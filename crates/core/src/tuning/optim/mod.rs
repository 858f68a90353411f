//! Optimizers over flat f32 parameter vectors: Adam and Adafactor (gradient) and CMA-ES
//! (derivative-free, BBT-style). Gradients come exact from the gradient graph.

mod adafactor;
mod adam;
mod cmaes;

pub use adafactor::Adafactor;
pub use adam::Adam;
pub use cmaes::CmaEs;

use std::str::FromStr;

/// A first-order optimizer: one update of `params` from `grad` (same length).
pub trait Optimizer: Send {
    fn step(&mut self, params: &mut [f32], grad: &[f32]);
    /// The optimizer's state as one flat vector, for checkpoints.
    fn state(&self) -> Vec<f32>;
    /// Restores a state written by [`Optimizer::state`]; false if it does not fit.
    fn restore(&mut self, state: &[f32]) -> bool;
}

/// Which gradient optimizer to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adam,
    Adafactor,
}

impl FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "adam" => Ok(Self::Adam),
            "adafactor" => Ok(Self::Adafactor),
            other => Err(format!(
                "unknown optimizer {other:?}: expected adam or adafactor"
            )),
        }
    }
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Adam => "adam",
            Self::Adafactor => "adafactor",
        })
    }
}

impl OptimizerKind {
    /// A fresh optimizer for `len` parameters at learning rate `lr`.
    pub fn build(self, len: usize, lr: f32) -> Box<dyn Optimizer> {
        match self {
            Self::Adam => Box::new(Adam::new(len, lr)),
            Self::Adafactor => Box::new(Adafactor::new(len, lr)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f(x) = Σ (i+1)(x_i − 1)², minimum at all ones.
    fn quadratic_gradient(x: &[f32]) -> Vec<f32> {
        x.iter()
            .enumerate()
            .map(|(i, v)| 2.0 * (i as f32 + 1.0) * (v - 1.0))
            .collect()
    }

    #[test]
    fn adam_and_adafactor_converge_on_a_quadratic() {
        for kind in [OptimizerKind::Adam, OptimizerKind::Adafactor] {
            let mut x = vec![0.0f32; 8];
            let mut optimizer = kind.build(x.len(), 0.05);
            for _ in 0..2000 {
                let grad = quadratic_gradient(&x);
                optimizer.step(&mut x, &grad);
            }
            assert!(x.iter().all(|v| (v - 1.0).abs() < 0.02), "{kind:?}: {x:?}");
        }
    }
}
