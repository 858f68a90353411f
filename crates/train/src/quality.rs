//! Issue 10's comparison as tables: for each data size (k examples per label, or the whole
//! training set), the test accuracy of every method on every task, as the mean over seeds with
//! its spread, from the JSON lines `scripts/quality.sh` writes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use deltaspace_core::tuning::eval::Scores;
use deltaspace_core::tuning::tune::{Target, replaces};

/// One measurement: a method (`row`) on a task at a data size and seed.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct QualityLine {
    pub row: String,
    pub task: String,
    /// "16", "64" or "full".
    pub shots: String,
    pub seed: u64,
    /// The subspace of the z rows; none for the rows that use no subspace.
    pub subspace: Option<String>,
    /// The DET the run kept; none for the rows that use none.
    #[serde(default)]
    pub det: Option<String>,
    /// What the row chose on (early stopping, the DET, the start); none for zero-shot.
    #[serde(default)]
    pub dev: Option<Scores>,
    pub test: Scores,
    /// The run's wall time, where recorded.
    #[serde(default)]
    pub seconds: Option<f64>,
    /// Of a "guarded" line, the row whose run `tune`'s default keeps: "z+head" or "warm".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<String>,
}

/// The methods in the order the tables list them: baselines, the subspace rows, the DETs.
/// "guarded" is derived ([`guarded`]); the others are `scripts/quality.sh`'s rows.
pub const ROWS: [&str; 11] = [
    "zero-shot",
    "probe",
    "head-only",
    "z",
    "z+head",
    "warm",
    "guarded",
    "random",
    "lora",
    "adapter",
    "prefix",
];

/// The lines of `paths`, read in order. A line replaces an earlier file's line of the same run
/// (row, task, shots, seed), so a later file overrides an earlier one (the old schedule's head
/// only over the new one's). The same run twice in one file, or z rows of two subspaces, is
/// refused: the tables would average them as if they were seeds.
pub fn read_all(paths: &[PathBuf]) -> anyhow::Result<Vec<QualityLine>> {
    let mut lines: Vec<QualityLine> = Vec::new();
    let mut runs: HashMap<(String, String, String, u64), (usize, &Path)> = HashMap::new();
    for path in paths {
        for line in read(path)? {
            anyhow::ensure!(
                line.row != "guarded",
                "{}: a line of row \"guarded\", which the report derives from the z+head and warm \
                 lines; drop it",
                path.display()
            );
            // The tables have a place for these only: another would be left out of them silently.
            anyhow::ensure!(
                ROWS.contains(&line.row.as_str()) && SIZES.contains(&line.shots.as_str()),
                "{}: a line of row {:?} at shots {:?}; the report knows the rows {} and the sizes {}",
                path.display(),
                line.row,
                line.shots,
                ROWS.join(", "),
                SIZES.join(", ")
            );
            let run = (
                line.row.clone(),
                line.task.clone(),
                line.shots.clone(),
                line.seed,
            );
            match runs.get(&run) {
                Some(&(_, earlier)) if earlier == path.as_path() => anyhow::bail!(
                    "{}: {} on {} at shots {} seed {} comes twice (a run recorded twice, or the file \
                     passed twice); keep one line per run",
                    path.display(),
                    run.0,
                    run.1,
                    run.2,
                    run.3
                ),
                Some(&(index, _)) => {
                    lines[index] = line;
                    runs.insert(run, (index, path));
                }
                None => {
                    runs.insert(run, (lines.len(), path));
                    lines.push(line);
                }
            }
        }
    }
    let subspaces: BTreeSet<&str> = lines.iter().filter_map(|l| l.subspace.as_deref()).collect();
    anyhow::ensure!(
        subspaces.len() <= 1,
        "lines of {} subspaces ({}): report one subspace's file at a time",
        subspaces.len(),
        subspaces.into_iter().collect::<Vec<_>>().join(", ")
    );
    Ok(lines)
}

/// Reads the JSON lines of `path`.
fn read(path: &Path) -> anyhow::Result<Vec<QualityLine>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // Numbered before the blank lines are left out, so an error names the file's own line.
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

