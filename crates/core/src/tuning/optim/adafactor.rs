//! Adafactor (Shazeer & Stern, 2018) as the paper's code runs it: constant learning rate,
//! `scale_parameter=False, relative_step=False`, no momentum, update clipping at 1.0. Parameters
//! here are flat vectors, so the second moment is kept per value (the unfactored case).

use super::Optimizer;

#[derive(Debug, Clone)]
pub struct Adafactor {
    lr: f32,
    v: Vec<f32>,
    t: i32,
}

impl Adafactor {
    pub fn new(len: usize, lr: f32) -> Self {
        Self {
            lr,
            v: vec![0.0; len],
            t: 0,
        }
    }
}

impl Optimizer for Adafactor {
    fn step(&mut self, params: &mut [f32], grad: &[f32]) {
        const EPSILON: f32 = 1e-30;
        const CLIP: f32 = 1.0;
        self.t += 1;
        // β2 schedule 1 − t^−0.8, as in the reference implementation.
        let beta2 = 1.0 - (self.t as f32).powf(-0.8);
        let mut update: Vec<f32> = Vec::with_capacity(grad.len());
        for (g, v) in grad.iter().zip(&mut self.v) {
            *v = beta2 * *v + (1.0 - beta2) * (g * g + EPSILON);
            update.push(g / v.sqrt());
        }
        let rms = (update.iter().map(|u| u * u).sum::<f32>() / update.len().max(1) as f32).sqrt();
        let scale = self.lr / (rms / CLIP).max(1.0);
        for (p, u) in params.iter_mut().zip(update) {
            *p -= scale * u;
        }
    }

    fn state(&self) -> Vec<f32> {
        [&[self.t as f32][..], &self.v].concat()
    }

    fn restore(&mut self, state: &[f32]) -> bool {
        if state.len() != 1 + self.v.len() {
            return false;
        }
        self.t = state[0] as i32;
        self.v.copy_from_slice(&state[1..]);
        true
    }
}
