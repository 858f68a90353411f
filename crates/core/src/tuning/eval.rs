//! Evaluation: accuracy and macro-F1 of (task, DET, z) units over a split, all units' rows mixed
//! in shared encoder runs, sorted by length so padding stays small.

use ndarray::ArrayView1;
use serde::Serialize;

use super::batch::{EncodedRows, Row, TrainTask};
use super::data::Split;
use crate::classifier::Classes;
use crate::det::DetKind;
use crate::model::{DeltaParams, Encoder};

/// What `deltaspace eval` prints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct Scores {
    pub accuracy: f32,
    pub macro_f1: f32,
    pub n: usize,
}

/// A task decoded through one DET from one code z, scored against its classes.
#[derive(Debug, Clone, Copy)]
pub struct CodedUnit<'a> {
    pub task: usize,
    pub det: DetKind,
    pub z: &'a [f32],
    pub classes: &'a Classes,
}

/// Scores of every unit on `split`, in unit order. `limit` caps the examples per unit.
pub fn evaluate(
    encoder: &Encoder,
    tasks: &[TrainTask],
    units: &[CodedUnit<'_>],
    params: &DeltaParams,
    split: Split,
    batch_rows: usize,
    limit: Option<usize>,
) -> anyhow::Result<Vec<Scores>> {
    let mut rows: Vec<(usize, Row)> = Vec::new();
    for (unit_index, unit) in units.iter().enumerate() {
        let examples = tasks[unit.task].data.split(split);
        let examples = &examples[..limit.unwrap_or(usize::MAX).min(examples.len())];
        for example in examples {
            rows.push((
                unit_index,
                Row {
                    task: unit.task,
                    example,
                    det: unit.det,
                    z: unit.z,
                    weight: 1.0,
                    classes: unit.classes,
                },
            ));
        }
    }
    rows.sort_by_key(|(_, row)| row.example.input.char_len());
    let logit_scale = encoder.manifest().logit_scale;
    let mut predictions: Vec<Vec<(usize, Option<usize>)>> = vec![Vec::new(); units.len()];
    for chunk in rows.chunks(batch_rows.max(1)) {
        let chunk_rows: Vec<Row> = chunk.iter().map(|(_, row)| *row).collect();
        let encoded = EncodedRows::new(encoder, &chunk_rows, params.d())?;
        let embeddings = encoder.embed(encoded.batch(), params)?;
        for ((unit_index, row), embedding) in chunk.iter().zip(embeddings.rows()) {
            let predicted = argmax(row.classes.logits(embedding, logit_scale).view());
            predictions[*unit_index].push((row.example.label, predicted));
        }
    }
    Ok(units
        .iter()
        .zip(predictions)
        .map(|(unit, pairs)| score_pairs(&pairs, tasks[unit.task].data.labels.len()))
        .collect())
}

/// The label with the highest score (the first of equals), or none when a score is not finite
/// (a z that made the encoder overflow predicts nothing, rather than label 0).
fn argmax(values: ArrayView1<f32>) -> Option<usize> {
    if !values.iter().all(|v| v.is_finite()) {
        return None;
    }
    let best = values
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        });
    Some(best.0)
}

/// Accuracy and macro-F1 (over the labels that occur as truth or prediction) of (truth, predicted)
/// pairs. A pair without a prediction counts as wrong: a false negative of its truth.
pub fn score_pairs(pairs: &[(usize, Option<usize>)], labels: usize) -> Scores {
    let n = pairs.len();
    if n == 0 {
        return Scores {
            accuracy: 0.0,
            macro_f1: 0.0,
            n,
        };
    }
    let correct = pairs.iter().filter(|(t, p)| Some(*t) == *p).count();
    let (mut tp, mut fp, mut fneg) = (
        vec![0usize; labels],
        vec![0usize; labels],
        vec![0usize; labels],
    );
    for &(truth, predicted) in pairs {
        match predicted {
            Some(predicted) if predicted == truth => tp[truth] += 1,
            Some(predicted) => {
                fp[predicted] += 1;
                fneg[truth] += 1;
            }
            None => fneg[truth] += 1,
        }
    }
    let f1s: Vec<f32> = (0..labels)
        .filter(|&c| tp[c] + fp[c] + fneg[c] > 0)
        .map(|c| 2.0 * tp[c] as f32 / (2 * tp[c] + fp[c] + fneg[c]) as f32)
        .collect();
    Scores {
        accuracy: correct as f32 / n as f32,
        macro_f1: f1s.iter().sum::<f32>() / f1s.len().max(1) as f32,
        n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_and_macro_f1_match_hand_counts() {
        // truth, predicted: class 0 has tp 2 fp 1 fn 0 → F1 0.8; class 1 tp 1 fp 0 fn 1 → F1 2/3.
        let m = score_pairs(&[(0, Some(0)), (0, Some(0)), (1, Some(1)), (1, Some(0))], 3);
        assert_eq!(m.n, 4);
        assert!((m.accuracy - 0.75).abs() < 1e-6);
        assert!(
            (m.macro_f1 - (0.8 + 2.0 / 3.0) / 2.0).abs() < 1e-6,
            "{}",
            m.macro_f1
        );
    }

    #[test]
    fn scores_that_are_not_finite_predict_nothing_and_count_as_wrong() {
        assert_eq!(argmax(ndarray::arr1(&[0.1, 0.7, 0.7]).view()), Some(1));
        assert_eq!(argmax(ndarray::arr1(&[f32::NAN, f32::NAN]).view()), None);
        assert_eq!(argmax(ndarray::arr1(&[0.3, f32::INFINITY]).view()), None);
        // Two rows of label 0 with NaN scores: not "always label 0", but nothing right.
        let m = score_pairs(&[(0, None), (0, None), (1, Some(1))], 2);
        assert!((m.accuracy - 1.0 / 3.0).abs() < 1e-6);
        // Label 0: tp 0, fn 2 → F1 0; label 1: tp 1 → F1 1.
        assert!((m.macro_f1 - 0.5).abs() < 1e-6, "{}", m.macro_f1);
    }
}