/// The product's default, `tune` without `--init`: of the z + head run from N(0, 0.02²) and the
/// warm one from the nearest upstream code (rows "z+head" and "warm"), the one `tune` keeps
/// ([`replaces`]: the warm one only when it leads on dev, by more than the default start margin),
/// as a "guarded" line per (task, shots, seed, subspace) where both have dev scores, naming the
/// row it kept. Each start of the product's run trains on the rows it would alone, so this is its
/// result.
pub fn guarded(lines: &[QualityLine]) -> Vec<QualityLine> {
    let same = |a: &QualityLine, b: &QualityLine| {
        (&a.task, &a.shots, a.seed, &a.subspace) == (&b.task, &b.shots, b.seed, &b.subspace)
    };
    let rows = |row: &'static str| lines.iter().filter(move |l| l.row == row);
    rows("z+head")
        .filter_map(|cold| {
            let warm = rows("warm").find(|warm| same(cold, warm))?;
            let (cold_dev, warm_dev) = (cold.dev.as_ref()?, warm.dev.as_ref()?);
            let (cold_start, warm_start) = ((0, cold_dev.accuracy), (1, warm_dev.accuracy));
            let kept = if replaces(cold_start, warm_start, Target::DEFAULT.start_margin) {
                warm
            } else {
                cold
            };
            Some(QualityLine {
                row: "guarded".into(),
                kept: Some(kept.row.clone()),
                ..kept.clone()
            })
        })
        .collect()
}

/// `lines` followed by their [`guarded`] lines: what the tables and `report --json` show.
pub fn with_guarded(lines: &[QualityLine]) -> Vec<QualityLine> {
    [lines, &guarded(lines)].concat()
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

/// Test accuracies (%) and their seeds by (shots, row, task); zero-shot, which trains nothing,
/// counts at every k.
fn gather(lines: &[QualityLine]) -> Cells {
    let mut cells = Cells::new();
    for line in lines {
        let accuracy = 100.0 * f64::from(line.test.accuracy);
        let sizes: Vec<String> = if line.row == "zero-shot" {
            SIZES.map(String::from).to_vec()
        } else {
            vec![line.shots.clone()]
        };
        for shots in sizes {
            cells
                .entry((shots, line.row.clone(), line.task.clone()))
                .or_default()
                .push((line.seed, accuracy));
        }
    }
    cells
}

/// The data sizes, in table order.
const SIZES: [&str; 3] = ["16", "64", "full"];

/// (seed, accuracy %) by (shots, row, task).
type Cells = BTreeMap<(String, String, String), Vec<(u64, f64)>>;

/// A row's (seed, accuracy %) on one task at one data size.
fn cell<'c>(cells: &'c Cells, shots: &str, row: &str, task: &str) -> Option<&'c [(u64, f64)]> {
    let key = (shots.to_string(), row.to_string(), task.to_string());
    cells.get(&key).map(Vec::as_slice)
}

/// A cell's accuracies, seeds left out.
fn accuracies(cells: &Cells, shots: &str, row: &str, task: &str) -> Option<Vec<f64>> {
    let cell = cell(cells, shots, row, task)?;
    Some(cell.iter().map(|&(_, accuracy)| accuracy).collect())
}

/// The mean over `tasks` of `per_task`; none unless every task has a value.
fn mean_over(tasks: &[&str], per_task: impl Fn(&str) -> Option<f64>) -> Option<f64> {
    let values: Option<Vec<f64>> = tasks.iter().map(|task| per_task(task)).collect();
    let values = values.filter(|v| !v.is_empty())?;
    Some(values.iter().sum::<f64>() / values.len() as f64)
}

/// The mean over `tasks` of a row's per-task means over seeds; none unless every task has it.
fn mean_over_tasks(cells: &Cells, shots: &str, row: &str, tasks: &[&str]) -> Option<f64> {
    mean_over(tasks, |task| {
        Some(mean_spread(&accuracies(cells, shots, row, task)?).0)
    })
}

/// The mean over `tasks` of a row's accuracies at one seed; none unless every task has it.
fn mean_at_seed(cells: &Cells, shots: &str, row: &str, tasks: &[&str], seed: u64) -> Option<f64> {
    mean_over(tasks, |task| {
        let cell = cell(cells, shots, row, task)?;
        cell.iter().find(|&&(s, _)| s == seed).map(|&(_, a)| a)
    })
}

