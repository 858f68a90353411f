//! The paper's tables from a results directory (JSON lines written by `train det`, `eval`,
//! `tune` and `transfer`; scripts/pipeline.sh lays it out): relative performance of subspace
//! optimization per DET, the zero-shot transfer matrix, both controls, the ablation over d and
//! gradient vs CMA-ES.
//!
//! Relative performance = test accuracy in the subspace ÷ test accuracy of the same DET trained
//! in its original space on that task × 100 (paper §4); for transfer X→Y the DET is Y.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::lines::{self, EvalLine, OriginalLine, TransferLine, TuneLine};
use deltaspace_core::det::DetKind;

/// Test accuracy keyed by (task, det).
type TestAccuracy = BTreeMap<(String, DetKind), f64>;

/// Everything the tables are made of.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub space: String,
    pub tasks: Vec<String>,
    /// The original-space DETs (denominators).
    pub original: BTreeMap<String, BTreeMap<String, f64>>,
    /// The frozen model (z = 0, no delta).
    pub zero_shot: BTreeMap<String, f64>,
    /// Relative % of subspace optimization: task → det → %.
    pub optimization: BTreeMap<String, BTreeMap<String, f64>>,
    /// Relative % of zero-shot transfer: task → "A→L" → %.
    pub transfer: BTreeMap<String, BTreeMap<String, f64>>,
    /// Relative % of the random-subspace control: task → det → %.
    pub random_control: BTreeMap<String, BTreeMap<String, f64>>,
    /// Average relative % of optimization per d, over the DETs run at that d.
    pub ablation: BTreeMap<usize, f64>,
    /// Gradient vs CMA-ES at the default space: optimizer → (mean relative %, mean seconds).
    pub optimizers: BTreeMap<String, (f64, f64)>,
    pub averages: BTreeMap<String, f64>,
}

/// (task, det) → test accuracy of every tune line in `path`, with the mean seconds.
fn tuned(path: &Path) -> anyhow::Result<(TestAccuracy, f64)> {
    let lines: Vec<TuneLine> = lines::read(path)?;
    let scores = lines
        .iter()
        .map(|line| ((line.task.clone(), line.det), f64::from(line.test.accuracy)))
        .collect();
    let seconds = mean(lines.iter().map(|line| line.seconds));
    Ok((scores, seconds))
}

