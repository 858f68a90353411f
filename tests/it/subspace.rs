//! Subspace artifacts on the tiny model: save/load round trips, ids, and refusals.

use deltaspace::classifier::{self, PreparedTask};
use deltaspace::det::{DetKind, Theta0};
use deltaspace::model::{ModelFiles, TextInput};
use deltaspace::subspace::{Subspace, SubspaceError};
use deltaspace::task::{Label, Task};
use deltaspace::tensor_file::Storage;

use crate::helpers::{rewrite, tiny_dir, tiny_encoder};

fn tiny_files() -> ModelFiles {
    ModelFiles::open(&tiny_dir()).unwrap()
}

#[test]
fn a_random_subspace_round_trips_in_f32_and_f16_with_a_stable_id() {
    let files = tiny_files();
    let theta0 = Theta0::load(&files).unwrap();
    let subspace = Subspace::random(&files.manifest, &theta0, 6, 7).unwrap();
    assert_eq!(subspace.d(), 6);
    // base is θ⁰ for a random subspace: z = 0 decodes to the shared init.
    let zero = ndarray::Array1::zeros(6);
    assert_eq!(subspace.theta(0, zero.view()), *theta0.det(0));
    let dir = tempfile::tempdir().unwrap();
    let (f32_path, f16_path) = (
        dir.path().join("s32.safetensors"),
        dir.path().join("s16.safetensors"),
    );
    subspace.save(&f32_path, Storage::F32).unwrap();
    subspace.save(&f16_path, Storage::F16).unwrap();
    let exact = Subspace::load(&f32_path, &files.manifest).unwrap();
    assert_eq!(exact.id(), subspace.id());
    // Drawn columns are stored as their seed, so the draw itself must never change: this id
    // pins it (and θ⁰). If a new version of the random-number crates changes it, saved random
    // and hybrid subspaces no longer load.
    assert_eq!(subspace.id(), "random-d6-seed7@a725c31e9521");
    assert!(
        exact.matches("random-d6-seed7")
            && exact.matches(&subspace.id())
            && !exact.matches("other")
    );
    let half = Subspace::load(&f16_path, &files.manifest).unwrap();
    assert_ne!(
        half.id(),
        subspace.id(),
        "rounding changes the content, so the id"
    );
    let (a, b) = (&subspace.params().det(1).u, &half.params().det(1).u);
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-3, "f16 rounding error {worst}");
    assert!(
        std::fs::metadata(&f16_path).unwrap().len() < std::fs::metadata(&f32_path).unwrap().len()
    );
}

#[test]
fn drawn_columns_are_stored_as_a_seed_and_drawn_again_at_load() {
    use deltaspace::model::DetParams;
    use deltaspace::subspace::RandomColumns;
    use deltaspace::tensor_file::TensorFile;
    let files = tiny_files();
    let theta0 = Theta0::load(&files).unwrap();
    // Two "learned" columns (any values), completed by three seeded random ones up to d = 5.
    let learned = Subspace::random(&files.manifest, &theta0, 2, 3).unwrap();
    let dets: Vec<DetParams> = learned.params().dets().to_vec();
    let learned = Subspace::new("hybrid", &files.manifest, dets).unwrap();
    let columns = RandomColumns { count: 3, seed: 9 };
    let hybrid = learned
        .with_random_columns(&files.manifest, columns)
        .unwrap();
    assert_eq!(hybrid.d(), 5);
    // As for a random subspace, the id pins the draw: the drawn block row by row, DET by DET, after
    // the learned columns.
    assert_eq!(hybrid.id(), "hybrid@774cbc71ccb7");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hybrid.safetensors");
    hybrid.save(&path, Storage::F16).unwrap();
    // The file holds U's two learned columns, not five.
    let file = TensorFile::read(&path).unwrap();
    let size = files.manifest.dets[0].size;
    assert_eq!(file.get("U.lora").unwrap().shape, vec![size, 2]);
    assert_eq!(file.metadata["random_columns"], "3");
    let loaded = Subspace::load(&path, &files.manifest).unwrap();
    assert_eq!(loaded.d(), 5);
    let (a, b) = (&hybrid.params().det(2).u, &loaded.params().det(2).u);
    for column in 2..5 {
        assert_eq!(
            a.column(column),
            b.column(column),
            "drawn columns are drawn exactly again"
        );
    }
    // Another seed draws other columns, which the content hash catches.
    let mut tampered = TensorFile::read(&path).unwrap();
    tampered.metadata.insert("random_seed".into(), "10".into());
    rewrite(&path, &tampered);
    let error = Subspace::load(&path, &files.manifest)
        .unwrap_err()
        .to_string();
    assert!(error.contains("content hash mismatch"), "{error}");
    // A count of drawn columns past MAX_D is refused before anything is drawn (it was an
    // allocation of size × d that aborted the process, or minutes of drawing before the hash).
    tampered
        .metadata
        .insert("random_columns".into(), "4611686018427387904".into());
    tampered
        .metadata
        .insert("d".into(), "4611686018427387906".into());
    rewrite(&path, &tampered);
    let error = Subspace::load(&path, &files.manifest)
        .unwrap_err()
        .to_string();
    assert!(error.contains("more than the 8192 columns"), "{error}");
    assert!(error.contains("hybrid.safetensors"), "{error}");
    let too_wide = Subspace::random(&files.manifest, &theta0, 1 << 40, 1).unwrap_err();
    assert!(
        too_wide.to_string().contains("more than the 8192 columns"),
        "{too_wide}"
    );
}

