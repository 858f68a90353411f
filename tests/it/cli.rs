//! The real `deltaspace` binary on the tiny model: JSON out, clear errors and exit codes.

use std::path::Path;
use std::process::{Command, Output};

use crate::helpers::tiny_dir;

fn deltaspace(args: &[&str]) -> Output {
    deltaspace_with(args, &[])
}

/// [`deltaspace`] with environment variables set (configuration overrides).
fn deltaspace_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deltaspace"))
        .args(args)
        .args(["--provider", "cpu", "--threads", "1"])
        .env_remove("ORT_DYLIB_PATH")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn stdout_lines(output: &Output) -> Vec<serde_json::Value> {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A random d=4 subspace and a task for it, in `dir`.
fn subspace_and_task(dir: &Path) -> (String, String) {
    let subspace = dir.join("s.safetensors").display().to_string();
    let model = tiny_dir().display().to_string();
    let made = stdout_lines(&deltaspace(&[
        "subspace", "random", "--model", &model, "--dim", "4", "--out", &subspace,
    ]));
    assert_eq!(made[0]["d"], 4);
    let task = dir.join("task.json");
    let json = serde_json::json!({
        "name": "sentiment", "det": "lora", "z": [0.5, -0.5, 1.0, 0.0], "subspace": made[0]["id"],
        "labels": [{"name": "negative", "description": "A negative opinion."},
                   {"name": "positive", "description": "A positive opinion."}]
    });
    std::fs::write(&task, json.to_string()).unwrap();
    (subspace, task.display().to_string())
}

#[test]
fn predict_prints_one_json_line_per_text() {
    let dir = tempfile::tempdir().unwrap();
    let (subspace, task) = subspace_and_task(dir.path());
    let model = tiny_dir().display().to_string();
    for det in ["lora", "adapter", "prefix"] {
        let output = deltaspace(&[
            "predict",
            "--model",
            &model,
            "--subspace",
            &subspace,
            "--task",
            &task,
            "--det",
            det,
            "great film",
            "dull",
        ]);
        let lines = stdout_lines(&output);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["text"], "great film");
        for line in &lines {
            let label = line["label"].as_str().unwrap();
            assert!(label == "negative" || label == "positive");
            let total: f64 = line["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["score"].as_f64().unwrap())
                .sum();
            assert!((total - 1.0).abs() < 1e-5);
        }
    }
}

/// The commands that read or write a task keep the configured `[server]` bounds, as the server
/// does: a task a server with raised bounds accepts loads in `predict`, and a lowered bound
/// refuses it (exit code 2, the bound named), and `tune` refuses labels beyond the bounds before
/// it trains.
#[test]
fn the_commands_keep_the_configured_task_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let (subspace, task) = subspace_and_task(dir.path());
    let model = tiny_dir().display().to_string();
    let predict = ["predict", "--model", &model, "--subspace", &subspace];
    let run = |task: &str, env: &[(&str, &str)]| {
        deltaspace_with(
            &[&predict[..], &["--task", task, "great film"]].concat(),
            env,
        )
    };
    let lowered = run(&task, &[("DELTASPACE_SERVER_MAX_Z_NORM", "1")]);
    assert_eq!(lowered.status.code(), Some(2));
    let message = String::from_utf8_lossy(&lowered.stderr);
    assert!(
        message.contains("‖z‖") && message.contains("bound 1"),
        "{message}"
    );

    let mut far: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&task).unwrap()).unwrap();
    far["z"] = serde_json::json!([2.0e4, 0.0, 0.0, 0.0]);
    let far_task = dir.path().join("far.json").display().to_string();
    std::fs::write(&far_task, far.to_string()).unwrap();
    let default = run(&far_task, &[]);
    assert_eq!(default.status.code(), Some(2), "beyond the default 1e4");
    let raised = run(&far_task, &[("DELTASPACE_SERVER_MAX_Z_NORM", "1e5")]);
    assert_eq!(stdout_lines(&raised).len(), 1);

    let sst2 = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/sst2");
    let out = dir.path().join("tuned.json");
    let (sst2, out_arg) = (sst2.display().to_string(), out.display().to_string());
    let tune = deltaspace_with(
        &[
            "tune",
            "--model",
            &model,
            "--subspace",
            &subspace,
            "--det",
            "lora",
            "--data",
            &sst2,
            "--out",
            &out_arg,
        ],
        &[("DELTASPACE_SERVER_MAX_LABEL_CHARS", "3")],
    );
    assert_eq!(tune.status.code(), Some(2));
    let message = String::from_utf8_lossy(&tune.stderr);
    assert!(message.contains("sst2's labels"), "{message}");
    assert!(!out.exists(), "no task written");
}