fn mean(values: impl IntoIterator<Item = f64>) -> f64 {
    let values: Vec<f64> = values.into_iter().collect();
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// Builds the report for `space` (e.g. "d16") from `dir`.
pub fn build(dir: &Path, space: &str) -> anyhow::Result<Report> {
    let mut report = Report {
        space: space.to_string(),
        ..Report::default()
    };
    let mut original = TestAccuracy::new();
    for line in lines::read::<OriginalLine>(&dir.join("original.jsonl"))? {
        let Some((task, det, accuracy)) = line.test_accuracy() else {
            continue;
        };
        let accuracy = f64::from(accuracy);
        original.insert((task.clone(), det), accuracy);
        report
            .original
            .entry(task)
            .or_default()
            .insert(det.to_string(), 100.0 * accuracy);
    }
    report.tasks = report.original.keys().cloned().collect();
    for line in lines::read::<EvalLine>(&dir.join("zero_shot.jsonl"))? {
        let accuracy = f64::from(line.scores.accuracy);
        report.zero_shot.insert(line.task, 100.0 * accuracy);
    }
    let relative = |scores: &TestAccuracy| -> BTreeMap<String, BTreeMap<String, f64>> {
        let mut out: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        for ((task, det), acc) in scores {
            if let Some(base) = original.get(&(task.clone(), *det)).filter(|b| **b > 0.0) {
                out.entry(task.clone())
                    .or_default()
                    .insert(det.to_string(), 100.0 * acc / base);
            }
        }
        out
    };
    let tune_file = |space: &str, optimizer: &str, det: DetKind| {
        dir.join("tune")
            .join(format!("{space}-{optimizer}-{det}.jsonl"))
    };
    let mut default_scores = TestAccuracy::new();
    // Mean seconds of a run through each DET, for the optimizers' table.
    let mut gradient_seconds = BTreeMap::new();
    for det in DetKind::ALL {
        let (scores, seconds) = tuned(&tune_file(space, "adam", det))?;
        gradient_seconds.insert(det, seconds);
        default_scores.extend(scores);
    }
    report.optimization = relative(&default_scores);
    let mut random_scores = TestAccuracy::new();
    for det in DetKind::ALL {
        random_scores.extend(tuned(&tune_file(&format!("random-{space}"), "adam", det))?.0);
    }
    report.random_control = relative(&random_scores);
    for det in DetKind::ALL {
        let path = dir.join("transfer").join(format!("{space}-{det}.jsonl"));
        for line in lines::read::<TransferLine>(&path)? {
            let (task, source, target) = (line.task.as_str(), line.source_det, line.target_det);
            let acc = f64::from(line.scores.accuracy);
            if source == target {
                continue;
            }
            if let Some(base) = original
                .get(&(task.to_string(), target))
                .filter(|b| **b > 0.0)
            {
                let key = format!("{}→{}", source.letter(), target.letter());
                report
                    .transfer
                    .entry(task.to_string())
                    .or_default()
                    .insert(key, 100.0 * acc / base);
            }
        }
    }
    for entry in std::fs::read_dir(dir.join("tune"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix('d') else {
            continue;
        };
        let Some((d, tail)) = rest.split_once('-') else {
            continue;
        };
        // The ablation goes through one DET (Adapter), so every d is measured alike.
        if let (Ok(d), "adam-adapter.jsonl") = (d.parse::<usize>(), tail) {
            let relative = relative(&tuned(&entry.path())?.0);
            let values: Vec<f64> = relative
                .values()
                .flat_map(|m| m.values().copied())
                .collect();
            if !values.is_empty() {
                report.ablation.insert(d, mean(values));
            }
        }
    }
    for det in DetKind::ALL {
        let (scores, seconds) = tuned(&tune_file(space, "cmaes", det))?;
        if scores.is_empty() {
            continue;
        }
        let cma = relative(&scores);
        let gradient: TestAccuracy = default_scores
            .iter()
            .filter(|((t, d), _)| *d == det && scores.contains_key(&(t.clone(), *d)))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let grad_rel = relative(&gradient);
        report.optimizers.insert(
            format!("adam ({det})"),
            (
                mean(grad_rel.values().flat_map(|m| m.values().copied())),
                gradient_seconds[&det],
            ),
        );
        report.optimizers.insert(
            format!("cmaes ({det})"),
            (
                mean(cma.values().flat_map(|m| m.values().copied())),
                seconds,
            ),
        );
    }
    for (name, table) in [
        ("optimization", &report.optimization),
        ("transfer", &report.transfer),
        ("random_control", &report.random_control),
    ] {
        let values: Vec<f64> = table.values().flat_map(|m| m.values().copied()).collect();
        if !values.is_empty() {
            report.averages.insert(name.into(), mean(values));
        }
    }
    let zero_relative: Vec<f64> = report
        .zero_shot
        .iter()
        .flat_map(|(task, z)| {
            report
                .original
                .get(task)
                .into_iter()
                .flat_map(move |m| m.values().map(move |o| 100.0 * z / o))
        })
        .collect();
    if !zero_relative.is_empty() {
        report
            .averages
            .insert("zero_shot_control".into(), mean(zero_relative));
    }
    Ok(report)
}

fn cell(value: Option<&f64>) -> String {
    value.map_or("–".to_string(), |v| format!("{v:.1}"))
}

/// The tables as markdown.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let dets = ["adapter", "lora", "prefix"];
    let _ = writeln!(
        out,
        "### Test accuracy (%) of the original-space DETs and the frozen model\n"
    );
    let _ = writeln!(
        out,
        "| task | Adapter | LoRA | Prefix | frozen, z = 0 |\n|---|---|---|---|---|"
    );
    for task in &report.tasks {
        let row = report.original.get(task);
        let cells: Vec<String> = dets
            .iter()
            .map(|d| cell(row.and_then(|r| r.get(*d))))
            .collect();
        let _ = writeln!(
            out,
            "| {task} | {} | {} |",
            cells.join(" | "),
            cell(report.zero_shot.get(task))
        );
    }
    let table = |out: &mut String,
                 title: &str,
                 data: &BTreeMap<String, BTreeMap<String, f64>>,
                 columns: &[&str],
                 headers: &[&str]| {
        let _ = writeln!(out, "\n### {title}\n");
        let _ = writeln!(
            out,
            "| task | {} | Avg. |\n|---|{}---|",
            headers.join(" | "),
            "---|".repeat(headers.len())
        );
        let mut column_values: Vec<Vec<f64>> = vec![Vec::new(); columns.len()];
        for task in &report.tasks {
            let row = data.get(task);
            let values: Vec<Option<&f64>> = columns
                .iter()
                .map(|c| row.and_then(|r| r.get(*c)))
                .collect();
            for (i, v) in values.iter().enumerate() {
                column_values[i].extend(v.copied());
            }
            let present: Vec<f64> = values.iter().flatten().map(|v| **v).collect();
            let avg = (!present.is_empty()).then(|| mean(present));
            let cells: Vec<String> = values.iter().map(|v| cell(*v)).collect();
            let _ = writeln!(
                out,
                "| {task} | {} | {} |",
                cells.join(" | "),
                cell(avg.as_ref())
            );
        }
        let averages: Vec<String> = column_values
            .iter()
            .map(|v| {
                if v.is_empty() {
                    "–".into()
                } else {
                    format!("**{:.1}**", mean(v.iter().copied()))
                }
            })
            .collect();
        let all: Vec<f64> = column_values.iter().flatten().copied().collect();
        let overall = match all.is_empty() {
            true => "–".to_string(),
            false => format!("**{:.1}**", mean(all)),
        };
        let _ = writeln!(out, "| **Avg.** | {} | {overall} |", averages.join(" | "));
    };
    table(
        &mut out,
        &format!(
            "Relative performance (%) of subspace optimization ({})",
            report.space
        ),
        &report.optimization,
        &dets,
        &["Adapter", "LoRA", "Prefix"],
    );
    let pairs = ["A→L", "A→P", "L→A", "L→P", "P→A", "P→L"];
    table(
        &mut out,
        &format!(
            "Relative performance (%) of zero-shot subspace solution transfer ({})",
            report.space
        ),
        &report.transfer,
        &pairs,
        &pairs,
    );
    table(
        &mut out,
        &format!(
            "Control: z optimized in a random subspace of the same d (random-{})",
            report.space
        ),
        &report.random_control,
        &dets,
        &["Adapter", "LoRA", "Prefix"],
    );
    if !report.ablation.is_empty() {
        let _ = writeln!(
            out,
            "\n### Ablation over d: mean relative performance (%) of subspace optimization through Adapter\n\n| d | relative % |\n|---|---|"
        );
        for (d, value) in &report.ablation {
            let _ = writeln!(out, "| {d} | {value:.1} |");
        }
    }
    if !report.optimizers.is_empty() {
        let _ = writeln!(
            out,
            "\n### Gradient (Adam) vs CMA-ES ({})\n\n| optimizer (DET) | relative % | seconds per run |\n|---|---|---|",
            report.space
        );
        for (name, (relative, seconds)) in &report.optimizers {
            let _ = writeln!(out, "| {name} | {relative:.1} | {seconds:.0} |");
        }
    }
    let _ = writeln!(out, "\n### Averages\n\n| measure | relative % |\n|---|---|");
    for (name, value) in &report.averages {
        let _ = writeln!(out, "| {name} | {value:.1} |");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn relative_performance_divides_by_the_same_dets_original_score() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, lines: &[Value]| {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(
                path,
                lines
                    .iter()
                    .map(|l| l.to_string() + "\n")
                    .collect::<String>(),
            )
            .unwrap();
        };
        let scores = |accuracy: f32| json!({"accuracy": accuracy, "macro_f1": accuracy, "n": 10});
        let solution = |det: &str, accuracy: f32| {
            json!({"task": "t", "det": det, "dev": scores(accuracy), "test": scores(accuracy),
                   "step": 50, "file": "t.safetensors"})
        };
        let tune = |det: &str, accuracy: f32, seconds: f64| {
            json!({"task": "t", "det": det, "optimizer": "adam", "dev": scores(accuracy),
                   "test": scores(accuracy), "seconds": seconds, "file": "t.json"})
        };
        let transfer = |target: &str, accuracy: f32| {
            json!({"task": "t", "source_det": "lora", "target_det": target, "split": "test",
                   "accuracy": accuracy, "macro_f1": accuracy, "n": 10})
        };
        // train det's lines, and eval's as older results files have them.
        write(
            "original.jsonl",
            &[
                solution("lora", 0.8),
                json!({"task": "t", "det": "adapter", "split": "test", "accuracy": 0.5,
                       "macro_f1": 0.5, "n": 10}),
            ],
        );
        write(
            "zero_shot.jsonl",
            &[
                json!({"task": "t", "det": null, "split": "test", "accuracy": 0.4, "macro_f1": 0.4, "n": 10}),
            ],
        );
        write("tune/d8-adam-lora.jsonl", &[tune("lora", 0.6, 3.0)]);
        write("tune/d8-adam-adapter.jsonl", &[tune("adapter", 0.45, 2.0)]);
        let cmaes = json!({"task": "t", "det": "lora", "optimizer": "cmaes", "dev": scores(0.5),
                           "test": scores(0.5), "seconds": 9.0, "file": "t.json"});
        write("tune/d8-cmaes-lora.jsonl", &[cmaes]);
        write(
            "transfer/d8-lora.jsonl",
            &[transfer("adapter", 0.45), transfer("lora", 0.6)],
        );
        let report = build(dir.path(), "d8").unwrap();
        assert!((report.optimization["t"]["lora"] - 75.0).abs() < 1e-4);
        assert!((report.transfer["t"]["L→A"] - 90.0).abs() < 1e-4);
        assert_eq!(
            report.transfer["t"].len(),
            1,
            "source = target is not transfer"
        );
        // The ablation counts Adapter only: 0.45 / 0.5.
        assert!((report.ablation[&8] - 90.0).abs() < 1e-4);
        assert!((report.averages["optimization"] - 82.5).abs() < 1e-4);
        assert!(
            !report.averages.contains_key("random_control"),
            "no random-subspace results"
        );
        // Each optimizer's seconds are its own DET's: Adam through LoRA took 3 s, not the mean 2.5.
        assert_eq!(report.optimizers["adam (lora)"].1, 3.0);
        assert_eq!(report.optimizers["cmaes (lora)"].1, 9.0);
        let md = markdown(&report);
        assert!(md.contains("| t | 50.0 | 80.0 | – | 40.0 |"), "{md}");
        assert!(
            !md.contains("**0.0**"),
            "an empty table averages to –: {md}"
        );
        assert!(md.contains("L→A"));
    }
}