/// Upstream codes travel with a subspace: saved (f16-rounded with the rest), loaded with their
/// own hash checked, padded with 0 on the drawn columns, and left out of the id. Codes of the
/// wrong length, or altered on disk, are refused.
#[test]
fn upstream_codes_round_trip_outside_the_id_and_are_checked() {
    use deltaspace::model::DetParams;
    use deltaspace::subspace::RandomColumns;
    use deltaspace::tensor_file::TensorFile;
    let files = tiny_files();
    let theta0 = Theta0::load(&files).unwrap();
    let learned = Subspace::random(&files.manifest, &theta0, 2, 3).unwrap();
    let dets: Vec<DetParams> = learned.params().dets().to_vec();
    let learned = Subspace::new("hybrid", &files.manifest, dets).unwrap();
    let tasks = vec!["sst2".to_string(), "rte".to_string()];
    let wrong = learned
        .clone()
        .with_codes(tasks.clone(), vec![vec![1.0; 3], vec![0.5; 2]]);
    let error = wrong.unwrap_err().to_string();
    assert!(
        error.contains("needs 2 values") && error.contains("it has 3"),
        "{error}"
    );
    let error = (learned.clone())
        .with_codes(tasks.clone(), vec![vec![1.0, 2.0], vec![0.5, f32::NAN]])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("value 1 of its code is not finite"),
        "{error}"
    );
    let descriptions = vec![
        vec!["Negative.".to_string(), "Positive.".to_string()],
        vec!["Entailed.".to_string(), "Not entailed.".to_string()],
    ];
    let coded = learned
        .clone()
        .with_codes(tasks.clone(), vec![vec![1.5, -2.25], vec![0.1, 40.0]])
        .unwrap();
    let error = coded
        .clone()
        .with_code_descriptions(vec![descriptions[0].clone(), vec![]])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("\"rte\" has no label description"),
        "{error}"
    );
    let with_codes = coded
        .with_code_descriptions(descriptions.clone())
        .unwrap()
        .with_random_columns(&files.manifest, RandomColumns { count: 3, seed: 9 })
        .unwrap();
    let plain = learned
        .with_random_columns(&files.manifest, RandomColumns { count: 3, seed: 9 })
        .unwrap();
    assert_eq!(
        with_codes.id(),
        plain.id(),
        "codes are not part of θ = base + U z"
    );
    let codes = with_codes.codes().unwrap();
    assert_eq!(codes.z[0], [1.5, -2.25, 0.0, 0.0, 0.0]);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("codes.safetensors");
    with_codes.save(&path, Storage::F16).unwrap();
    let loaded = Subspace::load(&path, &files.manifest).unwrap();
    let loaded_codes = loaded.codes().unwrap();
    assert_eq!(loaded_codes.tasks, tasks);
    assert_eq!(loaded_codes.descriptions.as_ref(), Some(&descriptions));
    assert_eq!(
        loaded_codes.z[1][..2],
        [half::f16::from_f32(0.1).to_f32(), 40.0]
    );
    assert_eq!(loaded_codes.z[1][2..], [0.0; 3]);

    let mut tampered = TensorFile::read(&path).unwrap();
    tampered.tensors.get_mut("codes").unwrap().values[0] = 1.0;
    rewrite(&path, &tampered);
    let error = Subspace::load(&path, &files.manifest)
        .unwrap_err()
        .to_string();
    assert!(error.contains("codes hash mismatch"), "{error}");
}

#[test]
fn a_subspace_for_another_layout_or_model_is_refused() {
    let files = tiny_files();
    let theta0 = Theta0::load(&files).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    Subspace::random(&files.manifest, &theta0, 3, 1)
        .unwrap()
        .save(&path, Storage::F32)
        .unwrap();
    let mut other_layout = files.manifest.clone();
    other_layout.layout_sha256 = "0".repeat(64);
    let err = Subspace::load(&path, &other_layout).unwrap_err();
    assert!(
        matches!(
            err,
            SubspaceError::Mismatch {
                what: "DET layout",
                ..
            }
        ),
        "{err}"
    );
    let mut other_model = files.manifest.clone();
    other_model.base_model_sha256 = "1".repeat(64);
    assert!(matches!(
        Subspace::load(&path, &other_model),
        Err(SubspaceError::Mismatch {
            what: "base model",
            ..
        })
    ));
}

