//! Classification without a task head: score_c = s · cos(embedding(text), embedding(description_c)),
//! softmax over the task's labels. Label embeddings come from the frozen model.

use ndarray::{Array2, ArrayView1, ArrayView2, Axis};

/// Scaled cosine similarities: [rows, H] × [labels, H] → [rows, labels].
///
/// Both sides are normalised here, so callers may pass raw embeddings.
pub fn cosine_logits(
    embeddings: ArrayView2<f32>,
    labels: ArrayView2<f32>,
    scale: f32,
) -> Array2<f32> {
    let normalise = |m: ArrayView2<f32>| {
        let mut m = m.to_owned();
        for mut row in m.axis_iter_mut(Axis(0)) {
            let norm = row.dot(&row).sqrt().max(1e-12);
            row /= norm;
        }
        m
    };
    normalise(embeddings).dot(&normalise(labels).t()) * scale
}

/// Row-wise softmax, stable against large logits.
pub fn softmax_rows(logits: &Array2<f32>) -> Array2<f32> {
    let mut out = logits.clone();
    for mut row in out.axis_iter_mut(Axis(0)) {
        let max = row.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        row.mapv_inplace(|x| (x - max).exp());
        let sum = row.sum();
        row /= sum;
    }
    out
}

/// A label with its probability.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelScore {
    pub label: String,
    pub score: f32,
}

/// One row's label probabilities, best first.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelScores {
    /// The most probable label.
    pub label: String,
    /// Its probability.
    pub score: f32,
    /// Every label with its probability, best first.
    pub scores: Vec<LabelScore>,
}

impl LabelScores {
    /// Ranks one row of probabilities against the label names (same order).
    pub fn rank(names: &[String], probabilities: ArrayView1<f32>) -> Self {
        let mut scores: Vec<LabelScore> = names
            .iter()
            .zip(probabilities)
            .map(|(label, &score)| LabelScore {
                label: label.clone(),
                score,
            })
            .collect();
        scores.sort_by(|a, b| b.score.total_cmp(&a.score));
        let best = scores.first().cloned().unwrap_or(LabelScore {
            label: String::new(),
            score: 0.0,
        });
        Self {
            label: best.label,
            score: best.score,
            scores,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn cosine_logits_are_scaled_cosines() {
        let emb = array![[3.0f32, 4.0], [1.0, 0.0]];
        let labels = array![[1.0f32, 0.0], [0.0, 2.0]];
        let logits = cosine_logits(emb.view(), labels.view(), 20.0);
        assert!((logits[[0, 0]] - 20.0 * 0.6).abs() < 1e-5);
        assert!((logits[[0, 1]] - 20.0 * 0.8).abs() < 1e-5);
        assert!((logits[[1, 0]] - 20.0).abs() < 1e-5);
        assert!(logits[[1, 1]].abs() < 1e-5);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_survive_large_logits() {
        let p = softmax_rows(&array![[1000.0f32, 1000.0], [0.0, f32::ln(3.0)]]);
        assert!((p[[0, 0]] - 0.5).abs() < 1e-6);
        assert!((p[[1, 1]] - 0.75).abs() < 1e-6);
    }

    #[test]
    fn rank_puts_the_best_label_first() {
        let names = vec!["neg".to_string(), "pos".to_string()];
        let ranked = LabelScores::rank(&names, ndarray::arr1(&[0.2, 0.8]).view());
        assert_eq!(ranked.label, "pos");
        assert_eq!(ranked.scores[1].label, "neg");
    }

    #[test]
    fn rank_reads_rows_of_any_layout() {
        // A column of a row-major matrix is not contiguous; its scores must still all be there.
        let names = vec!["neg".to_string(), "pos".to_string()];
        let probabilities = ndarray::arr2(&[[0.3, 0.0], [0.7, 0.0]]);
        let ranked = LabelScores::rank(&names, probabilities.column(0));
        assert_eq!(ranked.scores.len(), 2);
        assert_eq!(ranked.label, "pos");
    }
}
