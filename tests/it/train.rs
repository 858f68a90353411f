//! The trainer on the tiny model and the small data fixtures: every command end to end, loss
//! falls, files are written, runs resume exactly, and the report has the paper's tables.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use deltaspace::det::{DetKind, Theta0};
use deltaspace::model::{Encoder, ModelFiles};
use deltaspace::tensor_file::TensorFile;
use deltaspace::tuning::batch::TrainTask;
use deltaspace::tuning::data::Split;
use deltaspace::tuning::fit::{
    FitOptions, Space, Training, Unit, evaluate_values, fit, fit_observed,
};
use deltaspace::tuning::optim::OptimizerKind;
use serde_json::json;

use crate::helpers::{rewrite, tiny_dir, tiny_encoder};

fn data(task: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/data")
        .join(task)
}

/// The fixture tasks `names`, as the trainer loads them for `encoder`.
fn train_tasks(encoder: &Encoder, names: &[&str]) -> Vec<TrainTask> {
    names
        .iter()
        .map(|t| TrainTask::load(encoder, &data(t), None).unwrap())
        .collect()
}

/// The tiny model's θ⁰.
fn tiny_theta0() -> Theta0 {
    Theta0::load(&ModelFiles::open(&tiny_dir()).unwrap()).unwrap()
}

/// Every unit at θ⁰ (δ = 0), the start of original-space training.
fn at_theta0(space: Space<'_>, units: &[Unit], encoder: &Encoder) -> Vec<Vec<f32>> {
    units
        .iter()
        .map(|u| vec![0.0; space.len(u.det, encoder).unwrap()])
        .collect()
}

