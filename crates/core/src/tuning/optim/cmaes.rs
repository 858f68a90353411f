//! CMA-ES, (μ/μ_w, λ) with rank-one and rank-μ updates and cumulative step-size adaptation
//! (Hansen, "The CMA Evolution Strategy: A Tutorial", 2016, defaults of Table 1). Used as BBT
//! uses it: derivative-free search over z, the whole population scored in one encoder run.

use nalgebra::{DMatrix, DVector, SymmetricEigen};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// The search state over R^n.
pub struct CmaEs {
    n: usize,
    lambda: usize,
    mu: usize,
    weights: DVector<f64>,
    mu_eff: f64,
    c_sigma: f64,
    d_sigma: f64,
    c_c: f64,
    c_1: f64,
    c_mu: f64,
    chi_n: f64,
    mean: DVector<f64>,
    sigma: f64,
    covariance: DMatrix<f64>,
    /// B and D of C = B D² Bᵀ, refreshed after every update.
    basis: DMatrix<f64>,
    scales: DVector<f64>,
    path_sigma: DVector<f64>,
    path_c: DVector<f64>,
    generation: usize,
    rng: rand_chacha::ChaCha8Rng,
    /// The last population, as drawn: y = B D N(0, I), x = mean + σ y.
    last_y: Vec<DVector<f64>>,
}

impl CmaEs {
    /// Starts at `mean` with step size `sigma`; `lambda` = 0 takes the default 4 + ⌊3 ln n⌋.
    pub fn new(mean: &[f32], sigma: f64, lambda: usize, seed: u64) -> Self {
        let n = mean.len().max(1);
        let lambda = if lambda == 0 {
            4 + (3.0 * (n as f64).ln()).floor() as usize
        } else {
            lambda.max(2)
        };
        let mu = lambda / 2;
        let raw: Vec<f64> = (0..mu)
            .map(|i| ((lambda as f64 + 1.0) / 2.0).ln() - ((i + 1) as f64).ln())
            .collect();
        let total: f64 = raw.iter().sum();
        let weights = DVector::from_iterator(mu, raw.iter().map(|w| w / total));
        let mu_eff = 1.0 / weights.iter().map(|w| w * w).sum::<f64>();
        let nf = n as f64;
        let c_sigma = (mu_eff + 2.0) / (nf + mu_eff + 5.0);
        let d_sigma = 1.0 + 2.0 * (((mu_eff - 1.0) / (nf + 1.0)).sqrt() - 1.0).max(0.0) + c_sigma;
        let c_c = (4.0 + mu_eff / nf) / (nf + 4.0 + 2.0 * mu_eff / nf);
        let c_1 = 2.0 / ((nf + 1.3).powi(2) + mu_eff);
        let c_mu =
            (1.0 - c_1).min(2.0 * (mu_eff - 2.0 + 1.0 / mu_eff) / ((nf + 2.0).powi(2) + mu_eff));
        Self {
            n,
            lambda,
            mu,
            weights,
            mu_eff,
            c_sigma,
            d_sigma,
            c_c,
            c_1,
            c_mu,
            chi_n: nf.sqrt() * (1.0 - 1.0 / (4.0 * nf) + 1.0 / (21.0 * nf * nf)),
            mean: DVector::from_iterator(n, mean.iter().map(|&v| f64::from(v))),
            sigma,
            covariance: DMatrix::identity(n, n),
            basis: DMatrix::identity(n, n),
            scales: DVector::from_element(n, 1.0),
            path_sigma: DVector::zeros(n),
            path_c: DVector::zeros(n),
            generation: 0,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            last_y: Vec::new(),
        }
    }

    /// Population size λ.
    pub fn lambda(&self) -> usize {
        self.lambda
    }

    /// The current mean: the best estimate of the optimum.
    pub fn mean(&self) -> Vec<f32> {
        self.mean.iter().map(|&v| v as f32).collect()
    }

    /// The current step size σ.
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// Draws λ candidates.
    pub fn ask(&mut self) -> Vec<Vec<f32>> {
        self.last_y = (0..self.lambda)
            .map(|_| {
                let normal = DVector::from_iterator(
                    self.n,
                    (0..self.n).map(|_| StandardNormal.sample(&mut self.rng)),
                );
                &self.basis * normal.component_mul(&self.scales)
            })
            .collect();
        self.last_y
            .iter()
            .map(|y| {
                (&self.mean + y * self.sigma)
                    .iter()
                    .map(|&v| v as f32)
                    .collect()
            })
            .collect()
    }

