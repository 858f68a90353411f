//! The JSON lines the trainer's commands print, one serde type per command: the CLI writes them,
//! scripts keep them (scripts/pipeline.sh, stage0.sh, quality.sh), and [`crate::report`] reads
//! them back through the same types. Fields added since a results file was written are optional,
//! so committed results stay readable.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::stage1::RefinementDev;
use deltaspace_core::det::DetKind;
use deltaspace_core::tuning::data::Split;
use deltaspace_core::tuning::eval::Scores;
use deltaspace_core::tuning::head::HeadTuning;

/// `eval --task | --solution | --zero-shot`: one model's scores on one split (`det` is none for
/// the frozen model).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalLine {
    pub task: String,
    pub det: Option<DetKind>,
    pub split: Split,
    #[serde(flatten)]
    pub scores: Scores,
}

/// `eval --probe`: the linear probe's scores, with the L2 strength chosen on dev.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeLine {
    pub task: String,
    /// Always "probe".
    pub method: String,
    pub l2: f64,
    pub split: Split,
    #[serde(flatten)]
    pub scores: Scores,
    pub dev: Scores,
    pub shots: Option<usize>,
    pub seed: u64,
}

/// `transfer`: a code found through `source_det`, decoded through `target_det`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferLine {
    pub task: String,
    pub source_det: DetKind,
    pub target_det: DetKind,
    pub split: Split,
    #[serde(flatten)]
    pub scores: Scores,
}

/// `tune`: the task found, through the DET that scored best on dev.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TuneLine {
    pub task: String,
    pub det: DetKind,
    /// What of the head was tuned (lines from before heads: none).
    #[serde(default)]
    pub head: HeadTuning,
    pub optimizer: String,
    pub dev: Scores,
    pub test: Scores,
    /// Where z started: `normal` (N(0, 0.02²)), `upstream:TASK` (the upstream code chosen), or
    /// the task file `--init` gave (lines from before starts: none).
    #[serde(default)]
    pub start: Option<String>,
    /// With `--init upstream`: the cosine between the mean label-description embeddings of the
    /// task and of the upstream task whose code was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_similarity: Option<f32>,
    /// Dev accuracy of every DET tuned from that start (lines from before the choice on dev:
    /// empty).
    #[serde(default)]
    pub dev_by_det: BTreeMap<String, f32>,
    /// The best dev accuracy over DETs of every start tuned from (lines from before starts:
    /// empty).
    #[serde(default)]
    pub dev_by_start: BTreeMap<String, f32>,
    pub seconds: f64,
    pub file: PathBuf,
}

/// `train det`: one stage-0 solution, with the step of its best dev accuracy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SolutionLine {
    pub task: String,
    pub det: DetKind,
    pub dev: Scores,
    pub test: Scores,
    pub step: usize,
    pub file: PathBuf,
}

/// A DET's test score on a task in its original space: `train det`'s line (what
/// scripts/pipeline.sh keeps), or `eval --solution`'s (results files written before).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OriginalLine {
    Solution(SolutionLine),
    Eval(EvalLine),
}

impl OriginalLine {
    /// (task, DET, test accuracy), if the line scores a DET.
    pub fn test_accuracy(self) -> Option<(String, DetKind, f32)> {
        match self {
            Self::Solution(line) => Some((line.task, line.det, line.test.accuracy)),
            Self::Eval(line) => line.det.map(|det| (line.task, det, line.scores.accuracy)),
        }
    }
}

/// `train subspace`: the subspace written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubspaceLine {
    pub id: String,
    pub d: usize,
    pub tasks: Vec<String>,
    pub refinement_steps: usize,
    /// Held-out dev accuracy before and after refinement (absent without refinement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refinement_dev: Option<RefinementDev>,
    pub file: PathBuf,
}

/// `landscape`: the images drawn and the grid's JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LandscapeLine {
    pub task: String,
    pub images: Vec<PathBuf>,
    pub grid: PathBuf,
}

/// Prints one line on stdout; a closed stdout (`| head -1`) is an error, not a panic.
pub fn print<T: Serialize>(line: &T) -> anyhow::Result<()> {
    writeln!(std::io::stdout(), "{}", serde_json::to_string(line)?).context("writing stdout")
}

/// The lines of `path` that are JSON objects (none if the file is absent), each read as `T`.
pub fn read<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| line.trim_start().starts_with('{'))
        .map(|(number, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{} line {}", path.display(), number + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_the_shape_scripts_read_and_old_lines_still_parse() {
        let scores = Scores {
            accuracy: 0.5,
            macro_f1: 0.25,
            n: 4,
        };
        let eval = EvalLine {
            task: "sst2".into(),
            det: None,
            split: Split::Test,
            scores,
        };
        let text = serde_json::to_string(&eval).unwrap();
        assert_eq!(
            text,
            r#"{"task":"sst2","det":null,"split":"test","accuracy":0.5,"macro_f1":0.25,"n":4}"#
        );
        // A tune line from before heads and the choice of DET on dev.
        let old = r#"{"det":"adapter","dev":{"accuracy":0.7,"macro_f1":0.7,"n":5},"file":"t.json",
            "optimizer":"adam","seconds":7.5,"task":"mpqa","test":{"accuracy":0.8,"macro_f1":0.8,"n":5}}"#;
        let tune: TuneLine = serde_json::from_str(old).unwrap();
        assert_eq!(tune.head, HeadTuning::None);
        assert!(tune.dev_by_det.is_empty());
        assert_eq!(tune.test.accuracy, 0.8);
    }
}
