//! A task head tuned with z in stage 2: per-label biases (class priors) and, optionally, label
//! prototypes that start at the descriptions' embeddings. See [`crate::task::Head`] for what a
//! head scores.
//!
//! A unit's parameter vector is `[z (d) | bias (C) | prototype steps (C·H)]`, the last two present
//! as [`HeadTuning`] asks. Prototype c is `p_c = description_c + PROTOTYPE_STEP · q_c`: the step
//! scale puts q on the same footing as z and the biases, so one learning rate suits them all.
//!
//! Gradients of the head come from the gradient graph's logits and embeddings: with
//! `g_bc = w_b (softmax(logits_b)_c − [c = y_b])`, ∂L/∂bias_c = Σ_b g_bc and
//! ∂L/∂p̂_c = logit_scale · Σ_b g_bc e_b, taken through p̂ = p/‖p‖ to p and then to q.

use std::str::FromStr;

use ndarray::{Array1, Array2, ArrayView1, ArrayViewMut1};

use crate::classifier::Classes;
use crate::task::Head;

/// What of a task's head trains together with z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadTuning {
    /// No head: labels score by their descriptions alone (the paper's setting).
    #[default]
    None,
    /// A bias per label.
    Bias,
    /// A bias and a prototype per label.
    Prototypes,
}

impl FromStr for HeadTuning {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "bias" => Ok(Self::Bias),
            "prototypes" => Ok(Self::Prototypes),
            other => Err(format!(
                "unknown head {other:?}: expected none, bias or prototypes"
            )),
        }
    }
}

impl std::fmt::Display for HeadTuning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Bias => "bias",
            Self::Prototypes => "prototypes",
        })
    }
}

/// How far one unit of a prototype step q moves a prototype: 1/√H, so a step of q the size of a
/// step of z turns a unit-norm prototype by about as much as z turns the model.
fn prototype_step(hidden: usize) -> f32 {
    1.0 / (hidden as f32).sqrt()
}

impl HeadTuning {
    /// Parameters the head adds to a unit with `classes` labels of width `hidden`.
    pub fn len(self, classes: usize, hidden: usize) -> usize {
        match self {
            Self::None => 0,
            Self::Bias => classes,
            Self::Prototypes => classes + classes * hidden,
        }
    }

    /// The classes that head parameters `tail` (the unit's vector after z) give a task whose
    /// descriptions are `descriptions`.
    pub fn classes(self, descriptions: &Classes, tail: &[f32]) -> Classes {
        let n = descriptions.len();
        let bias = match self {
            Self::None => Array1::zeros(n),
            Self::Bias | Self::Prototypes => Array1::from(tail[..n].to_vec()),
        };
        let prototypes = match self {
            Self::Prototypes => self.raw_prototypes(descriptions, tail),
            Self::None | Self::Bias => descriptions.prototypes.clone(),
        };
        Classes::new(prototypes, bias)
    }

    /// p_c = description_c + step · q_c, before normalisation.
    fn raw_prototypes(self, descriptions: &Classes, tail: &[f32]) -> Array2<f32> {
        let (n, hidden) = descriptions.prototypes.dim();
        let steps = ArrayView1::from(&tail[n..n + n * hidden])
            .into_shape_with_order((n, hidden))
            .expect("the head's length was checked. This is a bug.");
        &descriptions.prototypes + &(&steps * prototype_step(hidden))
    }

    /// Adds one row's head gradient to `gradient` (the unit's, after z): `logits` are the row's
    /// own classes' logits from the gradient graph (biases included), `embedding` its embedding.
    #[allow(clippy::too_many_arguments)]
    pub fn accumulate(
        self,
        descriptions: &Classes,
        tail: &[f32],
        logits: ArrayView1<f32>,
        embedding: ArrayView1<f32>,
        label: usize,
        weight: f32,
        logit_scale: f32,
        mut gradient: ArrayViewMut1<f32>,
    ) {
        if self == Self::None {
            return;
        }
        let n = logits.len();
        let max = logits.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let exp = logits.mapv(|l| (l - max).exp());
        let mut g = &exp / exp.sum();
        g[label] -= 1.0;
        g *= weight;
        for c in 0..n {
            gradient[c] += g[c];
        }
        if self != Self::Prototypes {
            return;
        }
        let raw = self.raw_prototypes(descriptions, tail);
        let hidden = raw.ncols();
        let step = prototype_step(hidden);
        for (c, p) in raw.rows().into_iter().enumerate() {
            // ∂L/∂p̂ = s g_c e; ∂L/∂p = (∂L/∂p̂ − p̂ (p̂ · ∂L/∂p̂)) / ‖p‖; ∂L/∂q = step · ∂L/∂p.
            let norm = p.dot(&p).sqrt().max(1e-12);
            let unit = &p / norm;
            let along = logit_scale * g[c] * unit.dot(&embedding);
            let scale = step * logit_scale * g[c] / norm;
            let offset = n + c * hidden;
            for h in 0..hidden {
                gradient[offset + h] += scale * embedding[h] - step * along * unit[h] / norm;
            }
        }
    }

