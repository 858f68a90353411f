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
use deltaspace_core::tuning::data::Split;

/// Test accuracy keyed by (task, det).
type TestAccuracy = BTreeMap<(String, DetKind), f64>;

/// Relative % (or accuracy %) by task, then by column (a DET, or a transfer "X→Y").
pub type Table = BTreeMap<String, BTreeMap<String, f64>>;

/// Everything the tables are made of.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub space: String,
    pub tasks: Vec<String>,
    /// The original-space DETs (denominators).
    pub original: Table,
    /// The frozen model (z = 0, no delta).
    pub zero_shot: BTreeMap<String, f64>,
    /// Relative % of subspace optimization: task → det → %.
    pub optimization: Table,
    /// Relative % of zero-shot transfer: task → "A→L" → %.
    pub transfer: Table,
    /// Relative % of the random-subspace control: task → det → %.
    pub random_control: Table,
    /// Average relative % of optimization per d, over the DETs run at that d.
    pub ablation: BTreeMap<usize, f64>,
    /// Gradient vs CMA-ES at the default space: optimizer → (mean relative %, mean seconds).
    pub optimizers: BTreeMap<String, (f64, f64)>,
    pub averages: BTreeMap<String, f64>,
}

/// (task, det) → test accuracy of every tune line in `path`, with the mean seconds. A (task, det)
/// that comes twice is refused: one of the two would count in the seconds and not in the scores.
fn tuned(path: &Path) -> anyhow::Result<(TestAccuracy, f64)> {
    let lines: Vec<TuneLine> = lines::read(path)?;
    let mut scores = TestAccuracy::new();
    for line in &lines {
        let key = task_det(line.task.clone(), line.det);
        insert_once(&mut scores, key, f64::from(line.test.accuracy), path)?;
    }
    let seconds = mean(lines.iter().map(|line| line.seconds));
    Ok((scores, seconds))
}

/// Inserts `value` under `key` unless `key` is there already: a results file that scores one thing
/// twice (a rerun appended to it) would otherwise count whichever line came last, silently.
/// `what` names the key in the error.
fn insert_once<K: Ord, V>(
    map: &mut BTreeMap<K, V>,
    (key, what): (K, String),
    value: V,
    path: &Path,
) -> anyhow::Result<()> {
    if map.contains_key(&key) {
        anyhow::bail!(
            "{}: {what} comes twice; keep one line for each",
            path.display()
        );
    }
    map.insert(key, value);
    Ok(())
}

/// A (task, DET) key, with its name for [`insert_once`]'s error.
fn task_det(task: String, det: DetKind) -> ((String, DetKind), String) {
    let what = format!("{task} through {det}");
    ((task, det), what)
}

fn mean(values: impl IntoIterator<Item = f64>) -> f64 {
    let values: Vec<f64> = values.into_iter().collect();
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// A relative table's values, every task and column together.
fn all_values(table: &Table) -> impl Iterator<Item = f64> + '_ {
    table.values().flat_map(|row| row.values().copied())
}

/// The original-space DETs' test accuracies: the denominators of every relative figure.
struct Originals(TestAccuracy);

impl Originals {
    fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("original.jsonl");
        let mut scores = TestAccuracy::new();
        for line in lines::read::<OriginalLine>(&path)? {
            if let Some((task, det, accuracy)) = line.test_accuracy() {
                insert_once(&mut scores, task_det(task, det), f64::from(accuracy), &path)?;
            }
        }
        Ok(Self(scores))
    }

    /// 100 × `accuracy` ÷ the original `det`'s on `task`, when that is known and above 0.
    fn relative(&self, task: &str, det: DetKind, accuracy: f64) -> Option<f64> {
        let original = self.0.get(&(task.to_string(), det)).filter(|o| **o > 0.0)?;
        Some(100.0 * accuracy / original)
    }

    /// Every (task, det) score of `scores` relative to the same DET's original.
    fn table(&self, scores: &TestAccuracy) -> Table {
        let mut table = Table::new();
        for ((task, det), &accuracy) in scores {
            if let Some(relative) = self.relative(task, *det, accuracy) {
                table
                    .entry(task.clone())
                    .or_default()
                    .insert(det.to_string(), relative);
            }
        }
        table
    }

    /// The originals themselves, in %.
    fn percent(&self) -> Table {
        let mut table = Table::new();
        for ((task, det), accuracy) in &self.0 {
            table
                .entry(task.clone())
                .or_default()
                .insert(det.to_string(), 100.0 * accuracy);
        }
        table
    }
}

/// The tune runs of one optimizer in one space, through every DET: their scores, and each DET's
/// mean seconds per run.
struct Runs {
    scores: TestAccuracy,
    seconds: BTreeMap<DetKind, f64>,
}