#[test]
fn embed_prints_unit_vectors_of_the_model_width() {
    let model = tiny_dir().display().to_string();
    let lines = stdout_lines(&deltaspace(&[
        "embed",
        "--model",
        &model,
        "one",
        "two words",
    ]));
    assert_eq!(lines.len(), 2);
    let embedding: Vec<f64> = lines[1]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(embedding.len(), 32);
    let norm: f64 = embedding.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
}

#[test]
fn bad_inputs_exit_with_code_2_and_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let (subspace, _) = subspace_and_task(dir.path());
    let model = tiny_dir().display().to_string();
    let bad_task = dir.path().join("bad.json");
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            serde_json::json!({"name": "t", "det": "lora", "z": [1.0], "labels": []}),
            "d = 4",
        ),
        (
            serde_json::json!({"name": "t", "det": "bitfit", "z": [1,2,3,4], "labels": []}),
            "bitfit",
        ),
        (
            serde_json::json!({"name": "t t", "det": "lora", "z": [1,2,3,4], "labels": []}),
            "name",
        ),
        (
            serde_json::json!({"name": "t", "det": "lora", "z": [1,2,3,4], "subspace": "other",
                            "labels": [{"name": "a", "description": "a"}, {"name": "b", "description": "b"}]}),
            "subspace",
        ),
    ];
    for (json, needle) in cases {
        std::fs::write(&bad_task, json.to_string()).unwrap();
        let output = deltaspace(&[
            "predict",
            "--model",
            &model,
            "--subspace",
            &subspace,
            "--task",
            bad_task.to_str().unwrap(),
            "x",
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    let missing = deltaspace(&[
        "predict",
        "--model",
        "no/such/model",
        "--task",
        "t.json",
        "x",
    ]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("export"));
}

/// The probe has no train score and always scores whole splits: asking for either is refused
/// before anything loads, where it printed dev scores labelled "train".
#[test]
fn eval_refuses_a_probe_split_or_limit_it_cannot_score() {
    for (flags, needle) in [
        (&["--split", "train"][..], "dev and test only"),
        (&["--limit", "10"][..], "--limit does not apply"),
    ] {
        let mut args = vec!["eval", "--data", "no/such/data", "--probe"];
        args.extend_from_slice(flags);
        let output = deltaspace(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
}

/// `eval --det` decodes a task file (it is refused without one, where it was ignored), `transfer`
/// scores held-out splits only, and a task is scored on data only when its labels are the data's,
/// in order: with others its head and z would be scored against the wrong labels.
#[test]
fn eval_and_transfer_refuse_what_they_would_ignore_or_misscore() {
    let dir = tempfile::tempdir().unwrap();
    let (subspace, task) = subspace_and_task(dir.path());
    let model = tiny_dir().display().to_string();
    let sst2 = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/sst2");
    let sst2 = sst2.display().to_string();
    let common = ["--model", &model, "--subspace", &subspace, "--data", &sst2];
    for (args, needle) in [
        (vec!["eval", "--zero-shot", "--det", "adapter"], "--task"),
        (
            vec!["transfer", "--task", &task, "--split", "train"],
            "dev or test",
        ),
        (vec!["eval", "--task", &task], "not the data's"),
        (vec!["transfer", "--task", &task], "not the data's"),
    ] {
        let output = deltaspace(&[&args[..], &common[..]].concat());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
}

/// `info` names the ONNX Runtime library it loaded, also when none is configured (the library is
/// found beside the binary or in third_party/).
#[test]
fn info_names_the_onnxruntime_library_it_loaded() {
    let output = deltaspace(&["info", "--model", &tiny_dir().display().to_string()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let library = info["onnxruntime"].as_str().unwrap();
    assert!(
        Path::new(library).is_file() && library.contains("onnxruntime"),
        "{info}"
    );
}

#[test]
fn a_missing_onnxruntime_library_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_deltaspace"))
        .args(["embed", "--model", &tiny_dir().display().to_string(), "x"])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("scripts/setup-ort.sh"));
}

/// Task bounds that would let garbage through or refuse every task stop the server before it
/// binds, as a count of 0 does (below).
#[test]
fn serve_refuses_task_bounds_that_cannot_work() {
    for (variable, value, named) in [
        (
            "DELTASPACE_SERVER_MAX_Z_NORM",
            "nan",
            "[server] max_z_norm = NaN",
        ),
        (
            "DELTASPACE_SERVER_MAX_Z_NORM",
            "inf",
            "[server] max_z_norm = inf",
        ),
        (
            "DELTASPACE_SERVER_MAX_LABELS",
            "1",
            "[server] max_labels = 1",
        ),
    ] {
        serve_refuses_the_setting(variable, value, named);
    }
}

/// A count of 0 in the server's settings stops it before it binds (exit code 2, the setting named):
/// until 2026-11-30 such values became 1 silently, and `max_batch_tokens = 0` gave a server that
/// refused every request.
#[test]
fn serve_refuses_a_count_of_zero_in_its_settings() {
    for (variable, named) in [
        (
            "DELTASPACE_SERVER_MAX_BATCH_TOKENS",
            "[server] max_batch_tokens = 0",
        ),
        (
            "DELTASPACE_SERVER_QUEUE_CAPACITY",
            "[server] queue_capacity = 0",
        ),
        ("DELTASPACE_RUNTIME_SESSIONS", "[runtime] sessions = 0"),
        ("DELTASPACE_SERVER_MAX_Z_NORM", "[server] max_z_norm = 0"),
        (
            "DELTASPACE_SERVER_MAX_LABEL_CHARS",
            "[server] max_label_chars = 0",
        ),
        ("DELTASPACE_SERVER_MAX_TASKS", "[server] max_tasks = 0"),
    ] {
        serve_refuses_the_setting(variable, "0", named);
    }
}

/// `serve` with `variable=value` exits with code 2 before it binds, naming the setting (`named`)
/// and the variable.
fn serve_refuses_the_setting(variable: &str, value: &str, named: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_deltaspace"))
        .args(["serve", "--bind", "127.0.0.1:1"])
        .env(variable, value)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{variable}={value}: {stderr}"
    );
    assert!(
        stderr.contains(named) && stderr.contains(variable),
        "{stderr}"
    );
}

/// `export --out` writes whole or not at all: an export that fails (here: no task database in
/// the directory given) leaves the backup already at that path as it was; it used to truncate it
/// before opening the store.
#[test]
fn a_failed_export_leaves_the_earlier_backup() {
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup.jsonl");
    std::fs::write(&backup, "old\n").unwrap();
    let empty = dir.path().join("no-store");
    std::fs::create_dir(&empty).unwrap();
    let output = deltaspace(&[
        "export",
        "--data-dir",
        empty.to_str().unwrap(),
        "--out",
        backup.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), "old\n");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "no partial file left"
    );
}

/// `--text-pair` pairs the texts of the command line; with `-` it was silently dropped for the
/// lines of stdin (a pair task then classified the premise alone). Refused before anything loads.
#[test]
fn text_pair_with_stdin_is_refused() {
    for command in ["predict", "embed"] {
        let mut args = vec![command, "--model", "no/such/model", "--text-pair", "h", "-"];
        if command == "predict" {
            args.extend(["--task", "t.json"]);
        }
        let output = deltaspace(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("--text-pair"), "{command}: {stderr}");
    }
}

/// A reader that leaves early (`| head -1`) closes stdout: the line written then is an error
/// (exit 2), where `println!` panicked (exit 101), and what was written to files stays written.
#[test]
fn a_closed_stdout_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("random.safetensors");
    // A pipe whose reader is gone before the command starts.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_deltaspace"))
        .args([
            "subspace",
            "random",
            "--model",
            "tests/fixtures/tiny",
            "--dim",
            "2",
        ])
        .arg("--out")
        .arg(&out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.is_file());
}
