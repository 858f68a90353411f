//! Layer 2: what a task is: a name, a DET, a code z, labels with descriptions, and optionally a
//! head that learns what descriptions cannot (class priors, tuned label prototypes).
//!
//! One validation serves TASK.json files, the server's uploads and the trainer's outputs, so a
//! task that loads anywhere loads everywhere. A task carries no weights of the model: θ = base +
//! U z is rebuilt from z in the graph, and label embeddings come from the frozen model.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::det::DetKind;

/// A class of a task, described in words: the text the frozen model embeds to score it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Label {
    pub name: String,
    pub description: String,
}

/// A task's head: what it adds to the cosine between a text's embedding and each label's
/// description. Label c scores `logit_scale · cos(e, p_c) + bias_c`, where p_c is the label's
/// tuned prototype, or its description's embedding when the head has none. A head with
/// prototypes and z = 0 is a linear probe on the frozen model's embeddings (cosine form).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// One bias per label, in label order: the class priors descriptions cannot express.
    pub bias: Vec<f32>,
    /// One prototype per label (H values each, any norm), replacing the description embeddings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prototypes: Option<Vec<Vec<f32>>>,
}

/// A task as stored and uploaded: `{name, det, z, labels, head, subspace}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub name: String,
    /// The DET z was found with; the default for predictions (any DET can decode z).
    pub det: DetKind,
    /// The task's code in the subspace: d floats.
    pub z: Vec<f32>,
    pub labels: Vec<Label>,
    /// Class priors and tuned prototypes; without one, labels score by description alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<Head>,
    /// Name or id of the subspace z belongs to; checked against the loaded one when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subspace: Option<String>,
}

/// Bounds a valid task stays within.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TaskLimits {
    /// Largest ‖z‖₂ accepted (trained codes are far below it; it stops garbage, not tasks).
    pub max_z_norm: f32,
    /// Most labels per task.
    pub max_labels: usize,
    /// Longest label name or description, in characters.
    pub max_label_chars: usize,
    /// Largest |bias| of a head, in logit units (the cosine part spans ±logit_scale).
    pub max_head_bias: f32,
}

impl Default for TaskLimits {
    fn default() -> Self {
        Self {
            max_z_norm: 1.0e4,
            max_labels: 1024,
            max_label_chars: 1000,
            max_head_bias: 100.0,
        }
    }
}

/// Why a task is invalid; each message names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    #[error("name {0:?} is invalid: use 1-128 characters of A-Z a-z 0-9 . _ -")]
    Name(String),
    #[error("z has {got} values but the subspace has d = {want}")]
    Dimension { got: usize, want: usize },
    #[error("z[{index}] is not a finite number")]
    NonFinite { index: usize },
    #[error("‖z‖ = {norm} exceeds the bound {max}")]
    Norm { norm: f32, max: f32 },
    #[error("a task needs at least 2 labels, got {0}")]
    TooFewLabels(usize),
    #[error("a task has at most {max} labels, got {got}")]
    TooManyLabels { got: usize, max: usize },
    #[error("label {0:?} appears more than once")]
    DuplicateLabel(String),
    #[error("label {index}: {field} must be 1-{max} characters, not all blank")]
    LabelText {
        index: usize,
        field: &'static str,
        max: usize,
    },
    #[error("head: {0}")]
    Head(String),
    #[error("task is for subspace {task:?} but the server has {loaded:?}")]
    Subspace { task: String, loaded: String },
}

/// Checks a task name: 1-128 of [A-Za-z0-9._-], and not `.` or `..`. Those characters are all
/// unreserved in URLs, so a name travels as a path segment unchanged, except the dot segments,
/// which clients and proxies normalise away (RFC 3986 §5.2.4): such a task could never be reached.
pub fn validate_name(name: &str) -> Result<(), TaskError> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let dot_segment = name == "." || name == "..";
    if (1..=128).contains(&name.len()) && name.chars().all(valid_char) && !dot_segment {
        Ok(())
    } else {
        Err(TaskError::Name(name.chars().take(160).collect()))
    }
}