/// `ours` − `other` on the mean over `tasks`, seed by seed, for the seeds where both have every
/// task.
fn gaps_per_seed(cells: &Cells, shots: &str, ours: &str, other: &str, tasks: &[&str]) -> Vec<f64> {
    let seeds: BTreeSet<u64> = (cells.iter())
        .filter(|((s, row, _), _)| s == shots && row == ours)
        .flat_map(|(_, cell)| cell.iter().map(|&(seed, _)| seed))
        .collect();
    (seeds.into_iter())
        .filter_map(|seed| {
            let ours = mean_at_seed(cells, shots, ours, tasks, seed)?;
            Some(ours - mean_at_seed(cells, shots, other, tasks, seed)?)
        })
        .collect()
}

/// Issue 10's targets on the mean over tasks, per data size, for the guarded default and for
/// z + head from N(0, 0.02²): against the stronger of the probe and head only (≥ +5 at k = 16,
/// ≥ +3 on the whole training set), against the random subspace (≥ +3), and against LoRA in its
/// original space (≥ −2 on the whole training set); each gap also seed by seed.
fn targets(cells: &Cells, tasks: &[&str]) -> String {
    let gap = |row: &str, shots: &str, other: &[&str], goal: Option<f64>| -> String {
        let ours = mean_over_tasks(cells, shots, row, tasks);
        let best = (other.iter())
            .map(|other| Some((mean_over_tasks(cells, shots, other, tasks)?, *other)))
            .collect::<Option<Vec<(f64, &str)>>>()
            .and_then(|m| m.into_iter().reduce(|a, b| if b.0 > a.0 { b } else { a }));
        let (Some(ours), Some((best, best_row))) = (ours, best) else {
            return "—".into();
        };
        let difference = ours - best;
        let mut notes: Vec<String> = match goal {
            Some(goal) if difference >= goal => vec![format!("goal ≥ {goal:+}: met")],
            Some(goal) => vec![format!("goal ≥ {goal:+}: not met")],
            None => vec![],
        };
        let per_seed = gaps_per_seed(cells, shots, row, best_row, tasks);
        if per_seed.len() > 1 {
            let gaps: Vec<String> = per_seed.iter().map(|g| format!("{g:+.1}")).collect();
            notes.push(format!("per seed {}", gaps.join(" ")));
        }
        if notes.is_empty() {
            format!("{difference:+.1}")
        } else {
            format!("{difference:+.1} ({})", notes.join("; "))
        }
    };
    let mut out = String::from(
        "### Targets (issue 10), on the mean over tasks\n\n\
         guarded: the product's default (z + head from both starts, the better on dev); z+head: \
         from N(0, 0.02²) alone.\n\n\
         | data | row | − stronger of probe and head-only | − random | − lora |\n\
         |---|---|---|---|---|\n",
    );
    for shots in SIZES {
        let stronger_goal = match shots {
            "16" => Some(5.0),
            "full" => Some(3.0),
            _ => None,
        };
        let lora_goal = (shots == "full").then_some(-2.0);
        for ours in ["guarded", "z+head"] {
            let _ = writeln!(
                out,
                "| {} | {ours} | {} | {} | {} |",
                size_title(shots),
                gap(ours, shots, &["probe", "head-only"], stronger_goal),
                gap(ours, shots, &["random"], Some(3.0)),
                gap(ours, shots, &["lora"], lora_goal),
            );
        }
    }
    out
}

fn size_title(shots: &str) -> String {
    match shots {
        "full" => "the whole training set of each task".to_string(),
        k => format!("k = {k} examples per label"),
    }
}

