//! A task head as the server holds it: biases in f32, prototypes unit-norm in f16. A two-label head
//! costs 2 × 384 × 2 bytes of prototypes instead of twice that; uploads are rounded to what is
//! served ([`ServedHead::round`]), so the stored task, `GET` and predictions all agree.

use half::f16;
use ndarray::Array2;

use deltaspace_core::classifier::Classes;
use deltaspace_core::task::Head;

/// A head ready to score with: what [`Head`] holds, in the form the server keeps in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedHead {
    bias: Box<[f32]>,
    /// [labels × H], row-major, unit rows.
    prototypes: Option<Box<[f16]>>,
}

impl ServedHead {
    /// The head as it will be served: prototypes normalised and rounded to f16.
    pub fn round(head: Head) -> Head {
        let prototypes = head.prototypes.map(|rows| {
            rows.into_iter()
                .map(|row| {
                    let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                    row.iter()
                        .map(|v| f16::from_f32(v / norm).to_f32())
                        .collect()
                })
                .collect()
        });
        Head {
            bias: head.bias,
            prototypes,
        }
    }

    /// Holds a head that [`ServedHead::round`] has rounded (exactly, then).
    pub fn new(head: &Head) -> Self {
        Self {
            bias: head.bias.clone().into(),
            prototypes: head
                .prototypes
                .as_ref()
                .map(|rows| rows.iter().flatten().map(|&v| f16::from_f32(v)).collect()),
        }
    }

    /// The head as a task file holds it.
    pub fn to_head(&self) -> Head {
        let labels = self.bias.len();
        Head {
            bias: self.bias.to_vec(),
            prototypes: self.prototypes.as_ref().map(|values| {
                let hidden = values.len() / labels.max(1);
                values
                    .chunks(hidden.max(1))
                    .map(|row| row.iter().map(|v| v.to_f32()).collect())
                    .collect()
            }),
        }
    }

    /// The classes to score against: the head's prototypes, or the label descriptions'
    /// embeddings `descriptions`, with the head's biases.
    pub fn classes(&self, descriptions: &Array2<f32>) -> Classes {
        let prototypes = match &self.prototypes {
            Some(values) => Array2::from_shape_fn(descriptions.dim(), |(c, h)| {
                values[c * descriptions.ncols() + h].to_f32()
            }),
            None => descriptions.clone(),
        };
        Classes::new(prototypes, self.bias.to_vec().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rounded_head_is_held_exactly_and_scores_with_its_biases() {
        let head = ServedHead::round(Head {
            bias: vec![2.0, -1.0],
            prototypes: Some(vec![vec![3.0, 4.0], vec![0.1, 0.0]]),
        });
        let first = &head.prototypes.as_ref().unwrap()[0];
        assert!(
            (first[0] - 0.6).abs() < 1e-3 && (first[1] - 0.8).abs() < 1e-3,
            "{first:?}"
        );
        let served = ServedHead::new(&head);
        assert_eq!(served.to_head(), head);
        let descriptions = ndarray::arr2(&[[1.0, 0.0], [0.0, 1.0]]);
        let classes = served.classes(&descriptions);
        assert_eq!(classes.bias.to_vec(), vec![2.0, -1.0]);
        assert_eq!(classes.prototypes.row(1).to_vec(), vec![1.0, 0.0]);
        let only_bias = ServedHead::new(&Head {
            bias: vec![0.5, 0.0],
            prototypes: None,
        });
        assert_eq!(only_bias.classes(&descriptions).prototypes, descriptions);
    }
}