fn deltaspace(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_deltaspace"))
        .args(args)
        .args(["--provider", "cpu", "--threads", "1"])
        .env("RUST_LOG", "warn")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs the binary with `args`, which must fail, and returns what it wrote on stderr.
fn deltaspace_refuses(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_deltaspace"))
        .args(args)
        .args(["--provider", "cpu", "--threads", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(!output.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn counts_of_zero_and_rates_that_are_not_positive_are_refused_with_the_flag_named() {
    let tune = [
        "tune",
        "--model",
        "tests/fixtures/tiny",
        "--data",
        "tests/fixtures/data/sst2",
        "--out",
        "unused.json",
    ];
    for (flag, value) in [
        ("--shots", "0"),
        ("--batch", "0"),
        ("--eval-every", "0"),
        ("--eval-limit", "0"),
        ("--max-seq-len", "0"),
        ("--run-rows", "0"),
        ("--lr", "0"),
        ("--lr=-0.1", ""),
        ("--lr", "NaN"),
        ("--max-seconds", "inf"),
        ("--sigma", "0"),
    ] {
        let args: Vec<&str> = [&tune[..], &[flag, value]].concat();
        let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
        let output = Command::new(env!("CARGO_BIN_EXE_deltaspace"))
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        let message = String::from_utf8_lossy(&output.stderr);
        let name = flag.split('=').next().unwrap();
        assert_eq!(output.status.code(), Some(2), "{flag} {value}: {message}");
        assert!(message.contains(name), "{flag} {value}: {message}");
    }
    let message = deltaspace_refuses(&["subspace", "random", "--dim", "0", "--out", "unused"]);
    assert!(
        message.contains("--dim") && message.contains("at least 1"),
        "{message}"
    );
}

/// The subspace stage 1 writes carries the upstream tasks' codes: with as many learned columns
/// as tasks, each task's code rebuilds its stage-0 solutions through every DET (θ = base + U z =
/// θ⁰ + δ), and is 0 on the drawn columns; `subspace info` names the tasks.
fn upstream_codes_rebuild_each_solution(model: &str, solutions: &str, file: &str) {
    let files = ModelFiles::open(Path::new(model)).unwrap();
    let subspace = deltaspace::subspace::Subspace::load(Path::new(file), &files.manifest).unwrap();
    let codes = subspace.codes().expect("stage 1 writes the upstream codes");
    assert_eq!(codes.tasks, ["rte", "sst2"]);
    let theta0 = Theta0::load(&files).unwrap();
    let solutions =
        deltaspace::train::solution::Solution::load_dir(Path::new(solutions), &files.manifest)
            .unwrap();
    for solution in &solutions {
        let t = codes
            .tasks
            .iter()
            .position(|t| *t == solution.task)
            .unwrap();
        let z = ndarray::Array1::from(codes.z[t].clone());
        assert_eq!(z.len(), 7);
        assert!(z.iter().skip(2).all(|&v| v == 0.0), "0 on drawn columns");
        let column = solution.det.column(&files.manifest).unwrap();
        let theta = subspace.theta(column, z.view());
        let worst = theta
            .iter()
            .zip(theta0.det(column).iter().zip(&solution.delta))
            .map(|(&t, (&base, &delta))| (t - (base + delta)).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < 1e-4,
            "{} {}: off by {worst}",
            solution.task,
            solution.det
        );
    }
    let info = json_lines(&deltaspace(&["subspace", "info", "--model", model, file]));
    assert_eq!(info[0]["upstream_codes"], json!(["rte", "sst2"]));
    assert_eq!(
        info[0]["upstream_descriptions"], true,
        "made with --data-root"
    );
}

/// `tune --init upstream` starts each task from the code of the upstream task whose label
/// descriptions are nearest to its own; the fixture's tasks are the upstream tasks themselves, so
/// each finds its own code (cosine 1), whatever the order of the tasks. A code rebuilds its
/// solution, so with no step taken a task keeps the dev score `eval --solution` gives that
/// solution. `--init upstream:NAME` starts at the code it names. A subspace without codes, or
/// without their descriptions, refuses. Without `--init`, a task is tuned from both normal and
/// upstream where the subspace can choose a code, and from normal alone where it cannot.
fn tune_from_upstream_starts_at_the_nearest_code(
    model: &str,
    solutions: &str,
    subspace: &str,
    out_dir: String,
) {
    let (sst2, rte) = (
        data("sst2").display().to_string(),
        data("rte").display().to_string(),
    );
    // SOURCE's solution scored on DATA's dev set: macro-F1.
    let dev_score = |data: &str, source: &str| {
        let solution = format!("{solutions}/{source}.lora.safetensors");
        let args = [
            "eval",
            "--model",
            model,
            "--data",
            data,
            "--split",
            "dev",
            "--json",
            "--solution",
            &solution,
        ];
        json_lines(&deltaspace(&args)).remove(0)["macro_f1"]
            .as_f64()
            .unwrap()
    };
    // Tune DATA through LoRA in SPACE with the INIT flags, no step taken: one line per task.
    let tune_from = |space: &str, data: &[&str], init: &[&str]| {
        let args = [
            &["tune", "--model", model, "--subspace", space, "--data"],
            data,
            init,
            &["--det", "lora", "--steps", "0", "--out", &out_dir],
        ];
        json_lines(&deltaspace(&args.concat()))
    };
    for order in [[&sst2, &rte], [&rte, &sst2]] {
        let lines = tune_from(subspace, &[order[0], order[1]], &["--init", "upstream"]);
        for (line, data) in lines.iter().zip(order) {
            let task = line["task"].as_str().unwrap();
            assert_eq!(line["start"], format!("upstream:{task}"), "{line}");
            let similarity = line["upstream_similarity"].as_f64().unwrap();
            assert!((similarity - 1.0).abs() < 1e-5, "{line}");
            assert_eq!(line["dev"]["macro_f1"], dev_score(data, task), "no step");
        }
    }
    // Named: the other task's code.
    let line = tune_from(subspace, &[&sst2], &["--init", "upstream:rte"]).remove(0);
    assert_eq!(line["start"], "upstream:rte", "{line}");
    assert_eq!(line["dev"]["macro_f1"], dev_score(&sst2, "rte"), "no step");

    let random = format!("{out_dir}.random.safetensors");
    deltaspace(&[
        "subspace", "random", "--model", model, "--dim", "7", "--out", &random,
    ]);
    let undescribed = format!("{out_dir}.undescribed.safetensors");
    let data_root = data("").display().to_string();
    let args = decomposition_args(model, solutions, "7", &undescribed, &data_root);
    deltaspace(&args[..args.len() - 4]); // without --data-root: codes, but no descriptions
    let refused = format!("{out_dir}/refused.json");
    let refuses = |space: &str, init: &str| {
        deltaspace_refuses(&[
            "tune",
            "--model",
            model,
            "--subspace",
            space,
            "--data",
            &sst2,
            "--init",
            init,
            "--out",
            &refused,
        ])
    };
    for init in ["upstream", "upstream:sst2"] {
        let message = refuses(&random, init);
        assert!(message.contains("carries no upstream codes"), "{message}");
    }
    let message = refuses(&undescribed, "upstream");
    assert!(
        message.contains("carries no label descriptions"),
        "{message}"
    );
    // Without --init: the starts tuned, as the line's dev_by_start names them.
    let starts_by_default = |space: &str| {
        let line = tune_from(space, &[&sst2], &[]).remove(0);
        let by_start = line["dev_by_start"].as_object().unwrap();
        by_start.keys().cloned().collect::<Vec<_>>()
    };
    assert_eq!(starts_by_default(subspace), ["normal", "upstream:sst2"]);
    assert_eq!(starts_by_default(&random), ["normal"]);
    assert_eq!(starts_by_default(&undescribed), ["normal"]);
    let message = refuses(subspace, "upstream:cola");
    assert!(
        message.contains("has no code for \"cola\"; it has rte, sst2"),
        "{message}"
    );
    let message = refuses(subspace, "upsteam");
    assert!(
        message.contains("takes normal, upstream, upstream:NAME or a task file"),
        "{message}"
    );
}

/// `train subspace` arguments: the decomposition alone of 2 directions of `solutions`, completed
/// by seeded random ones up to `complete_to`, with the tasks' label descriptions from the
/// fixture's data (the last 4 arguments).
fn decomposition_args<'a>(
    model: &'a str,
    solutions: &'a str,
    complete_to: &'a str,
    out: &'a str,
    data_root: &'a str,
) -> [&'a str; 16] {
    [
        "train",
        "subspace",
        "--model",
        model,
        "--solutions",
        solutions,
        "--dim",
        "2",
        "--complete-to",
        complete_to,
        "--out",
        out,
        "--data-root",
        data_root,
        "--steps",
        "0",
    ]
}

fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn options(steps: usize) -> FitOptions {
    FitOptions {
        steps,
        batch: 8,
        lr: 1e-2,
        optimizer: OptimizerKind::Adam,
        eval_every: 5,
        patience: None,
        eval_limit: Some(8),
        run_rows: 32,
        seed: 1,
        checkpoint: None,
        final_limit: None,
        max_seconds: None,
        start: None,
    }
}

#[test]
fn original_space_training_lowers_the_loss_of_every_det_on_two_tasks_at_once() {
    let encoder = tiny_encoder();
    let theta0 = tiny_theta0();
    let tasks = train_tasks(&encoder, &["sst2", "rte"]);
    let units: Vec<Unit> = (0..2)
        .flat_map(|task| DetKind::ALL.map(|det| Unit::new(task, det)))
        .collect();
    let space = Space::Original { theta0: &theta0 };
    let training = Training {
        encoder: &encoder,
        tasks: &tasks,
        units: &units,
        space,
    };
    let init = at_theta0(space, &units, &encoder);
    // 6 steps of 8 rows are one epoch of the 48 training examples: compare whole epochs.
    let mut fast = options(60);
    fast.lr = 0.05;
    let result = fit(training, init, &fast, "test").unwrap();
    let mean =
        |slice: &[(usize, f32)]| slice.iter().map(|(_, l)| l).sum::<f32>() / slice.len() as f32;
    let (first, last) = (mean(&result.losses[..6]), mean(&result.losses[54..]));
    assert!(last < 0.9 * first, "loss went from {first} to {last}");
    assert_eq!(result.best.len(), 6);
    assert!(
        result
            .best
            .iter()
            .all(|delta| delta.iter().any(|v| *v != 0.0)),
        "every unit moved"
    );
}

#[test]
fn early_stopping_ends_the_run_once_no_unit_improves_on_dev_and_keeps_each_best() {
    let encoder = tiny_encoder();
    let theta0 = tiny_theta0();
    let tasks = train_tasks(&encoder, &["sst2", "rte"]);
    let units = [Unit::new(0, DetKind::Adapter), Unit::new(1, DetKind::Lora)];
    let space = Space::Original { theta0: &theta0 };
    let training = Training {
        encoder: &encoder,
        tasks: &tasks,
        units: &units,
        space,
    };
    let init = at_theta0(space, &units, &encoder);
    // Dev accuracy on 8 examples can improve at most 8 times in a row, so with a patience of
    // one evaluation every unit stops long before step 60.
    let mut patient = options(60);
    patient.eval_every = 1;
    patient.patience = Some(1);
    patient.lr = 0.05;
    let result = fit(training, init, &patient, "test").unwrap();
    assert!(
        result.losses.len() < 60,
        "ran {} steps",
        result.losses.len()
    );
    for (best_step, best) in result.best_step.iter().zip(&result.best) {
        assert!(*best_step >= 1 && *best_step <= result.losses.len());
        assert!(
            best.iter().any(|v| *v != 0.0),
            "the best of a trained unit moved"
        );
    }
    // What each unit keeps scores on dev what the run recorded for it.
    let rescored = evaluate_values(
        &encoder,
        &tasks,
        &units,
        &space,
        &result.best,
        Split::Dev,
        patient.eval_limit,
    )
    .unwrap();
    assert_eq!(rescored.len(), result.best_dev.len());
    // Scored in other runs than during training (rows batch by length across units), so a
    // near-tie may round the other way: at most one of the 8 dev examples apart.
    for (again, kept) in rescored.iter().zip(&result.best_dev) {
        assert!(
            (again.accuracy - kept.accuracy).abs() <= 1.0 / 8.0 + 1e-6,
            "{again:?} {kept:?}"
        );
    }
}

#[test]
fn a_resumed_run_ends_exactly_where_an_uninterrupted_one_does() {
    let encoder = tiny_encoder();
    let theta0 = tiny_theta0();
    let tasks = train_tasks(&encoder, &["sst2"]);
    let units = [Unit::new(0, DetKind::Adapter)];
    let space = Space::Original { theta0: &theta0 };
    let training = Training {
        encoder: &encoder,
        tasks: &tasks,
        units: &units,
        space,
    };
    let init = || at_theta0(space, &units, &encoder);
    let dir = tempfile::tempdir().unwrap();
    let straight = fit(training, init(), &options(10), "straight").unwrap();
    let mut interrupted = options(5);
    interrupted.checkpoint = Some(dir.path().join("checkpoint.safetensors"));
    // (step, optimizer time) of every report.
    let observed = |options: &FitOptions, label: &str| {
        let mut reports = Vec::new();
        let result = fit_observed(training, init(), options, label, &mut |report| {
            reports.push((report.step, report.optimizing));
            Ok(())
        })
        .unwrap();
        (result, reports)
    };
    let (first, first_reports) = observed(&interrupted, "first half");
    interrupted.steps = 10;
    let (resumed, resumed_reports) = observed(&interrupted, "second half");
    assert_eq!(resumed.best, straight.best);
    assert_eq!(resumed.losses.last(), straight.losses.last());
    // Its times go on from the first half's, and the step it resumed at is not reported again.
    let (last_step, last_optimizing) = *first_reports.last().unwrap();
    assert_eq!(last_step, 5);
    assert_eq!(resumed_reports[0].0, 6, "{resumed_reports:?}");
    assert!(
        resumed_reports[0].1 > last_optimizing,
        "{resumed_reports:?}"
    );
    assert!(resumed.seconds > first.seconds);
    // A checkpoint resumes only the run that wrote it: another seed is refused, not continued.
    let mut other = interrupted.clone();
    other.seed = 2;
    let error = fit(training, init(), &other, "other")
        .unwrap_err()
        .to_string();
    assert!(error.contains("another run"), "{error}");
    // Nor another learning rate: it would continue another trajectory.
    let mut faster = interrupted.clone();
    faster.lr *= 2.0;
    let error = fit(training, init(), &faster, "faster")
        .unwrap_err()
        .to_string();
    assert!(error.contains("another schedule"), "{error}");
    // Nor dev scores on another number of examples: the kept best would not compare.
    let mut whole_dev = interrupted.clone();
    whole_dev.eval_limit = None;
    let error = fit(training, init(), &whole_dev, "whole dev")
        .unwrap_err()
        .to_string();
    assert!(error.contains("another schedule"), "{error}");
    // Nor other data: a label described otherwise (the descriptions also choose an upstream
    // start) would continue on another task.
    let mut redescribed = tasks.clone();
    redescribed[0].data.labels[0]
        .description
        .push_str(" Or so.");
    let on_other_data = Training {
        tasks: &redescribed,
        ..training
    };
    let error = fit(on_other_data, init(), &interrupted, "redescribed")
        .unwrap_err()
        .to_string();
    assert!(error.contains("other data"), "{error}");
    // A checkpoint written before runs recorded their data resumes as it is.
    let path = interrupted.checkpoint.clone().unwrap();
    let mut older = TensorFile::read(&path).unwrap();
    assert!(older.metadata.remove("data").is_some());
    rewrite(&path, &older);
    let resumed = fit(training, init(), &interrupted, "older").unwrap();
    assert_eq!(resumed.best, straight.best);
    // Another dev cadence is refused: the stale counts early stopping keeps are counts of it.
    let mut sparser = interrupted.clone();
    sparser.eval_every *= 2;
    let error = fit(training, init(), &sparser, "sparser")
        .unwrap_err()
        .to_string();
    assert!(error.contains("--eval-every"), "{error}");
    // A damaged checkpoint is an error that says so, not a panic.
    let mut damaged = TensorFile::read(&path).unwrap();
    let value = damaged.tensors.get_mut("value.0").unwrap();
    value.values.pop();
    value.shape = vec![value.values.len()];
    rewrite(&path, &damaged);
    let error = fit(training, init(), &interrupted, "damaged")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("damaged") && error.contains("value.0"),
        "{error}"
    );
}

#[test]
fn every_trainer_command_runs_end_to_end_on_the_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name).display().to_string();
    let model = tiny_dir().display().to_string();
    let (sst2, rte) = (
        data("sst2").display().to_string(),
        data("rte").display().to_string(),
    );
    let fast = [
        "--steps",
        "6",
        "--batch",
        "4",
        "--eval-every",
        "3",
        "--lr",
        "0.01",
    ];

    // Stage 0: two tasks × three DETs in one run.
    // A folder whose path says "checkpoint": only files named so are left out as checkpoints.
    let solutions = out("solutions-and-checkpoints");
    let args = [
        &[
            "train", "det", "--model", &model, "--data", &sst2, &rte, "--det", "all", "--out",
            &solutions,
        ][..],
        &fast,
    ]
    .concat();
    let lines = json_lines(&deltaspace(&args));
    assert_eq!(lines.len(), 6);
    for line in &lines {
        assert!(Path::new(line["file"].as_str().unwrap()).is_file());
        assert!(line["test"]["accuracy"].as_f64().unwrap() >= 0.0);
    }

    // Stage 1: decomposition + refinement.
    let subspace = out("subspace.safetensors");
    let data_root = data("").display().to_string();
    let stage1 = [
        "train",
        "subspace",
        "--model",
        &model,
        "--solutions",
        &solutions,
        "--data-root",
        &data_root,
        "--dim",
        "3",
    ];
    let refined = ["--steps", "2", "--batch", "2", "--eval-every", "2"];
    let made = json_lines(&deltaspace(
        &[&stage1[..], &["--out", &subspace], &refined].concat(),
    ));
    assert_eq!(made[0]["d"], 3);
    assert_eq!(made[0]["tasks"].as_array().unwrap().len(), 2);
    // What refinement did on held-out dev: the refined U is kept only if it beats the
    // decomposition, which is what the same command writes with no refinement step.
    let dev = &made[0]["refinement_dev"];
    let (decomposition, best) = (dev["decomposition"].as_f64(), dev["best"].as_f64());
    let unrefined = out("unrefined.safetensors");
    let unrefined = [&stage1[..], &["--out", &unrefined, "--steps", "0"]].concat();
    let unrefined = json_lines(&deltaspace(&unrefined));
    match dev["best_step"].as_u64() {
        Some(0) => {
            assert_eq!(best, decomposition, "{dev}");
            assert_eq!(
                made[0]["id"], unrefined[0]["id"],
                "the decomposition's U is kept"
            );
        }
        Some(2) => {
            assert!(best.unwrap() > decomposition.unwrap(), "{dev}");
            assert_ne!(made[0]["id"], unrefined[0]["id"], "the refined U is kept");
        }
        other => panic!("best_step {other:?}: {dev}"),
    }
    // The decomposition alone of 2 directions, completed by seeded random ones up to d = 7; and
    // a "completion" to d = 2, refused before any work.
    let completed = out("completed.safetensors");
    let made = json_lines(&deltaspace(&decomposition_args(
        &model, &solutions, "7", &completed, &data_root,
    )));
    assert_eq!(made[0]["d"], 7);
    assert!(
        made[0].get("refinement_dev").is_none(),
        "no refinement, no dev line"
    );
    let refused_file = out("refused.safetensors");
    let refused = deltaspace_refuses(&decomposition_args(
        &model,
        &solutions,
        "2",
        &refused_file,
        &data_root,
    ));
    assert!(
        refused.contains("--complete-to 2 must exceed --dim 2"),
        "{refused}"
    );
    // Stage 1 neither checkpoints nor stops early, and says so rather than ignore the flags.
    let args = decomposition_args(&model, &solutions, "7", &refused_file, &data_root);
    let refused = deltaspace_refuses(&[&args[..], &["--checkpoint", "unused"]].concat());
    assert!(
        refused.contains("train subspace does not use --checkpoint"),
        "{refused}"
    );
    // Without task data there is no refinement: its flags were dropped silently (exit 0).
    let without_data: Vec<&str> = (args.iter().copied())
        .filter(|a| ![data_root.as_str(), "--data-root", "--steps", "0"].contains(a))
        .collect();
    let refined = [&without_data[..], &["--steps", "10", "--lr", "0.01"]].concat();
    let refused = deltaspace_refuses(&refined);
    assert!(
        refused.contains("without --data-root (no refinement) does not use --steps or --lr"),
        "{refused}"
    );
    let refused = deltaspace_refuses(&[&args[..], &["--rec-alpha", "nan"]].concat());
    assert!(refused.contains("--rec-alpha"), "{refused}");
    let file = deltaspace::tensor_file::TensorFile::read(Path::new(&completed)).unwrap();
    assert_eq!(
        file.get("U.lora").unwrap().shape[1],
        2,
        "only learned columns are stored"
    );
    upstream_codes_rebuild_each_solution(&model, &solutions, &completed);
    tune_from_upstream_starts_at_the_nearest_code(&model, &solutions, &completed, out("upstream"));

    // Stage 2: gradient and CMA-ES, then every way of scoring.
    let tasks_dir = out("tasks");
    let args = [
        &[
            "tune",
            "--model",
            &model,
            "--subspace",
            &subspace,
            "--data",
            &sst2,
            &rte,
            "--det",
            "lora",
            "--out",
            &tasks_dir,
        ][..],
        &fast,
    ]
    .concat();
    assert_eq!(json_lines(&deltaspace(&args)).len(), 2);
    let task_json = format!("{tasks_dir}/sst2.json");
    let task: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&task_json).unwrap()).unwrap();
    assert_eq!(task["z"].as_array().unwrap().len(), 3);
    assert_eq!(task["det"], "lora");
    let cma_task = out("cma.json");
    let args = [
        &[
            "tune",
            "--model",
            &model,
            "--subspace",
            &subspace,
            "--data",
            &sst2,
            "--det",
            "adapter",
            "--head",
            "none",
            "--optimizer",
            "cmaes",
            "--out",
            &cma_task,
        ][..],
        &fast[..6], // its step is --sigma, not --lr
    ]
    .concat();
    assert_eq!(json_lines(&deltaspace(&args))[0]["optimizer"], "cmaes");

    let eval = |extra: &[&str]| {
        let args = [
            &[
                "eval", "--model", &model, "--data", &sst2, "--split", "dev", "--json",
            ][..],
            extra,
        ]
        .concat();
        let line = json_lines(&deltaspace(&args)).remove(0);
        assert_eq!(line["split"], "dev");
        assert_eq!(line["n"], 16);
        line
    };
    eval(&["--task", &task_json, "--subspace", &subspace]);
    eval(&[
        "--task",
        &task_json,
        "--subspace",
        &subspace,
        "--det",
        "prefix",
    ]);
    eval(&[
        "--solution",
        &format!("{solutions}/sst2.adapter.safetensors"),
    ]);
    assert!(eval(&["--zero-shot"])["det"].is_null());

    let transfer = json_lines(&deltaspace(&[
        "transfer",
        "--model",
        &model,
        "--subspace",
        &subspace,
        "--data",
        &sst2,
        "--task",
        &task_json,
    ]));
    let targets: Vec<&str> = transfer
        .iter()
        .map(|l| l["target_det"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["lora", "adapter", "prefix"]);
    // A task is scored only in the subspace it was tuned in.
    let refused = deltaspace_refuses(&[
        "transfer",
        "--model",
        &model,
        "--subspace",
        &completed,
        "--data",
        &sst2,
        "--task",
        &task_json,
    ]);
    assert!(refused.contains("task is for subspace"), "{refused}");

    // Landscape: three maps through three per-DET solutions.
    let mut per_det = Vec::new();
    for det in ["adapter", "lora", "prefix"] {
        let path = out(&format!("{det}.json"));
        let args = [
            &[
                "tune",
                "--model",
                &model,
                "--subspace",
                &subspace,
                "--data",
                &sst2,
                "--det",
                det,
                "--head",
                "none",
                "--out",
                &path,
            ][..],
            &fast,
        ]
        .concat();
        deltaspace(&args);
        per_det.push(path);
    }
    let pictures = out("landscape");
    let landscape = [
        "landscape",
        "--model",
        &model,
        "--subspace",
        &subspace,
        "--data",
        &sst2,
        "--tasks",
        &per_det[0],
        &per_det[1],
        &per_det[2],
        "--grid",
        "3",
        "--limit",
        "4",
        "--out",
        &pictures,
    ];
    let drawn = json_lines(&deltaspace(&landscape));
    for image in drawn[0]["images"].as_array().unwrap() {
        let bytes = std::fs::read(image.as_str().unwrap()).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    }
    // The font comes from --font (or DELTASPACE_FONT, which the command line reads), never from
    // the trainer itself; a missing one is named.
    let message = deltaspace_refuses(&[&landscape[..], &["--font", "no-such-font.ttf"]].concat());
    assert!(message.contains("no-such-font.ttf"), "{message}");
    // The plane is one of z: a task with a head (tune's default) was drawn without it.
    let mut headed = landscape;
    headed[8] = &task_json;
    let message = deltaspace_refuses(&headed);
    assert!(message.contains("has a head"), "{message}");
}

