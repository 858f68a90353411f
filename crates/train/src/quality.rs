//! Issue 10's comparison as tables: for each data size (k examples per label, or the whole
//! training set), the test accuracy of every method on every task, as the mean over seeds with
//! its spread, from the JSON lines `scripts/quality.sh` writes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use deltaspace_core::tuning::eval::Scores;

/// One measurement: a method (`row`) on a task at a data size and seed.
#[derive(Debug, Clone, Deserialize)]
pub struct QualityLine {
    pub row: String,
    pub task: String,
    /// "16", "64" or "full".
    pub shots: String,
    pub seed: u64,
    /// The subspace of the z rows; none for the rows that use no subspace.
    pub subspace: Option<String>,
    pub test: Scores,
}

/// The methods in the order the tables list them: baselines, the subspace rows, the DETs.
pub const ROWS: [&str; 9] = [
    "zero-shot",
    "probe",
    "head-only",
    "z",
    "z+head",
    "random",
    "lora",
    "adapter",
    "prefix",
];

/// Reads the JSON lines of `path`.
pub fn read(path: &Path) -> anyhow::Result<Vec<QualityLine>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

/// Mean and sample standard deviation (0 for one value) of accuracies, in %.
fn mean_spread(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let spread = if values.len() > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (mean, spread)
}

/// Test accuracies (%) by (shots, row, task); zero-shot, which trains nothing, counts at every k.
fn gather(lines: &[QualityLine]) -> BTreeMap<(String, String, String), Vec<f64>> {
    let mut cells: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
    for line in lines {
        let accuracy = 100.0 * f64::from(line.test.accuracy);
        let sizes: Vec<String> = if line.row == "zero-shot" {
            ["16", "64", "full"].map(String::from).to_vec()
        } else {
            vec![line.shots.clone()]
        };
        for shots in sizes {
            cells
                .entry((shots, line.row.clone(), line.task.clone()))
                .or_default()
                .push(accuracy);
        }
    }
    cells
}

/// One markdown table per data size: methods × tasks, "mean ± spread (seeds)", and the mean over
/// the tasks that every row of the table has.
pub fn markdown(lines: &[QualityLine]) -> String {
    let cells = gather(lines);
    let mut tasks: Vec<&str> = lines.iter().map(|l| l.task.as_str()).collect();
    tasks.sort();
    tasks.dedup();
    let mut out = String::new();
    let mut subspaces: Vec<&str> = lines.iter().filter_map(|l| l.subspace.as_deref()).collect();
    subspaces.sort();
    subspaces.dedup();
    let subspaces = match subspaces.as_slice() {
        [] => "none".to_string(),
        names => names.join(", "),
    };
    let _ = writeln!(
        out,
        "Subspace: {subspaces}. Test accuracy (%), mean ± spread over seeds (n).\n"
    );
    for shots in ["16", "64", "full"] {
        let title = match shots {
            "full" => "the whole training set of each task".to_string(),
            k => format!("k = {k} examples per label"),
        };
        let _ = writeln!(out, "### {title}\n");
        let _ = writeln!(out, "| method | {} | mean over tasks |", tasks.join(" | "));
        let _ = writeln!(out, "|---|{}---|", "---|".repeat(tasks.len()));
        for row in ROWS {
            let mut means = Vec::new();
            let mut line = format!("| {row} |");
            for task in &tasks {
                match cells.get(&(shots.to_string(), row.to_string(), task.to_string())) {
                    Some(values) => {
                        let (mean, spread) = mean_spread(values);
                        means.push(mean);
                        let _ = match values.len() {
                            1 => write!(line, " {mean:.1} |"),
                            n => write!(line, " {mean:.1} ± {spread:.1} ({n}) |"),
                        };
                    }
                    None => line.push_str(" — |"),
                }
            }
            let overall = if means.len() == tasks.len() && !means.is_empty() {
                format!(" {:.1} |", means.iter().sum::<f64>() / means.len() as f64)
            } else {
                " — |".to_string()
            };
            let _ = writeln!(out, "{line}{overall}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(row: &str, task: &str, shots: &str, seed: u64, accuracy: f32) -> QualityLine {
        QualityLine {
            row: row.into(),
            task: task.into(),
            shots: shots.into(),
            seed,
            subspace: Some("minilm-d16".into()),
            test: Scores {
                accuracy,
                macro_f1: accuracy,
                n: 100,
            },
        }
    }

    #[test]
    fn the_tables_average_seeds_and_tasks_and_mark_what_is_missing() {
        let lines = vec![
            line("zero-shot", "a", "full", 1, 0.5),
            line("zero-shot", "b", "full", 1, 0.7),
            line("probe", "a", "16", 1, 0.6),
            line("probe", "a", "16", 2, 0.8),
            line("probe", "b", "16", 1, 0.9),
        ];
        let text = markdown(&lines);
        assert!(
            text.contains("| zero-shot | 50.0 | 70.0 | 60.0 |"),
            "{text}"
        );
        assert!(
            text.contains("| probe | 70.0 ± 14.1 (2) | 90.0 | 80.0 |"),
            "{text}"
        );
        assert!(text.contains("| z+head | — | — | — |"), "{text}");
    }
}