    /// Updates the distribution from the losses (lower is better) of the last `ask`, in order.
    /// A NaN loss (a candidate that diverged) ranks last, whatever its sign bit.
    pub fn tell(&mut self, losses: &[f32]) {
        assert_eq!(
            losses.len(),
            self.last_y.len(),
            "tell needs one loss per candidate of the last ask"
        );
        let rank_key = |loss: f32| if loss.is_nan() { f32::INFINITY } else { loss };
        let mut order: Vec<usize> = (0..losses.len()).collect();
        order.sort_by(|&a, &b| rank_key(losses[a]).total_cmp(&rank_key(losses[b])));
        let mut y_w = DVector::zeros(self.n);
        for (rank, &index) in order.iter().take(self.mu).enumerate() {
            y_w += &self.last_y[index] * self.weights[rank];
        }
        self.mean += &y_w * self.sigma;
        self.generation += 1;

        // C^{-1/2} y_w = B D^{-1} Bᵀ y_w
        let inverse_sqrt =
            &self.basis * (self.basis.transpose() * &y_w).component_div(&self.scales);
        self.path_sigma = &self.path_sigma * (1.0 - self.c_sigma)
            + inverse_sqrt * (self.c_sigma * (2.0 - self.c_sigma) * self.mu_eff).sqrt();
        let norm_sigma = self.path_sigma.norm();
        let decay = (1.0 - (1.0 - self.c_sigma).powi(2 * self.generation as i32)).sqrt();
        let h_sigma = if norm_sigma / decay / self.chi_n < 1.4 + 2.0 / (self.n as f64 + 1.0) {
            1.0
        } else {
            0.0
        };
        self.path_c = &self.path_c * (1.0 - self.c_c)
            + &y_w * (h_sigma * (self.c_c * (2.0 - self.c_c) * self.mu_eff).sqrt());

        let mut rank_mu = DMatrix::zeros(self.n, self.n);
        for (rank, &index) in order.iter().take(self.mu).enumerate() {
            let y = &self.last_y[index];
            rank_mu += y * y.transpose() * self.weights[rank];
        }
        let correction = (1.0 - h_sigma) * self.c_c * (2.0 - self.c_c);
        self.covariance = &self.covariance * (1.0 - self.c_1 - self.c_mu + self.c_1 * correction)
            + &self.path_c * self.path_c.transpose() * self.c_1
            + rank_mu * self.c_mu;
        self.sigma *= ((self.c_sigma / self.d_sigma) * (norm_sigma / self.chi_n - 1.0)).exp();

        // Keep C symmetric and positive definite despite rounding.
        let symmetric = (&self.covariance + self.covariance.transpose()) * 0.5;
        let eigen = SymmetricEigen::new(symmetric.clone());
        self.covariance = symmetric;
        self.basis = eigen.eigenvectors;
        self.scales = eigen.eigenvalues.map(|v| v.max(1e-20).sqrt());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_minimum_of_a_shifted_sphere_in_8_dimensions() {
        let target = [1.0f32, -2.0, 0.5, 3.0, 0.0, -1.0, 2.0, 1.5];
        let mut search = CmaEs::new(&[0.0; 8], 1.0, 0, 7);
        for _ in 0..300 {
            let candidates = search.ask();
            let losses: Vec<f32> = candidates
                .iter()
                .map(|x| x.iter().zip(&target).map(|(a, b)| (a - b) * (a - b)).sum())
                .collect();
            search.tell(&losses);
        }
        let mean = search.mean();
        let error: f32 = mean
            .iter()
            .zip(&target)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(error < 1e-3, "mean {mean:?}, sigma {}", search.sigma());
    }

    #[test]
    fn a_nan_loss_ranks_last_whatever_its_sign() {
        // Two searches from one seed, told the same losses but for a NaN in place of the worst
        // one: with the NaN last in both orders, their means move alike.
        let told = |worst: f32| {
            let mut search = CmaEs::new(&[0.0; 4], 1.0, 0, 7);
            let candidates = search.ask();
            let mut losses: Vec<f32> = (0..candidates.len()).map(|i| i as f32).collect();
            losses[0] = worst;
            search.tell(&losses);
            search.mean()
        };
        let reference = told(f32::INFINITY);
        assert_eq!(told(-f32::NAN), reference);
        assert_eq!(told(f32::NAN), reference);
    }
}