#[test]
fn the_report_prints_the_papers_tables_from_results() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path();
    std::fs::create_dir_all(results.join("tune")).unwrap();
    std::fs::create_dir_all(results.join("transfer")).unwrap();
    // The lines `train det`, `tune`, `transfer` and `eval` print (crates/train/src/lines.rs).
    let scores = |accuracy: f32| json!({"accuracy": accuracy, "macro_f1": accuracy, "n": 10});
    let line = |value: serde_json::Value| value.to_string() + "\n";
    let mut original = String::new();
    for det in ["adapter", "lora", "prefix"] {
        original += &line(
            json!({"task": "sst2", "det": det, "dev": scores(0.8), "test": scores(0.8),
                                 "step": 50, "file": "s.safetensors"}),
        );
        std::fs::write(
            results.join(format!("tune/d4-adam-{det}.jsonl")),
            line(
                json!({"task": "sst2", "det": det, "optimizer": "adam", "dev": scores(0.76),
                        "test": scores(0.76), "seconds": 2.0, "file": "t.json"}),
            ),
        )
        .unwrap();
        let transfer: String = ["adapter", "lora", "prefix"]
            .iter()
            .map(|target| {
                line(
                    json!({"task": "sst2", "source_det": det, "target_det": target, "split": "test",
                            "accuracy": 0.72, "macro_f1": 0.72, "n": 10}),
                )
            })
            .collect();
        std::fs::write(results.join(format!("transfer/d4-{det}.jsonl")), transfer).unwrap();
    }
    std::fs::write(results.join("original.jsonl"), original).unwrap();
    std::fs::write(
        results.join("zero_shot.jsonl"),
        line(json!({"task": "sst2", "det": null, "split": "test", "accuracy": 0.7, "macro_f1": 0.7, "n": 10})),
    )
    .unwrap();
    let json_path = results.join("report.json");
    let output = deltaspace(&[
        "report",
        "--results",
        results.to_str().unwrap(),
        "--space",
        "d4",
        "--json",
        json_path.to_str().unwrap(),
    ]);
    let markdown = String::from_utf8(output.stdout).unwrap();
    assert!(
        markdown.contains("| sst2 | 95.0 | 95.0 | 95.0 | 95.0 |"),
        "{markdown}"
    );
    assert!(markdown.contains("| A→L | A→P | L→A | L→P | P→A | P→L |"));
    assert!(
        markdown.contains("| sst2 | 90.0 | 90.0 | 90.0 | 90.0 | 90.0 | 90.0 | 90.0 |"),
        "{markdown}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(report["transfer"]["sst2"].as_object().unwrap().len(), 6);
    // A mistyped space printed tables of dashes and exited 0; now it names the spaces there.
    let results_dir = results.to_str().unwrap();
    let refused = deltaspace_refuses(&["report", "--results", results_dir, "--space", "d44"]);
    assert!(
        refused.contains("no results for --space d44") && refused.contains(": d4"),
        "{refused}"
    );
    // The comparison against a user's alternatives, from scripts/quality.sh's lines.
    let quality = results.join("quality.jsonl");
    let line = |row: &str, seed: u64, accuracy: f64| {
        format!(
            "{{\"row\":\"{row}\",\"task\":\"sst2\",\"shots\":\"16\",\"seed\":{seed},\"subspace\":\"d4\",\
             \"det\":null,\"dev\":null,\"test\":{{\"accuracy\":{accuracy},\"macro_f1\":0.5,\"n\":16}},\"seconds\":1}}\n"
        )
    };
    let with_dev = |row: &str, dev: f64, accuracy: f64| {
        line(row, 1, accuracy).replace(
            "\"dev\":null",
            &format!("\"dev\":{{\"accuracy\":{dev},\"macro_f1\":0.5,\"n\":16}}"),
        )
    };
    let lines = [
        line("probe", 1, 0.75),
        line("probe", 2, 0.25),
        with_dev("z+head", 0.5, 0.6),
        with_dev("warm", 0.75, 0.7),
    ];
    std::fs::write(&quality, lines.concat()).unwrap();
    let output = deltaspace(&[
        "report",
        "--quality",
        quality.to_str().unwrap(),
        "--json",
        json_path.to_str().unwrap(),
    ]);
    let tables = String::from_utf8(output.stdout).unwrap();
    assert!(
        tables.contains("| probe | 50.0 ± 35.4 (2) | 50.0 |"),
        "{tables}"
    );
    // The JSON names the run `tune`'s default keeps: warm, which leads on dev by 25 points.
    let lines: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(json_path).unwrap()).unwrap();
    let guarded: Vec<_> = lines.iter().filter(|l| l["row"] == "guarded").collect();
    assert_eq!(guarded.len(), 1, "{lines:?}");
    assert_eq!(guarded[0]["kept"], "warm");
    assert_eq!(guarded[0]["test"]["accuracy"], 0.7);
}