/// One markdown table per data size: methods × tasks, "mean ± spread (seeds)", and each row's
/// mean over the tasks where it has every task ("—" otherwise); then the targets.
pub fn markdown(lines: &[QualityLine]) -> String {
    let lines = &with_guarded(lines);
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
    for shots in SIZES {
        let _ = writeln!(out, "### {}\n", size_title(shots));
        let _ = writeln!(out, "| method | {} | mean over tasks |", tasks.join(" | "));
        let _ = writeln!(out, "|---|{}---|", "---|".repeat(tasks.len()));
        for row in ROWS {
            let mut line = format!("| {row} |");
            for task in &tasks {
                match accuracies(&cells, shots, row, task) {
                    Some(values) => {
                        let (mean, spread) = mean_spread(&values);
                        let _ = match values.len() {
                            1 => write!(line, " {mean:.1} |"),
                            n => write!(line, " {mean:.1} ± {spread:.1} ({n}) |"),
                        };
                    }
                    None => line.push_str(" — |"),
                }
            }
            let overall = mean_over_tasks(&cells, shots, row, &tasks)
                .map_or(" — |".to_string(), |mean| format!(" {mean:.1} |"));
            let _ = writeln!(out, "{line}{overall}");
        }
        out.push('\n');
    }
    out.push_str(&targets(&cells, &tasks));
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
            det: None,
            dev: None,
            test: Scores {
                accuracy,
                macro_f1: accuracy,
                n: 100,
            },
            seconds: None,
            kept: None,
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
        assert!(
            text.contains("| k = 16 examples per label | z+head | — | — | — |"),
            "no z+head, no target: {text}"
        );
    }

    #[test]
    fn the_targets_compare_z_and_head_with_the_stronger_baseline_and_say_whether_they_are_met() {
        let mut lines = Vec::new();
        for (task, shift) in [("a", 0.0), ("b", 0.1)] {
            lines.push(line("probe", task, "16", 1, 0.60 + shift));
            lines.push(line("head-only", task, "16", 1, 0.62 + shift));
            lines.push(line("z+head", task, "16", 1, 0.68 + shift));
            lines.push(line("random", task, "16", 1, 0.66 + shift));
            lines.push(line("z+head", task, "full", 1, 0.80 + shift));
            lines.push(line("lora", task, "full", 1, 0.81 + shift));
        }
        let text = markdown(&lines);
        let k16 = "| k = 16 examples per label | z+head | +6.0 (goal ≥ +5: met) | +2.0 (goal ≥ +3: not met) | — |";
        assert!(text.contains(k16), "{text}");
        let full =
            "| the whole training set of each task | z+head | — | — | -1.0 (goal ≥ -2: met) |";
        assert!(text.contains(full), "{text}");
        let no_warm = "| k = 16 examples per label | guarded | — | — | — |";
        assert!(text.contains(no_warm), "{text}");
    }

    #[test]
    fn a_target_over_several_seeds_gives_the_gap_seed_by_seed() {
        let mut lines = Vec::new();
        for (seed, ours) in [(1, 0.70), (2, 0.74)] {
            for task in ["a", "b"] {
                lines.push(line("z+head", task, "16", seed, ours));
                lines.push(line("random", task, "16", seed, 0.68));
            }
        }
        lines.push(line("z+head", "a", "16", 3, 0.9)); // seed 3 lacks b: no gap of its own
        let text = markdown(&lines);
        let k16 = "| k = 16 examples per label | z+head | — | +7.0 (goal ≥ +3: met; per seed +2.0 +6.0) | — |";
        assert!(text.contains(k16), "{text}");
    }

    #[test]
    fn guarded_keeps_the_start_better_on_dev_and_the_cold_one_on_a_tie() {
        let with_dev = |row: &str, task: &str, seed: u64, dev: f32, accuracy: f32| QualityLine {
            dev: Some(Scores {
                accuracy: dev,
                macro_f1: dev,
                n: 32,
            }),
            ..line(row, task, "16", seed, accuracy)
        };
        let lines = vec![
            with_dev("z+head", "a", 1, 0.7, 0.60),
            with_dev("warm", "a", 1, 0.8, 0.70), // warm better on dev: kept
            with_dev("z+head", "b", 1, 0.7, 0.80),
            with_dev("warm", "b", 1, 0.7, 0.90), // a tie: cold kept
            with_dev("z+head", "a", 2, 0.9, 0.50),
            with_dev("warm", "a", 2, 0.6, 0.40), // cold better on dev: kept
            with_dev("z+head", "b", 2, 0.5, 0.50), // no warm line: no guarded line
            line("z+head", "c", "16", 1, 0.50),
            with_dev("warm", "c", 1, 0.9, 0.90), // the cold line has no dev: no guarded line
        ];
        let kept: Vec<(String, u64, f32, String)> = guarded(&lines)
            .into_iter()
            .map(|l| (l.task, l.seed, l.test.accuracy, l.kept.unwrap()))
            .collect();
        let expected = [
            ("a", 1, 0.70, "warm"),
            ("b", 1, 0.80, "z+head"),
            ("a", 2, 0.50, "z+head"),
        ];
        assert_eq!(
            kept,
            expected.map(|(t, s, a, k)| (t.to_string(), s, a, k.to_string()))
        );
        let text = markdown(&lines);
        assert!(
            text.contains("| guarded | 60.0 ± 14.1 (2) | 80.0 | — | — |"),
            "{text}"
        );
    }

    /// A file of quality.sh's JSON lines: (row, task, seed, subspace, test accuracy) at k = 16.
    fn file(dir: &Path, name: &str, lines: &[(&str, &str, u64, Option<&str>, f32)]) -> PathBuf {
        let text: Vec<String> = (lines.iter())
            .map(|(row, task, seed, subspace, accuracy)| {
                let test =
                    serde_json::json!({"accuracy": accuracy, "macro_f1": accuracy, "n": 100});
                let line = serde_json::json!({"row": row, "task": task, "shots": "16", "seed": seed,
                    "subspace": subspace, "test": test});
                line.to_string()
            })
            .collect();
        let path = dir.join(name);
        std::fs::write(&path, text.join("\n")).unwrap();
        path
    }

    /// A row or size the tables have no place for was kept in --json and left out of the tables.
    #[test]
    fn a_row_or_size_the_report_does_not_know_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let unknown = file(dir.path(), "unknown", &[("mine", "a", 1, None, 0.5)]);
        let error = read_all(&[unknown]).unwrap_err().to_string();
        assert!(error.contains("row \"mine\""), "{error}");
        let known = file(dir.path(), "known", &[("probe", "a", 1, None, 0.5)]);
        let text = std::fs::read_to_string(&known)
            .unwrap()
            .replace("\"16\"", "\"32\"");
        std::fs::write(&known, text).unwrap();
        let error = read_all(&[known]).unwrap_err().to_string();
        assert!(error.contains("shots \"32\""), "{error}");
    }

    /// Blank lines were left out before numbering, so an error named another line.
    #[test]
    fn an_unreadable_line_is_named_by_its_number_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "lines", &[("probe", "a", 1, None, 0.5)]);
        let text = std::fs::read_to_string(&path).unwrap() + "\n\n{not json\n";
        std::fs::write(&path, text).unwrap();
        let error = format!("{:#}", read(&path).unwrap_err());
        assert!(error.contains("lines:3:"), "{error}");
    }

    #[test]
    fn a_later_file_replaces_a_run_and_duplicates_or_two_subspaces_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let new = file(
            dir.path(),
            "new",
            &[
                ("head-only", "a", 1, None, 0.6),
                ("probe", "a", 1, None, 0.5),
            ],
        );
        let old = file(dir.path(), "old", &[("head-only", "a", 1, None, 0.8)]);
        let lines = read_all(&[new.clone(), old]).unwrap();
        let accuracies: Vec<(&str, f32)> = (lines.iter())
            .map(|l| (l.row.as_str(), l.test.accuracy))
            .collect();
        assert_eq!(accuracies, [("head-only", 0.8), ("probe", 0.5)]);

        let twice = file(
            dir.path(),
            "twice",
            &[("z", "a", 1, Some("s"), 0.6), ("z", "a", 1, Some("s"), 0.7)],
        );
        let error = read_all(std::slice::from_ref(&twice))
            .unwrap_err()
            .to_string();
        assert!(error.contains("comes twice"), "{error}");
        // Also when the file that repeats the run overrides an earlier one.
        let first = file(dir.path(), "first", &[("z", "a", 1, Some("s"), 0.5)]);
        let error = read_all(&[first, twice]).unwrap_err().to_string();
        assert!(error.contains("comes twice"), "{error}");
        let other = file(
            dir.path(),
            "other",
            &[("z", "a", 1, Some("s"), 0.6), ("z", "a", 2, Some("t"), 0.7)],
        );
        let error = read_all(&[other]).unwrap_err().to_string();
        assert!(error.contains("2 subspaces (s, t)"), "{error}");
        // "guarded" is derived, never read: a file with it would count its runs twice.
        let derived = file(
            dir.path(),
            "derived",
            &[("guarded", "a", 1, Some("s"), 0.6)],
        );
        let error = read_all(&[derived]).unwrap_err().to_string();
        assert!(
            error.contains("\"guarded\", which the report derives"),
            "{error}"
        );
    }
}