impl Task {
    /// Reads a TASK.json file (not yet validated against a subspace).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading task {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing task {}", path.display()))
    }

    /// Checks everything a task must be for a subspace of dimension `d`.
    pub fn validate(&self, d: usize, limits: &TaskLimits) -> Result<(), TaskError> {
        validate_name(&self.name)?;
        validate_z(&self.z, d, limits)?;
        validate_labels(&self.labels, limits)?;
        match &self.head {
            Some(head) => validate_head(head, self.labels.len(), limits),
            None => Ok(()),
        }
    }
}

/// Checks a code: length d, finite, within the norm bound.
pub fn validate_z(z: &[f32], d: usize, limits: &TaskLimits) -> Result<(), TaskError> {
    if z.len() != d {
        return Err(TaskError::Dimension {
            got: z.len(),
            want: d,
        });
    }
    if let Some(index) = z.iter().position(|v| !v.is_finite()) {
        return Err(TaskError::NonFinite { index });
    }
    let norm = z.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > limits.max_z_norm {
        return Err(TaskError::Norm {
            norm,
            max: limits.max_z_norm,
        });
    }
    Ok(())
}

/// The norms a prototype may have. Prototypes are normalised where they are used, in f32; within
/// these bounds that neither underflows to a zero vector nor overflows.
pub const PROTOTYPE_NORMS: std::ops::RangeInclusive<f64> = 1e-6..=1e6;

/// Checks a head against its task's label count: one finite bounded bias per label, and one
/// prototype per label with a norm in [`PROTOTYPE_NORMS`], all of one length (the model's H,
/// checked where the model is known).
pub fn validate_head(head: &Head, labels: usize, limits: &TaskLimits) -> Result<(), TaskError> {
    let fail = |message: String| Err(TaskError::Head(message));
    if head.bias.len() != labels {
        return fail(format!(
            "bias has {} values for {labels} labels",
            head.bias.len()
        ));
    }
    if let Some(index) = head
        .bias
        .iter()
        .position(|b| !b.is_finite() || b.abs() > limits.max_head_bias)
    {
        return fail(format!(
            "bias[{index}] is not a finite number within ±{}",
            limits.max_head_bias
        ));
    }
    let Some(prototypes) = &head.prototypes else {
        return Ok(());
    };
    if prototypes.len() != labels {
        return fail(format!(
            "{} prototypes for {labels} labels",
            prototypes.len()
        ));
    }
    let width = prototypes[0].len();
    for (index, prototype) in prototypes.iter().enumerate() {
        let norm = prototype
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        if prototype.len() != width || width == 0 {
            return fail(format!(
                "prototypes[{index}] has {} values, prototypes[0] {width}",
                prototype.len()
            ));
        }
        if !PROTOTYPE_NORMS.contains(&norm) {
            return fail(format!(
                "prototypes[{index}] has norm {norm:e}: it must be finite and within {:e} to {:e} \
                 (prototypes are normalised where they are used)",
                PROTOTYPE_NORMS.start(),
                PROTOTYPE_NORMS.end()
            ));
        }
    }
    Ok(())
}