#[test]
fn tune_traces_accuracy_per_task_and_step_without_changing_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name).display().to_string();
    let model = tiny_dir().display().to_string();
    let (sst2, rte) = (
        data("sst2").display().to_string(),
        data("rte").display().to_string(),
    );
    let subspace = out("random.safetensors");
    deltaspace(&[
        "subspace", "random", "--model", &model, "--dim", "3", "--out", &subspace,
    ]);
    let tune = |optimizer: &str, data: &[&str], extra: &[&str], tasks: &str| {
        let args = [
            &["tune", "--model", &model, "--subspace", &subspace, "--data"][..],
            data,
            &[
                "--det",
                "adapter",
                "--head",
                "none",
                "--optimizer",
                optimizer,
                "--steps",
                "5",
                "--batch",
                "4",
                "--eval-every",
                "3",
                "--out",
                tasks,
            ],
            if optimizer == "adam" {
                &["--lr", "0.05"]
            } else {
                &[]
            },
            extra,
        ]
        .concat();
        deltaspace(&args);
    };
    let read_lines = |path: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let trace_flags = |trace: &str| {
        [
            "--trace",
            trace,
            "--trace-every",
            "2",
            "--trace-split",
            "dev",
            "--trace-limit",
            "10",
        ]
        .map(String::from)
    };

    // Adam over two tasks in shared runs, then CMA-ES appending to the same file.
    let trace = out("trace.jsonl");
    let flags = trace_flags(&trace);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    tune("adam", &[&sst2, &rte], &flags, &out("traced"));
    tune("cmaes", &[&sst2], &flags, &out("cma"));
    let lines = read_lines(&trace);
    // Steps 0, 2, 4 and the last (5): four lines per task and run.
    assert_eq!(lines.len(), 3 * 4, "{lines:?}");
    for (optimizer, task) in [("adam", "sst2"), ("adam", "rte"), ("cmaes", "sst2")] {
        let mine: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|l| l["optimizer"] == optimizer && l["task"] == task)
            .collect();
        let steps: Vec<u64> = mine.iter().map(|l| l["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, [0, 2, 4, 5], "{optimizer} {task}");
        for line in &mine {
            let accuracy = line["accuracy"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&accuracy), "{line}");
            assert_eq!(line["det"], "adapter");
            assert_eq!(line["split"], "dev");
            assert_eq!(line["n"], 10);
            assert!(line["seconds"].as_f64().is_some());
            if optimizer == "adam" {
                // Training examples through the gradient graph: steps × batch.
                let step = line["step"].as_u64().unwrap();
                assert_eq!(line["evaluations"].as_u64().unwrap(), step * 4);
            }
        }
    }
    // CMA-ES counts candidates (λ = 4 + ⌊3 ln 3⌋ = 7) and rows (× the batch of 4).
    let last = lines.last().unwrap();
    assert_eq!(last["evaluations"], 5 * 7);
    assert_eq!(last["examples"], 5 * 7 * 4);

    // Tracing only observes: the same steps without it find the same codes.
    tune("adam", &[&sst2, &rte], &[], &out("plain"));
    for task in ["sst2", "rte"] {
        let z = |dir: &str| {
            let text = std::fs::read_to_string(format!("{}/{task}.json", out(dir))).unwrap();
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["z"].clone()
        };
        assert_eq!(z("traced"), z("plain"), "{task}");
    }
}