#[test]
fn a_corrupted_subspace_file_is_refused() {
    let files = tiny_files();
    let theta0 = Theta0::load(&files).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    Subspace::random(&files.manifest, &theta0, 3, 1)
        .unwrap()
        .save(&path, Storage::F32)
        .unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40; // flip a bit in the last value
    std::fs::write(&path, bytes).unwrap();
    let err = Subspace::load(&path, &files.manifest)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("corrupt") || err.contains("non-finite"),
        "{err}"
    );
}

#[test]
fn prediction_through_every_det_gives_probabilities_over_the_task_labels() {
    let encoder = tiny_encoder();
    let files = tiny_files();
    let subspace = Subspace::random(&files.manifest, &Theta0::load(&files).unwrap(), 4, 3).unwrap();
    let task = Task {
        name: "toy".into(),
        det: DetKind::Adapter,
        z: vec![0.5, -1.0, 0.25, 2.0],
        labels: ["red", "green", "blue"]
            .map(|c| Label {
                name: c.into(),
                description: format!("The text is about the colour {c}."),
            })
            .to_vec(),
        head: None,
        subspace: None,
    };
    let prepared = PreparedTask::prepare(task, &encoder).unwrap();
    let inputs = [
        TextInput::single("a red apple"),
        TextInput::pair("sky", Some("blue".into())),
    ];
    let mut by_det = Vec::new();
    for det in DetKind::ALL {
        let predictions =
            classifier::predict(&encoder, &subspace, &prepared, Some(det), &inputs).unwrap();
        assert_eq!(predictions.len(), 2);
        by_det.push(predictions[0].scores[0].score);
        for prediction in predictions {
            let mut labels: Vec<&str> =
                prediction.scores.iter().map(|s| s.label.as_str()).collect();
            labels.sort_unstable();
            assert_eq!(labels, ["blue", "green", "red"], "{det}: every label once");
            let total: f32 = prediction.scores.iter().map(|s| s.score).sum();
            assert!(
                (total - 1.0).abs() < 1e-5,
                "{det}: probabilities sum to {total}"
            );
            assert_eq!(prediction.label, prediction.scores[0].label);
            assert!(
                prediction
                    .scores
                    .windows(2)
                    .all(|w| w[0].score >= w[1].score)
            );
        }
    }
    // Each DET decodes the same z into its own θ, so the answers differ.
    assert!(
        by_det.windows(2).any(|w| (w[0] - w[1]).abs() > 1e-4),
        "{by_det:?}"
    );
}

#[test]
fn rows_split_into_runs_by_length_embed_as_one_run_does() {
    use deltaspace::classifier::TextRow;
    use deltaspace::model::Batch;
    use deltaspace::model::{CPU_RUN_COST_TOKENS, length_groups};

    let encoder = tiny_encoder();
    let files = tiny_files();
    let subspace = Subspace::random(&files.manifest, &Theta0::load(&files).unwrap(), 4, 3).unwrap();
    let long = "a long sentence that goes on and on ".repeat(6);
    let inputs = [
        TextInput::single("short"),
        TextInput::single(long.clone()),
        TextInput::single("tiny"),
        TextInput::pair(long.clone(), Some(long)),
        TextInput::single("brief"),
    ];
    let codes = [[0.5, -1.0, 0.25, 2.0], [1.0, 0.0, -0.5, 0.3]];
    let rows: Vec<TextRow> = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| TextRow {
            input,
            z: &codes[i % 2],
            det: DetKind::ALL[i % 3],
        })
        .collect();
    let tokens = encoder.tokenize(&inputs).unwrap();
    let lengths: Vec<usize> = tokens
        .attention_mask
        .rows()
        .into_iter()
        .map(|r| r.sum() as usize)
        .collect();
    let groups = length_groups(&lengths, CPU_RUN_COST_TOKENS);
    assert!(groups.len() > 1, "the lengths {lengths:?} should split");

    let split = classifier::embed_rows(&encoder, &subspace, &rows).unwrap();
    let z = ndarray::Array2::from_shape_fn((5, 4), |(i, j)| codes[i % 2][j]);
    let det_select = ndarray::Array2::from_shape_fn((5, 3), |(i, j)| {
        f32::from(DetKind::ALL[i % 3].column(&files.manifest).unwrap() == j)
    });
    let batch = Batch {
        tokens: &tokens,
        z: z.view(),
        det_select: det_select.view(),
    };
    let one_run = encoder.embed(batch, subspace.params()).unwrap();
    let worst = (&split - &one_run)
        .mapv(f32::abs)
        .fold(0.0f32, |a, &b| a.max(b));
    assert!(worst < 1e-5, "split runs differ from one run by {worst}");
}