/// Checks labels: 2 or more, unique names, bounded texts that are not blank.
pub fn validate_labels(labels: &[Label], limits: &TaskLimits) -> Result<(), TaskError> {
    if labels.len() < 2 {
        return Err(TaskError::TooFewLabels(labels.len()));
    }
    if labels.len() > limits.max_labels {
        return Err(TaskError::TooManyLabels {
            got: labels.len(),
            max: limits.max_labels,
        });
    }
    let mut seen = HashSet::new();
    for (index, label) in labels.iter().enumerate() {
        for (field, text) in [("name", &label.name), ("description", &label.description)] {
            let chars = text.chars().count();
            if text.trim().is_empty() || chars > limits.max_label_chars {
                return Err(TaskError::LabelText {
                    index,
                    field,
                    max: limits.max_label_chars,
                });
            }
        }
        if !seen.insert(label.name.as_str()) {
            return Err(TaskError::DuplicateLabel(label.name.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> Task {
        Task {
            name: "sst2.v1".into(),
            det: DetKind::Lora,
            z: vec![0.5, -0.25, 0.0, 1.0],
            labels: vec![
                Label {
                    name: "negative".into(),
                    description: "A negative review.".into(),
                },
                Label {
                    name: "positive".into(),
                    description: "A positive review.".into(),
                },
            ],
            head: Some(Head {
                bias: vec![0.5, -0.5],
                prototypes: Some(vec![vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0]]),
            }),
            subspace: None,
        }
    }

    fn head(task: &mut Task) -> &mut Head {
        task.head.as_mut().unwrap()
    }

    #[test]
    fn a_well_formed_task_validates() {
        task().validate(4, &TaskLimits::default()).unwrap();
    }

    #[test]
    fn each_kind_of_bad_task_names_its_problem() {
        let limits = TaskLimits::default();
        type Corruption = Box<dyn Fn(&mut Task)>;
        let cases: Vec<(Corruption, &str)> = vec![
            (Box::new(|t| t.name = "has space".into()), "name"),
            (Box::new(|t| t.name = String::new()), "name"),
            (Box::new(|t| t.name = "x".repeat(129)), "name"),
            (Box::new(|t| t.z.push(1.0)), "d = 4"),
            (Box::new(|t| t.z[2] = f32::NAN), "z[2]"),
            (Box::new(|t| t.z[0] = f32::INFINITY), "z[0]"),
            (Box::new(|t| t.z[0] = 1e5), "bound"),
            (Box::new(|t| t.labels.truncate(1)), "at least 2"),
            (
                Box::new(|t| t.labels[1].name = " \t".into()),
                "label 1: name must be 1-1000 characters, not all blank",
            ),
            (
                Box::new(|t| t.labels[0].description = String::new()),
                "label 0: description",
            ),
            (
                Box::new(|t| head(t).bias.push(0.0)),
                "3 values for 2 labels",
            ),
            (Box::new(|t| head(t).bias[1] = f32::NAN), "bias[1]"),
            (Box::new(|t| head(t).bias[0] = 1e3), "bias[0]"),
            (
                Box::new(|t| head(t).prototypes.as_mut().unwrap().truncate(1)),
                "1 prototypes for 2 labels",
            ),
            (
                Box::new(|t| head(t).prototypes.as_mut().unwrap()[1] = vec![0.0; 3]),
                "prototypes[1] has norm 0e0",
            ),
            (
                Box::new(|t| head(t).prototypes.as_mut().unwrap()[1] = vec![1e-21; 3]),
                "prototypes[1] has norm 1.7",
            ),
            (
                Box::new(|t| head(t).prototypes.as_mut().unwrap()[0] = vec![1e20; 3]),
                "prototypes[0] has norm 1.7",
            ),
            (
                Box::new(|t| head(t).prototypes.as_mut().unwrap()[0][2] = f32::NAN),
                "prototypes[0] has norm NaN",
            ),
            (
                Box::new(|t| head(t).prototypes.as_mut().unwrap()[1].push(1.0)),
                "prototypes[1] has 4 values",
            ),
            (
                Box::new(|t| t.labels[1].name = "negative".into()),
                "more than once",
            ),
            (
                Box::new(|t| t.labels[0].description = String::new()),
                "description",
            ),
        ];
        for (corrupt, needle) in cases {
            let mut bad = task();
            corrupt(&mut bad);
            let err = bad.validate(4, &limits).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn names_allow_exactly_the_documented_characters() {
        assert!(validate_name("A-z_0.9").is_ok());
        assert!(validate_name(&"a".repeat(128)).is_ok());
        assert!(validate_name("...").is_ok() && validate_name(".a").is_ok());
        for bad in ["a/b", "é", "a b", "a:b", ".", "..", ""] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_fields_in_task_json_are_rejected() {
        let label = r#"{"name":"a","description":"A.","typo":1}"#;
        for (json, field) in [
            (
                r#"{"name":"t","det":"lora","z":[1],"labels":[],"extra":1}"#.to_string(),
                "extra",
            ),
            (
                format!(r#"{{"name":"t","det":"lora","z":[1],"labels":[{label}]}}"#),
                "typo",
            ),
        ] {
            let err = serde_json::from_str::<Task>(&json).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }
}