#[test]
fn the_gradient_graph_adds_each_rows_head_biases_to_its_logits() {
    use deltaspace::classifier::Classes;
    use deltaspace::tuning::batch::{self, Row, row_losses};
    let encoder = tiny_encoder();
    let subspace =
        deltaspace::subspace::Subspace::random(encoder.manifest(), &tiny_theta0(), 3, 5).unwrap();
    let tasks = train_tasks(&encoder, &["sst2", "rte"]);
    // sst2 rows carry a head with strong priors, rte rows their descriptions: one run holds both.
    let head = Classes::new(
        tasks[0].descriptions.prototypes.clone(),
        ndarray::arr1(&[3.0, -2.0]),
    );
    let z = [0.3f32, -0.2, 0.1];
    let rows: Vec<Row> = (0..4)
        .map(|i| {
            let task = i % 2;
            Row {
                task,
                example: &tasks[task].data.train[i],
                det: DetKind::Adapter,
                z: &z,
                weight: 0.25,
                classes: if task == 0 {
                    &head
                } else {
                    &tasks[1].descriptions
                },
            }
        })
        .collect();
    let run = batch::gradients(&encoder, &rows, subspace.params()).unwrap();
    let logit_scale = encoder.manifest().logit_scale;
    let expected: f32 = row_losses(run.output.embeddings.view(), &rows, logit_scale)
        .iter()
        .map(|l| 0.25 * l)
        .sum();
    assert!(
        (run.output.loss - expected).abs() < 1e-4 * expected.abs().max(1.0),
        "graph loss {} vs Rust {expected}",
        run.output.loss
    );
    // The first row's logits hold its head's biases.
    let offset = run.class_offset[0];
    let logits = run.output.logits.row(0);
    let cosine = |c: usize| logit_scale * head.prototypes.row(c).dot(&run.output.embeddings.row(0));
    assert!((logits[offset] - (cosine(0) + 3.0)).abs() < 1e-3);
    assert!((logits[offset + 1] - (cosine(1) - 2.0)).abs() < 1e-3);
}