    /// The head a unit's parameters describe, to store with the task (None for no head).
    pub fn head(self, descriptions: &Classes, tail: &[f32]) -> Option<Head> {
        if self == Self::None {
            return None;
        }
        let classes = self.classes(descriptions, tail);
        let prototypes = (self == Self::Prototypes).then(|| {
            classes
                .prototypes
                .rows()
                .into_iter()
                .map(|r| r.to_vec())
                .collect()
        });
        Some(Head {
            bias: classes.bias.to_vec(),
            prototypes,
        })
    }

    /// The head parameters (the unit's vector after z) that reproduce a stored `head`.
    pub fn parameters(self, descriptions: &Classes, head: &Head) -> Vec<f32> {
        let mut tail = match self {
            Self::None => return Vec::new(),
            Self::Bias | Self::Prototypes => head.bias.clone(),
        };
        if self == Self::Prototypes {
            let hidden = descriptions.prototypes.ncols();
            let step = prototype_step(hidden);
            for (c, description) in descriptions.prototypes.rows().into_iter().enumerate() {
                let stored = head.prototypes.as_ref().map(|p| &p[c]);
                for h in 0..hidden {
                    let target = stored.map_or(description[h], |p| p[h]);
                    tail.push((target - description[h]) / step);
                }
            }
        }
        tail
    }

    /// A stored task's parameter vector `[z | head]` for a task whose descriptions are
    /// `descriptions`, with the head tuning that reads it.
    pub fn task_values(
        task: &crate::task::Task,
        descriptions: &Classes,
    ) -> anyhow::Result<(Self, Vec<f32>)> {
        let tuning = Self::of(task.head.as_ref());
        let mut values = task.z.clone();
        if let Some(head) = &task.head {
            anyhow::ensure!(
                head.bias.len() == descriptions.len(),
                "task {}: the head has {} biases, the data {} labels",
                task.name,
                head.bias.len(),
                descriptions.len()
            );
            let hidden = descriptions.prototypes.ncols();
            if let Some(wrong) = head.prototypes.iter().flatten().find(|p| p.len() != hidden) {
                anyhow::bail!(
                    "task {}: a prototype has {} values, the model's embeddings {hidden}",
                    task.name,
                    wrong.len()
                );
            }
            values.extend(tuning.parameters(descriptions, head));
        }
        Ok((tuning, values))
    }

    /// What a stored head needs to be scored: prototypes when it has them, else its biases.
    pub fn of(head: Option<&Head>) -> Self {
        match head {
            None => Self::None,
            Some(Head {
                prototypes: None, ..
            }) => Self::Bias,
            Some(Head {
                prototypes: Some(_),
                ..
            }) => Self::Prototypes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr1;

    fn descriptions() -> Classes {
        Classes::descriptions(ndarray::arr2(&[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    }

    /// Cross-entropy of one row under head parameters `tail`.
    fn loss(head: HeadTuning, tail: &[f32], embedding: &Array1<f32>, label: usize) -> f32 {
        let logits = head
            .classes(&descriptions(), tail)
            .logits(embedding.view(), 20.0);
        let max = logits.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        (logits.mapv(|l| (l - max).exp()).sum().ln() + max) - logits[label]
    }

    #[test]
    fn head_gradients_match_finite_differences() {
        let embedding = arr1(&[0.6, 0.0, 0.8]);
        for head in [HeadTuning::Bias, HeadTuning::Prototypes] {
            let n = head.len(2, 3);
            let tail: Vec<f32> = (0..n).map(|i| 0.1 * ((i * 7 % 5) as f32 - 2.0)).collect();
            let logits = head
                .classes(&descriptions(), &tail)
                .logits(embedding.view(), 20.0);
            let mut gradient = Array1::zeros(n);
            head.accumulate(
                &descriptions(),
                &tail,
                logits.view(),
                embedding.view(),
                1,
                1.0,
                20.0,
                gradient.view_mut(),
            );
            for i in 0..n {
                let (mut up, mut down) = (tail.clone(), tail.clone());
                up[i] += 1e-3;
                down[i] -= 1e-3;
                let numeric =
                    (loss(head, &up, &embedding, 1) - loss(head, &down, &embedding, 1)) / 2e-3;
                assert!(
                    (numeric - gradient[i]).abs() < 2e-2 * numeric.abs().max(1.0),
                    "{head} parameter {i}: analytic {} numeric {numeric}",
                    gradient[i]
                );
            }
        }
    }

    #[test]
    fn a_stored_head_round_trips_through_its_parameters() {
        let head = Head {
            bias: vec![0.5, -0.25],
            prototypes: Some(vec![vec![0.6, 0.8, 0.0], vec![0.0, 0.6, 0.8]]),
        };
        let tuning = HeadTuning::of(Some(&head));
        assert_eq!(tuning, HeadTuning::Prototypes);
        let tail = tuning.parameters(&descriptions(), &head);
        let back = tuning.head(&descriptions(), &tail).unwrap();
        assert_eq!(back.bias, head.bias);
        for (a, b) in back
            .prototypes
            .unwrap()
            .iter()
            .zip(head.prototypes.unwrap())
        {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() < 1e-5);
            }
        }
    }
}