impl Runs {
    /// `<dir>/tune/<space>-<optimizer>-<det>.jsonl` for every DET (a missing file has no runs).
    fn read(dir: &Path, space: &str, optimizer: &str) -> anyhow::Result<Self> {
        let mut runs = Runs {
            scores: TestAccuracy::new(),
            seconds: BTreeMap::new(),
        };
        for det in DetKind::ALL {
            let file = format!("{space}-{optimizer}-{det}.jsonl");
            let (scores, seconds) = tuned(&dir.join("tune").join(file))?;
            if !scores.is_empty() {
                runs.seconds.insert(det, seconds);
            }
            runs.scores.extend(scores);
        }
        Ok(runs)
    }
}

/// Builds the report for `space` (e.g. "d16") from `dir`.
pub fn build(dir: &Path, space: &str) -> anyhow::Result<Report> {
    let originals = Originals::read(dir)?;
    let adam = Runs::read(dir, space, "adam")?;
    let original = originals.percent();
    let mut report = Report {
        space: space.to_string(),
        tasks: original.keys().cloned().collect(),
        original,
        zero_shot: zero_shot(dir)?,
        optimization: originals.table(&adam.scores),
        transfer: transfer(dir, space, &originals)?,
        random_control: originals
            .table(&Runs::read(dir, &format!("random-{space}"), "adam")?.scores),
        ablation: ablation(dir, &originals)?,
        optimizers: optimizers(&originals, &adam, &Runs::read(dir, space, "cmaes")?),
        averages: BTreeMap::new(),
    };
    report.averages = averages(&report);
    if report.optimization.is_empty() && report.transfer.is_empty() {
        anyhow::bail!(
            "{} has no results for --space {space} (tune/{space}-adam-<det>.jsonl, \
             transfer/{space}-<det>.jsonl); its tune/ has: {}",
            dir.display(),
            spaces_in(dir).join(", ")
        );
    }
    Ok(report)
}

/// The spaces named by `<dir>/tune/<space>-<optimizer>-<det>.jsonl`, for the error of a
/// mistyped --space.
fn spaces_in(dir: &Path) -> Vec<String> {
    let names = std::fs::read_dir(dir.join("tune"))
        .into_iter()
        .flatten()
        .flatten();
    let spaces = names.filter_map(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        name.rsplitn(3, '-').nth(2).map(str::to_string)
    });
    spaces
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The frozen model's test accuracy (%) per task.
fn zero_shot(dir: &Path) -> anyhow::Result<BTreeMap<String, f64>> {
    let path = dir.join("zero_shot.jsonl");
    let mut zero_shot = BTreeMap::new();
    for line in lines::read::<EvalLine>(&path)? {
        let accuracy = 100.0 * f64::from(line.scores.accuracy);
        let what = line.task.clone();
        insert_once(&mut zero_shot, (line.task, what), accuracy, &path)?;
    }
    Ok(zero_shot)
}

/// Zero-shot transfer X→Y on the test split, relative to Y's original, from
/// `<dir>/transfer/<space>-<X>.jsonl`.
fn transfer(dir: &Path, space: &str, originals: &Originals) -> anyhow::Result<Table> {
    let mut table = Table::new();
    for det in DetKind::ALL {
        let path = dir.join("transfer").join(format!("{space}-{det}.jsonl"));
        for line in lines::read::<TransferLine>(&path)? {
            let (source, target) = (line.source_det, line.target_det);
            let accuracy = f64::from(line.scores.accuracy);
            let Some(relative) = (source != target && line.split == Split::Test)
                .then(|| originals.relative(&line.task, target, accuracy))
                .flatten()
            else {
                continue;
            };
            let column = format!("{}{}{}", source.letter(), TRANSFER_ARROW, target.letter());
            let what = format!("{} {column}", line.task);
            let row = table.entry(line.task).or_default();
            insert_once(row, (column, what), relative, &path)?;
        }
    }
    Ok(table)
}

/// Joins the source and target DETs' letters in the transfer table's columns ("L→A").
const TRANSFER_ARROW: char = '→';