#[test]
fn tune_with_a_head_writes_it_and_every_command_scores_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name).display().to_string();
    let [model, sst2, subspace] = tiny_tune_setup(dir.path(), "42");
    let common = ["--model", &model, "--subspace", &subspace, "--data", &sst2];
    let mut tuned = Vec::new();
    for head in ["bias", "prototypes"] {
        let task = out(&format!("{head}.json"));
        let lines = json_lines(&deltaspace(
            &[
                &["tune"][..],
                &common,
                &[
                    "--det",
                    "lora",
                    "--head",
                    head,
                    "--steps",
                    "6",
                    "--batch",
                    "8",
                    "--eval-every",
                    "3",
                    "--lr",
                    "0.1",
                    "--out",
                    &task,
                ],
            ]
            .concat(),
        ));
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&task).unwrap()).unwrap();
        let bias = written["head"]["bias"].as_array().unwrap();
        assert_eq!(bias.len(), 2);
        assert!(bias.iter().any(|b| b.as_f64().unwrap() != 0.0), "{written}");
        assert_eq!(
            written["head"].get("prototypes").is_some(),
            head == "prototypes",
            "{written}"
        );
        // eval reads the head back and scores exactly what tune reported.
        let eval = json_lines(&deltaspace(
            &[&["eval"][..], &common, &["--task", &task, "--split", "dev"]].concat(),
        ));
        assert_eq!(eval[0]["accuracy"], lines[0]["dev"]["accuracy"], "{head}");
        tuned.push(task);
    }
    // predict applies the head: its scores differ from the same z without one.
    let predict = |task: &str| {
        json_lines(&deltaspace(&[
            "predict",
            "--model",
            &model,
            "--subspace",
            &subspace,
            "--task",
            task,
            "a fine film",
        ]))
    };
    let with_head = predict(&tuned[1]);
    let mut plain: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tuned[1]).unwrap()).unwrap();
    plain.as_object_mut().unwrap().remove("head");
    let plain_path = out("plain.json");
    std::fs::write(&plain_path, plain.to_string()).unwrap();
    assert_ne!(with_head[0]["scores"], predict(&plain_path)[0]["scores"]);
    // CMA-ES tunes z only.
    let cma = out("cma.json");
    let args = [&["tune"][..], &common, &["--det", "lora", "--head", "bias"]].concat();
    let message =
        deltaspace_refuses(&[&args[..], &["--optimizer", "cmaes", "--out", &cma]].concat());
    assert!(message.contains("give --head none"), "{message}");
}

/// What the tune tests start from, as paths: the tiny model, sst2's fixture, and a random
/// subspace of d = 3 drawn with `seed` into `dir`.
fn tiny_tune_setup(dir: &Path, seed: &str) -> [String; 3] {
    let model = tiny_dir().display().to_string();
    let subspace = dir.join("random.safetensors").display().to_string();
    deltaspace(&[
        "subspace", "random", "--model", &model, "--dim", "3", "--seed", seed, "--out", &subspace,
    ]);
    [model, data("sst2").display().to_string(), subspace]
}

