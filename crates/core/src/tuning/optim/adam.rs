//! Adam (Kingma & Ba, 2015) with bias correction, no weight decay.

use super::Optimizer;

/// Adam with β1 = 0.9, β2 = 0.999, ε = 1e-8.
#[derive(Debug, Clone)]
pub struct Adam {
    lr: f32,
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

impl Adam {
    pub fn new(len: usize, lr: f32) -> Self {
        Self {
            lr,
            m: vec![0.0; len],
            v: vec![0.0; len],
            t: 0,
        }
    }
}

impl Optimizer for Adam {
    fn step(&mut self, params: &mut [f32], grad: &[f32]) {
        const BETA1: f32 = 0.9;
        const BETA2: f32 = 0.999;
        const EPSILON: f32 = 1e-8;
        self.t += 1;
        let correction1 = 1.0 - BETA1.powi(self.t);
        let correction2 = 1.0 - BETA2.powi(self.t);
        for (((p, g), m), v) in params
            .iter_mut()
            .zip(grad)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            *m = BETA1 * *m + (1.0 - BETA1) * g;
            *v = BETA2 * *v + (1.0 - BETA2) * g * g;
            *p -= self.lr * (*m / correction1) / ((*v / correction2).sqrt() + EPSILON);
        }
    }

    fn state(&self) -> Vec<f32> {
        [&[self.t as f32][..], &self.m, &self.v].concat()
    }

    fn restore(&mut self, state: &[f32]) -> bool {
        let len = self.m.len();
        if state.len() != 1 + 2 * len {
            return false;
        }
        self.t = state[0] as i32;
        self.m.copy_from_slice(&state[1..1 + len]);
        self.v.copy_from_slice(&state[1 + len..]);
        true
    }
}