/// Mean relative % of optimization per d, from every `<dir>/tune/d<d>-adam-adapter.jsonl`: the
/// ablation goes through one DET (Adapter), so every d is measured alike.
fn ablation(dir: &Path, originals: &Originals) -> anyhow::Result<BTreeMap<usize, f64>> {
    let mut ablation = BTreeMap::new();
    for entry in std::fs::read_dir(dir.join("tune"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(d) = name
            .strip_prefix('d')
            .and_then(|rest| rest.strip_suffix("-adam-adapter.jsonl"))
            .and_then(|d| d.parse::<usize>().ok())
        else {
            continue;
        };
        let relative = originals.table(&tuned(&entry.path())?.0);
        if !relative.is_empty() {
            ablation.insert(d, mean(all_values(&relative)));
        }
    }
    Ok(ablation)
}

/// Adam against CMA-ES, DET by DET where CMA-ES ran: each one's mean relative % on the tasks
/// CMA-ES ran, and its own mean seconds per run.
fn optimizers(originals: &Originals, adam: &Runs, cmaes: &Runs) -> BTreeMap<String, (f64, f64)> {
    let mut table = BTreeMap::new();
    for (&det, &seconds) in &cmaes.seconds {
        let ran = |key: &(String, DetKind)| key.1 == det && cmaes.scores.contains_key(key);
        let subset = |scores: &TestAccuracy| -> TestAccuracy {
            (scores.iter().filter(|(key, _)| ran(key)))
                .map(|(key, accuracy)| (key.clone(), *accuracy))
                .collect()
        };
        let relative = |scores: &TestAccuracy| mean(all_values(&originals.table(&subset(scores))));
        let adam_seconds = adam.seconds.get(&det).copied().unwrap_or(0.0);
        table.insert(
            format!("adam ({det})"),
            (relative(&adam.scores), adam_seconds),
        );
        table.insert(format!("cmaes ({det})"), (relative(&cmaes.scores), seconds));
    }
    table
}

/// The mean of each relative table that has values, and the control of transfer: the frozen
/// model relative to the target DET of every transfer cell, so that it averages over the same
/// (task, DET) pairs as transfer does.
fn averages(report: &Report) -> BTreeMap<String, f64> {
    let mut averages = BTreeMap::new();
    for (name, table) in [
        ("optimization", &report.optimization),
        ("transfer", &report.transfer),
        ("random_control", &report.random_control),
    ] {
        if !table.is_empty() {
            averages.insert(name.to_string(), mean(all_values(table)));
        }
    }
    let control = transfer_control(report);
    if !control.is_empty() {
        averages.insert("zero_shot_control".into(), mean(control));
    }
    averages
}

/// For each cell X→Y of the transfer table, the frozen model's test accuracy relative to Y's
/// original on that task: what transfer would score if z carried nothing over.
fn transfer_control(report: &Report) -> Vec<f64> {
    let target = |column: &str| {
        let letter = column.split(TRANSFER_ARROW).nth(1)?.chars().next()?;
        DetKind::ALL.into_iter().find(|det| det.letter() == letter)
    };
    let mut control = Vec::new();
    for (task, row) in &report.transfer {
        let (Some(zero), Some(originals)) = (report.zero_shot.get(task), report.original.get(task))
        else {
            continue;
        };
        for column in row.keys() {
            let original = target(column).and_then(|det| originals.get(&det.to_string()));
            // The transfer cell exists only where the original scored above 0.
            control.extend(original.map(|original| 100.0 * zero / original));
        }
    }
    control
}

fn cell(value: Option<&f64>) -> String {
    value.map_or("–".to_string(), |v| format!("{v:.1}"))
}

/// The tables as markdown.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    originals_table(&mut out, report);
    let space = &report.space;
    let pairs = ["A→L", "A→P", "L→A", "L→P", "P→A", "P→L"];
    let sections = [
        (
            format!("Relative performance (%) of subspace optimization ({space})"),
            &report.optimization,
            &DETS[..],
            &DET_HEADERS[..],
        ),
        (
            format!("Relative performance (%) of zero-shot subspace solution transfer ({space})"),
            &report.transfer,
            &pairs[..],
            &pairs[..],
        ),
        (
            format!("Control: z optimized in a random subspace of the same d (random-{space})"),
            &report.random_control,
            &DETS[..],
            &DET_HEADERS[..],
        ),
    ];
    for (title, table, columns, headers) in sections {
        relative_table(&mut out, &report.tasks, &title, table, columns, headers);
    }
    if !report.ablation.is_empty() {
        let _ = writeln!(
            out,
            "\n### Ablation over d: mean relative performance (%) of subspace optimization through \
             Adapter\n\n| d | relative % |\n|---|---|"
        );
        for (d, value) in &report.ablation {
            let _ = writeln!(out, "| {d} | {value:.1} |");
        }
    }
    if !report.optimizers.is_empty() {
        let _ = writeln!(
            out,
            "\n### Gradient (Adam) vs CMA-ES ({space})\n\n| optimizer (DET) | relative % | seconds \
             per run |\n|---|---|---|"
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

/// The DETs as the tables order them, and their column titles.
const DETS: [&str; 3] = ["adapter", "lora", "prefix"];
const DET_HEADERS: [&str; 3] = ["Adapter", "LoRA", "Prefix"];

/// The denominators: each original DET's test accuracy, and the frozen model's, per task.
fn originals_table(out: &mut String, report: &Report) {
    let _ = writeln!(
        out,
        "### Test accuracy (%) of the original-space DETs and the frozen model\n\n\
         | task | Adapter | LoRA | Prefix | frozen, z = 0 |\n|---|---|---|---|---|"
    );
    for task in &report.tasks {
        let row = report.original.get(task);
        let cells: Vec<String> = (DETS.iter())
            .map(|det| cell(row.and_then(|r| r.get(*det))))
            .collect();
        let zero_shot = cell(report.zero_shot.get(task));
        let _ = writeln!(out, "| {task} | {} | {zero_shot} |", cells.join(" | "));
    }
}

/// One relative table: a row per task with its mean, and a last row of column means (bold),
/// "–" where there is nothing to average.
fn relative_table(
    out: &mut String,
    tasks: &[String],
    title: &str,
    table: &Table,
    columns: &[&str],
    headers: &[&str],
) {
    let _ = writeln!(out, "\n### {title}\n");
    let _ = writeln!(
        out,
        "| task | {} | Avg. |\n|---|{}---|",
        headers.join(" | "),
        "---|".repeat(headers.len())
    );
    let mut by_column: Vec<Vec<f64>> = vec![Vec::new(); columns.len()];
    for task in tasks {
        let row = table.get(task);
        let values: Vec<Option<&f64>> = (columns.iter())
            .map(|column| row.and_then(|r| r.get(*column)))
            .collect();
        for (column, value) in by_column.iter_mut().zip(&values) {
            column.extend(value.copied());
        }
        let present: Vec<f64> = values.iter().flatten().map(|v| **v).collect();
        let average = (!present.is_empty()).then(|| mean(present));
        let cells: Vec<String> = values.iter().map(|v| cell(*v)).collect();
        let _ = writeln!(
            out,
            "| {task} | {} | {} |",
            cells.join(" | "),
            cell(average.as_ref())
        );
    }
    let bold_mean = |values: &[f64]| match values.is_empty() {
        true => "–".to_string(),
        false => format!("**{:.1}**", mean(values.iter().copied())),
    };
    let averages: Vec<String> = by_column.iter().map(|v| bold_mean(v)).collect();
    let overall = bold_mean(&by_column.concat());
    let _ = writeln!(out, "| **Avg.** | {} | {overall} |", averages.join(" | "));
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
        let mut on_dev = transfer("prefix", 0.3);
        on_dev["split"] = json!("dev");
        write(
            "transfer/d8-lora.jsonl",
            &[transfer("adapter", 0.45), transfer("lora", 0.6), on_dev],
        );
        let report = build(dir.path(), "d8").unwrap();
        assert!((report.optimization["t"]["lora"] - 75.0).abs() < 1e-4);
        assert!((report.transfer["t"]["L→A"] - 90.0).abs() < 1e-4);
        assert_eq!(
            report.transfer["t"].len(),
            1,
            "source = target is not transfer, nor is a dev line"
        );
        // The control of transfer: the frozen model (0.4) against L→A's target, Adapter (0.5),
        // not against every original DET (which would give the mean of 80 and 50).
        assert!((report.averages["zero_shot_control"] - 80.0).abs() < 1e-4);
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
        // Writing `lines` to `file` makes build fail with `message`; `fixed` then mends the file.
        let refused = |file: &str, lines: &[Value], message: &str, fixed: &[Value]| {
            write(file, lines);
            let error = build(dir.path(), "d8").unwrap_err().to_string();
            assert!(error.contains(message), "{error}");
            write(file, fixed);
        };
        // A (task, DET) twice in one file would count in the seconds and not in the scores.
        let (once, twice) = (tune("lora", 0.6, 3.0), tune("lora", 0.7, 5.0));
        let message = "t through lora comes twice";
        refused(
            "tune/d8-adam-lora.jsonl",
            &[once.clone(), twice],
            message,
            &[once],
        );
        // So would a denominator or a transfer cell, whichever line came last.
        let (once, twice) = (transfer("adapter", 0.45), transfer("adapter", 0.5));
        let message = "d8-lora.jsonl: t L→A comes twice";
        refused(
            "transfer/d8-lora.jsonl",
            &[once.clone(), twice],
            message,
            &[once],
        );
        let (once, twice) = (solution("lora", 0.8), solution("lora", 0.7));
        let message = "original.jsonl: t through lora comes twice";
        refused("original.jsonl", &[once.clone(), twice], message, &[once]);
    }
}