/// `tune --init` starts z from another task's z (a warm start): with no step taken the task
/// keeps it; a checkpoint remembers the start; a task of another subspace or a frozen z is refused.
#[test]
fn tune_init_starts_z_from_another_tasks_z() {
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name).display().to_string();
    let model = tiny_dir().display().to_string();
    let sst2 = data("sst2").display().to_string();
    let (subspace, other) = (out("random.safetensors"), out("other.safetensors"));
    for (file, seed) in [(&subspace, "1"), (&other, "2")] {
        deltaspace(&[
            "subspace", "random", "--model", &model, "--dim", "3", "--seed", seed, "--out", file,
        ]);
    }
    // tune SPACE EXTRA TASK: the arguments of a short tune through LoRA.
    let tune = |space: &str, extra: &[&str], task: &str| -> Vec<String> {
        let common = [
            "tune",
            "--model",
            &model,
            "--subspace",
            space,
            "--data",
            &sst2,
        ];
        let schedule = ["--det", "lora", "--batch", "8", "--eval-every", "3"];
        let args = [&common[..], &schedule, extra, &["--out", task]].concat();
        args.into_iter().map(String::from).collect()
    };
    let run = |args: Vec<String>| deltaspace(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let refused = |args: Vec<String>| {
        deltaspace_refuses(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let z = |task: &str| {
        let file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(task).unwrap()).unwrap();
        file["z"].clone()
    };
    let (first, second) = (out("first.json"), out("second.json"));
    run(tune(&subspace, &["--steps", "6"], &first));
    run(tune(
        &subspace,
        &["--steps", "0", "--init", &first],
        &second,
    ));
    assert_eq!(z(&second), z(&first), "no step: z is where it started");

    let checkpoint = out("started.checkpoint.safetensors");
    let resumable = ["--steps", "3", "--checkpoint", &checkpoint];
    run(tune(
        &subspace,
        &[&resumable[..], &["--init", &first]].concat(),
        &second,
    ));
    let message = refused(tune(&subspace, &resumable, &second));
    assert!(
        message.contains("another run") && message.contains("start z"),
        "{message}"
    );
    let third = out("third.json");
    let message = refused(tune(
        &subspace,
        &[&resumable[..], &["--init", &second]].concat(),
        &third,
    ));
    assert!(message.contains("another run"), "another start: {message}");

    let elsewhere = out("elsewhere.json");
    run(tune(&other, &["--steps", "3"], &elsewhere));
    let message = refused(tune(&subspace, &["--init", &elsewhere], &second));
    assert!(message.contains("subspace"), "{message}");
    let message = refused(tune(&subspace, &["--init", &first, "--freeze-z"], &second));
    assert!(message.contains("--freeze-z"), "{message}");
}

/// `tune --init normal --init CODE` tunes from both starts and keeps the better on dev; each
/// start trains as it would alone (the same rows in the same order), so without --max-seconds
/// the guarded start is the better of the two runs. A start given twice is refused.
#[test]
fn tune_from_several_starts_keeps_the_one_best_on_dev() {
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name).display().to_string();
    let [model, sst2, subspace] = tiny_tune_setup(dir.path(), "1");
    // tune INIT TASK: six steps through LoRA from the starts INIT; the output line.
    let tune = |init: &[&str], task: &str| {
        let common = [
            "tune",
            "--model",
            &model,
            "--subspace",
            &subspace,
            "--data",
            &sst2,
        ];
        let schedule = [
            "--det",
            "lora",
            "--batch",
            "8",
            "--steps",
            "6",
            "--eval-every",
            "3",
        ];
        let args = [&common[..], &schedule, init, &["--out", task]].concat();
        json_lines(&deltaspace(&args)).pop().unwrap()
    };
    let (code, alone, warm, both) = (
        out("code.json"),
        out("alone.json"),
        out("warm.json"),
        out("both.json"),
    );
    // An upstream code stands in: a task tuned longer from another seed's start.
    deltaspace(&[
        "tune",
        "--model",
        &model,
        "--subspace",
        &subspace,
        "--data",
        &sst2,
        "--det",
        "lora",
        "--batch",
        "8",
        "--steps",
        "12",
        "--seed",
        "5",
        "--out",
        &code,
    ]);
    let cold = tune(&[], &alone);
    let from_code = tune(&["--init", &code], &warm);
    let trace = out("trace.jsonl");
    let guarded = tune(
        &["--init", "normal", "--init", &code, "--trace", &trace],
        &both,
    );
    // The trace tells the starts apart: `start` is left out for the first.
    let points: Vec<serde_json::Value> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let starts: Vec<&serde_json::Value> = points.iter().map(|p| &p["start"]).collect();
    assert!(starts.contains(&&json!(1)) && starts.contains(&&serde_json::Value::Null));

    assert_eq!(cold["start"], "normal");
    assert_eq!(from_code["start"], code.as_str());
    let by_start = &guarded["dev_by_start"];
    assert_eq!(by_start["normal"], cold["dev"]["accuracy"], "{guarded}");
    assert_eq!(
        by_start[code.as_str()],
        from_code["dev"]["accuracy"],
        "{guarded}"
    );
    let (normal, warm_dev) = (
        by_start["normal"].as_f64(),
        by_start[code.as_str()].as_f64(),
    );
    // A later start replaces the cold one only by more than --start-margin (1 point by default).
    let expected = if warm_dev.unwrap() > normal.unwrap() + 0.01 {
        (&from_code, code.as_str())
    } else {
        (&cold, "normal")
    };
    assert_eq!(guarded["start"], expected.1, "{guarded}");
    assert_eq!(guarded["dev"], expected.0["dev"], "{guarded}");
    assert_eq!(guarded["test"], expected.0["test"], "{guarded}");
    // A later start must lead by more than --start-margin points: 100 is beyond any lead.
    let margined = tune(
        &["--init", "normal", "--init", &code, "--start-margin", "100"],
        &out("margined.json"),
    );
    assert_eq!(margined["start"], "normal", "{margined}");
    assert_eq!(margined["dev"], cold["dev"], "{margined}");
    assert_eq!(
        margined["dev_by_start"], guarded["dev_by_start"],
        "{margined}"
    );

    let message = deltaspace_refuses(&[
        "tune",
        "--model",
        &model,
        "--subspace",
        &subspace,
        "--data",
        &sst2,
        "--init",
        "normal",
        "--init",
        "normal",
        "--out",
        &out("twice.json"),
    ]);
    assert!(message.contains("start 2 repeats"), "{message}");
}

#[test]
fn tune_without_a_det_tunes_all_three_and_keeps_the_best_on_dev() {
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name).display().to_string();
    let [model, sst2, subspace] = tiny_tune_setup(dir.path(), "42");
    let task = out("sst2.json");
    let common = ["--model", &model, "--subspace", &subspace, "--data", &sst2];
    let lines = json_lines(&deltaspace(
        &[&["tune"][..], &common, &["--steps", "12", "--out", &task]].concat(),
    ));
    let by_det = lines[0]["dev_by_det"].as_object().unwrap();
    assert_eq!(by_det.len(), 3, "{}", lines[0]);
    let best = by_det
        .values()
        .map(|v| v.as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    let chosen = lines[0]["det"].as_str().unwrap();
    assert_eq!(by_det[chosen].as_f64().unwrap(), best, "{}", lines[0]);
    assert_eq!(lines[0]["dev"]["accuracy"].as_f64().unwrap(), best);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&task).unwrap()).unwrap();
    assert_eq!(written["det"], chosen);
    // CMA-ES searches through one DET.
    let args = [
        &["tune"][..],
        &common,
        &["--head", "none", "--optimizer", "cmaes"],
    ]
    .concat();
    let message = deltaspace_refuses(&[&args[..], &["--out", &task]].concat());
    assert!(message.contains("give --det"), "{message}");
    // It neither checkpoints nor stops early, and says so rather than ignore the flags.
    let checkpoint = out("cma.checkpoint.safetensors");
    let flags = ["--det", "lora", "--checkpoint", &checkpoint, "--out", &task];
    let message = deltaspace_refuses(&[&args[..], &flags].concat());
    assert!(
        message.contains("not use --checkpoint: drop it"),
        "{message}"
    );
    let flags = [
        "--det",
        "lora",
        "--max-seconds",
        "5",
        "--lr",
        "0.1",
        "--out",
        &task,
    ];
    let message = deltaspace_refuses(&[&args[..], &flags].concat());
    assert!(message.contains("--max-seconds or --lr"), "{message}");
    // It scores a generation in one run; adam has no population or step size.
    let flags = ["--det", "lora", "--run-rows", "8", "--out", &task];
    let message = deltaspace_refuses(&[&args[..], &flags].concat());
    assert!(message.contains("not use --run-rows"), "{message}");
    let adam = [&["tune"][..], &common, &["--sigma", "0.5", "--out", &task]].concat();
    let message = deltaspace_refuses(&adam);
    assert!(
        message.contains("adam does not use --population or --sigma"),
        "{message}"
    );
}

#[test]
fn the_baselines_run_on_few_shot_draws_the_probe_and_a_head_on_a_frozen_z() {
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name).display().to_string();
    let model = tiny_dir().display().to_string();
    let sst2 = data("sst2").display().to_string();
    // The probe on 4 examples per label of train and dev, its L2 chosen on dev.
    let probe = json_lines(&deltaspace(&[
        "eval", "--model", &model, "--data", &sst2, "--probe", "--shots", "4", "--seed", "3",
    ]));
    assert_eq!(probe[0]["method"], "probe");
    assert_eq!(probe[0]["dev"]["n"], 8, "4 per label of dev");
    assert_eq!(probe[0]["n"], 16, "the whole test split");
    let accuracy = probe[0]["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy));
    assert!(probe[0]["l2"].as_f64().unwrap() > 0.0);
    // Head only: z stays 0 while the head trains.
    let subspace = out("random.safetensors");
    deltaspace(&[
        "subspace", "random", "--model", &model, "--dim", "3", "--out", &subspace,
    ]);
    let task = out("head-only.json");
    let common = ["--model", &model, "--subspace", &subspace, "--data", &sst2];
    deltaspace(
        &[
            &["tune"][..],
            &common,
            &[
                "--det",
                "lora",
                "--head",
                "bias",
                "--freeze-z",
                "--shots",
                "4",
                "--steps",
                "6",
            ],
            &["--out", &task],
        ]
        .concat(),
    );
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&task).unwrap()).unwrap();
    assert_eq!(written["z"], serde_json::json!([0.0, 0.0, 0.0]));
    assert!(
        written["head"]["bias"][0].as_f64().unwrap() != 0.0,
        "{written}"
    );
    let args = [
        &["tune"][..],
        &common,
        &["--det", "lora", "--head", "none", "--freeze-z"],
    ]
    .concat();
    let message = deltaspace_refuses(&[&args[..], &["--out", &task]].concat());
    assert!(
        message.contains("--freeze-z trains only the head"),
        "{message}"
    );
}

#[test]
fn a_trace_of_a_run_that_stops_early_ends_at_its_last_step() {
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name).display().to_string();
    let [model, sst2, subspace] = tiny_tune_setup(dir.path(), "42");
    let trace = out("trace.jsonl");
    deltaspace(&[
        "tune",
        "--model",
        &model,
        "--subspace",
        &subspace,
        "--data",
        &sst2,
        "--det",
        "lora",
        "--steps",
        "60",
        "--eval-every",
        "1",
        "--patience",
        "1",
        "--lr",
        "0.05",
        "--trace",
        &trace,
        "--trace-every",
        "100",
        "--out",
        &out("t.json"),
    ]);
    let steps: Vec<u64> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    // Dev accuracy on 16 examples cannot improve at every one of 60 evaluations.
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert_eq!(steps[0], 0);
    assert!(steps[1] > 0 && steps[1] < 60, "{steps:?}");
}

#[test]
fn train_det_traces_each_task_and_det_like_tune() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.jsonl");
    deltaspace(&[
        "train",
        "det",
        "--model",
        &tiny_dir().display().to_string(),
        "--data",
        &data("sst2").display().to_string(),
        "--det",
        "lora",
        "adapter",
        "--steps",
        "4",
        "--trace",
        &trace.display().to_string(),
        "--trace-every",
        "2",
        "--trace-split",
        "dev",
        "--out",
        &dir.path().join("solutions").display().to_string(),
    ]);
    let points: Vec<(String, u64)> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|line| {
            let point: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(point["split"], "dev");
            assert_eq!(point["optimizer"], "adam");
            let det = point["det"].as_str().unwrap().to_string();
            (det, point["step"].as_u64().unwrap())
        })
        .collect();
    let steps = |det: &str| -> Vec<u64> {
        (points.iter())
            .filter(|(d, _)| d == det)
            .map(|(_, step)| *step)
            .collect()
    };
    assert_eq!(steps("lora"), [0, 2, 4]);
    assert_eq!(steps("adapter"), [0, 2, 4]);
}

/// The fixture's sst2 data copied to `<dir>/<name>`.
fn copy_of_sst2(dir: &Path, name: &str) -> PathBuf {
    let copy = dir.join(name);
    std::fs::create_dir(&copy).unwrap();
    for file in ["labels.json", "train.jsonl", "dev.jsonl", "test.jsonl"] {
        std::fs::copy(data("sst2").join(file), copy.join(file)).unwrap();
    }
    copy
}

/// Two --data directories of one name would write one output file twice: refused before any
/// work, naming both.
#[test]
fn two_tasks_of_one_name_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let copy = copy_of_sst2(dir.path(), "sst2");
    let [model, sst2, subspace] = tiny_tune_setup(dir.path(), "1");
    let copy = copy.display().to_string();
    let out = dir.path().join("tasks").display().to_string();
    let args = [
        "tune",
        "--model",
        &model,
        "--subspace",
        &subspace,
        "--data",
        &sst2,
        "--data",
        &copy,
    ];
    let message = deltaspace_refuses(&[&args[..], &["--out", &out]].concat());
    assert!(
        message.contains("name the same task") && message.contains(&copy),
        "{message}"
    );
}

/// A task's name comes from its directory, and a name the task file cannot keep was found only
/// after training every DET from every start: now before training, and before the trace opens.
#[test]
fn a_task_name_the_task_file_cannot_keep_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let copy = copy_of_sst2(dir.path(), "sst 2");
    let [model, _, subspace] = tiny_tune_setup(dir.path(), "1");
    let trace = dir.path().join("trace.jsonl").display().to_string();
    let args = [
        "tune",
        "--model",
        &model,
        "--subspace",
        &subspace,
        "--data",
        copy.to_str().unwrap(),
        "--trace",
        &trace,
        "--out",
        "unused.json",
    ];
    let message = deltaspace_refuses(&args);
    assert!(message.contains("sst 2"), "{message}");
    assert!(!Path::new(&trace).exists(), "nothing traced");
}

/// Flags are checked before anything loads (here, no model at all).
#[test]
fn flags_that_cannot_work_are_refused_before_the_model_loads() {
    let tune = [
        "tune", "--model", "no/such", "--data", "x", "--out", "u.json",
    ];
    for (flags, needle) in [
        (
            &["--optimizer", "cma"][..],
            "expected adam, adafactor or cmaes",
        ),
        (&["--optimizer", "cmaes", "--head", "none"], "give --det"),
        (&["--optimizer", "adam", "--sigma", "0.5"], "--sigma"),
    ] {
        let message = deltaspace_refuses(&[&tune[..], flags].concat());
        assert!(message.contains(needle), "{flags:?}: {message}");
        assert!(
            !message.contains("no/such"),
            "{flags:?} loaded the model: {message}"
        );
    }
    let model = ["--model", "tests/fixtures/tiny"];
    let landscape = [
        "landscape",
        "--data",
        "no/such",
        "--tasks",
        "a",
        "b",
        "c",
        "--out",
        "o",
    ];
    for (args, needle) in [
        (&landscape[..], "--margin"),
        (
            &["subspace", "random", "--dim", "100000000000000"],
            "more than the 8192 columns",
        ),
        (
            &[
                "train",
                "subspace",
                "--solutions",
                "no/such",
                "--dim",
                "100000",
            ],
            "--complete-to: d",
        ),
    ] {
        let extra: &[&str] = match args[0] {
            "landscape" => &["--margin", "nan"],
            _ => &["--out", "unused.safetensors"],
        };
        let message = deltaspace_refuses(&[args, &model, extra].concat());
        assert!(message.contains(needle), "{args:?}: {message}");
    }
}
