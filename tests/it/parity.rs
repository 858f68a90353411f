//! Rust through ONNX Runtime vs the PyTorch reference of the tiny model (relative error ≤ 1e-4),
//! and batch invariance: a mixed batch equals one-by-one runs.

use deltaspace::model::{
    Batch, DeltaCache, DeltaCacheStats, DeltaParams, DetParams, Encoder, EncoderOptions, GradBatch,
    MIN_DECODED_D, TextInput, input,
};
use ndarray::{Array2, s};

use crate::helpers::{Reference, relative_error, runtime, tiny_dir, tiny_encoder};

const TOLERANCE: f32 = 1e-4;

#[test]
fn tokenization_matches_the_python_tokenizer_exactly() {
    let encoder = tiny_encoder();
    let reference = Reference::load();
    let tokens = encoder.tokenize(&reference.inputs()).unwrap();
    assert_eq!(tokens.input_ids, reference.i2(input::INPUT_IDS));
    assert_eq!(tokens.attention_mask, reference.i2(input::ATTENTION_MASK));
    assert_eq!(tokens.token_type_ids, reference.i2(input::TOKEN_TYPE_IDS));
    // The long row was truncated to the model's limit and still ends with [SEP].
    assert_eq!(tokens.seq_len(), encoder.manifest().max_seq_len);
}

#[test]
fn serving_and_plain_graphs_match_pytorch() {
    let encoder = tiny_encoder();
    let reference = Reference::load();
    let tokens = encoder.tokenize(&reference.inputs()).unwrap();
    let (z, det_select) = (reference.f2(input::Z), reference.f2(input::DET_SELECT));
    let batch = Batch {
        tokens: &tokens,
        z: z.view(),
        det_select: det_select.view(),
    };
    let embeddings = encoder.embed(batch, &reference.params(&encoder)).unwrap();
    let expected = reference.f2("embeddings");
    let error = relative_error(embeddings.as_slice().unwrap(), expected.as_slice().unwrap());
    assert!(
        error <= TOLERANCE,
        "serve embeddings: relative error {error}"
    );

    let plain = encoder.embed_plain(&tokens).unwrap();
    let error = relative_error(
        plain.as_slice().unwrap(),
        reference.f2("plain_embeddings").as_slice().unwrap(),
    );
    assert!(
        error <= TOLERANCE,
        "plain embeddings: relative error {error}"
    );
}

#[test]
fn gradient_graph_matches_pytorch_loss_and_every_gradient() {
    let encoder = tiny_encoder();
    let reference = Reference::load();
    let tokens = encoder.tokenize(&reference.inputs()).unwrap();
    let (z, det_select) = (reference.f2(input::Z), reference.f2(input::DET_SELECT));
    let (targets, class_mask) = (
        reference.f2(input::TARGETS),
        reference.f2(input::CLASS_MASK),
    );
    let logit_bias = reference.f2(input::LOGIT_BIAS);
    let labels = reference.i64s[input::LABELS]
        .clone()
        .into_dimensionality()
        .unwrap();
    let row_weight = reference.f1(input::ROW_WEIGHT);
    let batch = GradBatch {
        batch: Batch {
            tokens: &tokens,
            z: z.view(),
            det_select: det_select.view(),
        },
        targets: targets.view(),
        class_mask: class_mask.view(),
        logit_bias: logit_bias.view(),
        labels: labels.view(),
        row_weight: row_weight.view(),
    };
    let params = reference.params(&encoder);
    let gradients = encoder.gradients(batch, &params).unwrap();
    let check = |name: &str, actual: &[f32]| {
        let expected = &reference.f32s[name];
        let error = relative_error(actual, expected.as_slice().unwrap());
        assert!(error <= TOLERANCE, "{name}: relative error {error}");
    };
    check("loss", &[gradients.loss]);
    // Masked classes sit near −1e9, so compare only each row's own task classes.
    let own = |logits: &ndarray::Array2<f32>| -> Vec<f32> {
        logits
            .iter()
            .zip(class_mask.iter())
            .filter(|(_, m)| **m == 1.0)
            .map(|(l, _)| *l)
            .collect()
    };
    let expected_logits = reference.f2("logits");
    let error = relative_error(&own(&gradients.logits), &own(&expected_logits));
    assert!(
        error <= TOLERANCE,
        "logits of the rows' own classes: relative error {error}"
    );
    check("embeddings", gradients.embeddings.as_slice().unwrap());
    check("grad_z", gradients.grad_z.as_slice().unwrap());
    for (index, det) in encoder.manifest().dets.iter().enumerate() {
        check(
            &format!("grad_U_{}", det.name),
            gradients.grad_u[index].as_slice().unwrap(),
        );
        check(
            &format!("grad_base_{}", det.name),
            gradients.grad_base[index].as_slice().unwrap(),
        );
    }
    // The loss is Σ w_b CE_b, so a row of weight 0 has no gradient w.r.t. its z.
    for (row, weight) in row_weight.iter().enumerate() {
        if *weight == 0.0 {
            assert!(
                gradients.grad_z.row(row).iter().all(|g| *g == 0.0),
                "row {row} has weight 0"
            );
        }
    }
}

#[test]
fn a_batch_mixing_tasks_and_dets_equals_one_by_one_runs() {
    let encoder = tiny_encoder();
    let reference = Reference::load();
    let params = reference.params(&encoder);
    let inputs = reference.inputs();
    let (z, det_select) = (reference.f2(input::Z), reference.f2(input::DET_SELECT));
    let tokens = encoder.tokenize(&inputs).unwrap();
    let together = encoder
        .embed(
            Batch {
                tokens: &tokens,
                z: z.view(),
                det_select: det_select.view(),
            },
            &params,
        )
        .unwrap();
    for row in 0..inputs.len() {
        let alone_tokens = encoder.tokenize(&inputs[row..=row]).unwrap();
        let (z_row, select_row) = (
            z.slice(s![row..=row, ..]),
            det_select.slice(s![row..=row, ..]),
        );
        let alone = encoder
            .embed(
                Batch {
                    tokens: &alone_tokens,
                    z: z_row,
                    det_select: select_row,
                },
                &params,
            )
            .unwrap();
        let error = relative_error(
            alone.as_slice().unwrap(),
            together.row(row).to_vec().as_slice(),
        );
        assert!(
            error <= 1e-5,
            "row {row}: alone vs in a mixed batch, relative error {error}"
        );
    }
}

#[test]
fn a_batch_of_one_det_runs_that_dets_own_graph_and_gets_what_serve_gives() {
    let encoder = tiny_encoder();
    assert_eq!(encoder.one_det_graphs(), ["lora", "adapter", "prefix"]);
    let options = EncoderOptions {
        one_det_graphs: false,
        ..EncoderOptions::default()
    };
    let serve_only = Encoder::load(&runtime(), &tiny_dir(), &options).unwrap();
    assert!(serve_only.one_det_graphs().is_empty());
    let reference = Reference::load();
    let params = reference.params(&encoder);
    let inputs = reference.inputs();
    let tokens = encoder.tokenize(&inputs).unwrap();
    let z = reference.f2(input::Z);
    let frozen = encoder.embed_frozen(&inputs).unwrap();
    for column in 0..3 {
        let mut det_select = Array2::<f32>::zeros((inputs.len(), 3));
        det_select.column_mut(column).fill(1.0);
        let batch = Batch {
            tokens: &tokens,
            z: z.view(),
            det_select: det_select.view(),
        };
        let own = encoder.embed(batch, &params).unwrap();
        let serve = serve_only.embed(batch, &params).unwrap();
        let error = relative_error(own.as_slice().unwrap(), serve.as_slice().unwrap());
        assert!(error <= 1e-5, "DET column {column}: relative error {error}");
        let moved = relative_error(own.as_slice().unwrap(), frozen.as_slice().unwrap());
        assert!(
            moved > 1e-3,
            "DET column {column} left the frozen model as it was"
        );
    }
}

/// The reference's U and codes widened to d = [`MIN_DECODED_D`] (decoding starts there): the
/// reference's columns first, then seeded small ones, the codes' new coordinates non-zero.
fn wide(encoder: &Encoder, reference: &Reference) -> (DeltaParams, Array2<f32>) {
    let params = reference.params(encoder);
    let codes = reference.f2(input::Z);
    let d = MIN_DECODED_D;
    let filler = |i: usize, k: usize| (((i * 31 + k * 17) % 97) as f32 / 97.0 - 0.5) * 0.02;
    let dets = params
        .dets()
        .iter()
        .map(|det| {
            let mut u = Array2::from_shape_fn((det.u.nrows(), d), |(i, k)| filler(i, k));
            u.slice_mut(s![.., ..params.d()]).assign(&det.u);
            DetParams {
                u,
                base: det.base.clone(),
            }
        })
        .collect();
    let mut wide_codes = Array2::from_shape_fn((codes.nrows(), d), |(row, k)| {
        ((row * d + k) as f32 * 0.37).sin() * 0.5
    });
    wide_codes.slice_mut(s![.., ..params.d()]).assign(&codes);
    let params = DeltaParams::new(encoder.manifest(), dets).unwrap();
    (params, wide_codes)
}

/// Rows of few distinct codes, decoded through a [`DeltaCache`] (z' one-hot, U' = [U z_1 … U z_T]),
/// embed as they do through U itself: mixed DETs and a frozen row in the all-DET graph, one DET in
/// its own graph; a second pass finds every delta cached; and below `MIN_DECODED_D` a batch goes
/// through U untouched.
#[test]
fn rows_decoded_through_cached_deltas_embed_as_through_u() {
    let encoder = tiny_encoder();
    let reference = Reference::load();
    let (params, codes) = wide(&encoder, &reference);
    let inputs = reference.inputs();
    let tokens = encoder.tokenize(&inputs).unwrap();
    let rows = inputs.len();
    let deltas = DeltaCache::new(&params, 1 << 20, 2);
    // Two distinct codes over six rows: rows 0, 2, 4 take code 0, the others code 1.
    let mut z = Array2::<f32>::zeros((rows, params.d()));
    for row in 0..rows {
        z.row_mut(row).assign(&codes.row(row % 2));
    }
    let mixed = reference.f2(input::DET_SELECT);
    let mut lora_only = Array2::<f32>::zeros((rows, 3));
    lora_only.column_mut(0).fill(1.0);
    let mut expected_misses = 0;
    for (what, det_select) in [("mixed DETs", &mixed), ("LoRA only", &lora_only)] {
        let batch = Batch {
            tokens: &tokens,
            z: z.view(),
            det_select: det_select.view(),
        };
        let through_u = encoder.embed(batch, &params).unwrap();
        for pass in ["first", "second"] {
            let decoded = encoder.embed_decoding(batch, &params, &deltas).unwrap();
            let error = relative_error(decoded.as_slice().unwrap(), through_u.as_slice().unwrap());
            assert!(error <= 1e-5, "{what}, {pass} pass: relative error {error}");
        }
        // The (code, DET) pairs the rows use, each computed once: mixed has code 0 on LoRA and
        // Prefix, code 1 on Adapter and LoRA (row 3 is frozen); LoRA only has both codes on LoRA,
        // cached by then.
        expected_misses += if what == "mixed DETs" { 4 } else { 0 };
        let stats = deltas.stats();
        assert_eq!(stats.misses, expected_misses, "{what}: {stats:?}");
        assert!(stats.hits >= expected_misses, "{what}: {stats:?}");
    }
    // Below MIN_DECODED_D runs read U: the cache is not asked.
    let before = deltas.stats();
    let narrow = reference.params(&encoder);
    let narrow_codes = reference.f2(input::Z);
    let distinct = Batch {
        tokens: &tokens,
        z: narrow_codes.view(),
        det_select: mixed.view(),
    };
    let through_u = encoder.embed(distinct, &narrow).unwrap();
    let decoded = encoder.embed_decoding(distinct, &narrow, &deltas).unwrap();
    assert_eq!(decoded, through_u, "d = 5 goes through U");
    assert_eq!(deltas.stats(), before, "the cache was not asked");
}

/// The cache holds at most its budget in deltas, evicting the least recently used; it serves only
/// the params it was made for; and a budget of 0 turns it off.
#[test]
fn the_delta_cache_keeps_to_its_budget() {
    let encoder = tiny_encoder();
    let reference = Reference::load();
    let (params, codes) = wide(&encoder, &reference);
    let inputs = reference.inputs();
    let tokens = encoder.tokenize(&inputs[..1]).unwrap();
    let size = encoder
        .manifest()
        .dets
        .iter()
        .map(|det| det.size)
        .max()
        .unwrap();
    let select = ndarray::arr2(&[[1.0f32, 0.0, 0.0]]);
    let embed_each = |deltas: &DeltaCache| {
        for row in 0..codes.nrows() {
            let batch = Batch {
                tokens: &tokens,
                z: codes.slice(s![row..row + 1, ..]),
                det_select: select.view(),
            };
            encoder.embed_decoding(batch, &params, deltas).unwrap();
        }
    };
    let two = DeltaCache::new(&params, 2 * size * 4, 2);
    embed_each(&two);
    let stats = two.stats();
    assert_eq!((stats.entries, stats.capacity), (2, 2), "{stats:?}");
    assert_eq!(stats.misses, codes.nrows() as u64);
    // The last code is still there; the first was evicted.
    for (row, hit) in [(codes.nrows() - 1, true), (0, false)] {
        let before = two.stats();
        let batch = Batch {
            tokens: &tokens,
            z: codes.slice(s![row..row + 1, ..]),
            det_select: select.view(),
        };
        encoder.embed_decoding(batch, &params, &two).unwrap();
        assert_eq!(two.stats().hits - before.hits, u64::from(hit), "code {row}");
    }
    // A cache is used only with the params it was made for: another U of the same d is not asked.
    let (other, _) = wide(&encoder, &reference);
    let before = two.stats();
    let batch = Batch {
        tokens: &tokens,
        z: codes.slice(s![0..1, ..]),
        det_select: select.view(),
    };
    let through_u = encoder.embed(batch, &other).unwrap();
    assert_eq!(
        encoder.embed_decoding(batch, &other, &two).unwrap(),
        through_u
    );
    assert_eq!(
        two.stats(),
        before,
        "a cache made for other params was asked"
    );
    let off = DeltaCache::new(&params, 0, 2);
    embed_each(&off);
    let expected = DeltaCacheStats {
        entries: 0,
        capacity: 0,
        hits: 0,
        misses: 0,
    };
    assert_eq!(off.stats(), expected);
}

#[test]
fn the_frozen_model_is_the_plain_graph() {
    let encoder = tiny_encoder();
    let reference = Reference::load();
    let inputs = reference.inputs();
    let frozen = encoder.embed_frozen(&inputs).unwrap();
    let plain = encoder
        .embed_plain(&encoder.tokenize(&inputs).unwrap())
        .unwrap();
    let error = relative_error(frozen.as_slice().unwrap(), plain.as_slice().unwrap());
    assert!(
        error <= 1e-5,
        "det_select = 0 vs plain graph: relative error {error}"
    );
}

#[test]
fn shape_errors_are_reported_not_panics() {
    let encoder = tiny_encoder();
    let tokens = encoder
        .tokenize(&[deltaspace::model::TextInput::single("hello")])
        .unwrap();
    let params = DeltaParams::zeros(encoder.manifest(), 4);
    let (z, det_select) = (Array2::<f32>::zeros((1, 3)), Array2::<f32>::zeros((1, 3)));
    let err = encoder
        .embed(
            Batch {
                tokens: &tokens,
                z: z.view(),
                det_select: det_select.view(),
            },
            &params,
        )
        .unwrap_err();
    assert!(err.to_string().contains("expected [1, 4]"), "{err}");
    assert!(encoder.tokenize(&[]).is_err());
}

/// `EncoderOptions::max_seq_len` (the trainer's `--max-seq-len`) truncates every row; until
/// 2026-11-30 it was ignored and rows ran at the model's limit.
#[test]
fn max_seq_len_truncates_rows_and_a_length_beyond_the_model_is_refused() {
    let long = TextInput::single("word ".repeat(200));
    let load = |max_seq_len| {
        let options = EncoderOptions {
            max_seq_len,
            ..EncoderOptions::default()
        };
        Encoder::load(&runtime(), &tiny_dir(), &options)
    };
    let full = load(None).unwrap();
    let limit = full.manifest().max_seq_len;
    assert_eq!(
        full.tokenize(std::slice::from_ref(&long))
            .unwrap()
            .seq_len(),
        limit
    );
    let short = load(Some(8)).unwrap();
    assert_eq!(
        short
            .tokenize(std::slice::from_ref(&long))
            .unwrap()
            .seq_len(),
        8
    );
    let frozen = |encoder: &Encoder| encoder.embed_frozen(std::slice::from_ref(&long)).unwrap();
    assert_ne!(
        frozen(&full),
        frozen(&short),
        "8 tokens embed otherwise than {limit}"
    );
    // A pair's three special tokens ([CLS] a [SEP] b [SEP]) and one of text: below 4 the tokenizers
    // crate's subtraction overflowed (a panic in debug builds, no truncation in release ones).
    for asked in [0, 1, 3, limit + 1] {
        let error = load(Some(asked)).err().unwrap().to_string();
        assert!(error.contains(&format!("{asked} tokens")), "{error}");
        assert!(error.contains(&format!("takes 4 to {limit}")), "{error}");
    }
    let pair = TextInput::pair("word ".repeat(50), Some("other ".repeat(50)));
    let tokens = load(Some(4)).unwrap().tokenize(&[pair]).unwrap();
    assert_eq!(tokens.seq_len(), 4);
    // The export has a plain graph; these options did not load it, and the error says which.
    let error = short.embed_plain(&tokens).unwrap_err().to_string();
    assert!(error.contains("EncoderOptions::with_plain"), "{error}");
}

/// Exports before 2026-11-30 also held `grad_z.onnx`, listed in the manifest's graphs and
/// graph_io. Such a model directory still loads, graphs and all, and ignores it.
#[test]
fn an_export_that_still_lists_the_removed_grad_z_graph_loads() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(tiny_dir()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let manifest_path = dir.path().join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest["graphs"]["grad_z"] = "grad_z.onnx".into();
    manifest["graph_io"]["grad_z"] = manifest["graph_io"]["grad"].clone();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let options = EncoderOptions {
        with_grad: true,
        one_det_graphs: true,
        ..EncoderOptions::default()
    };
    let encoder = Encoder::load(&runtime(), dir.path(), &options).unwrap();
    assert_eq!(encoder.one_det_graphs(), ["lora", "adapter", "prefix"]);
    let inputs = Reference::load().inputs();
    assert_eq!(encoder.embed_frozen(&inputs).unwrap().nrows(), inputs.len());
}

/// The real MiniLM: the frozen model through the serving graph equals sentence-transformers
/// (tests/fixtures/minilm/make_reference.py). It needs the export (scripts/run-main.sh makes it),
/// which the test machine does not have, so it is ignored, where a silent return would read as a
/// pass: `cargo test -- --ignored` runs it.
#[test]
#[ignore = "needs the MiniLM export (scripts/run-main.sh); run with cargo test -- --ignored"]
fn minilm_frozen_embeddings_match_sentence_transformers() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = root.join("models/all-MiniLM-L6-v2");
    assert!(
        model.join("serve.onnx").is_file(),
        "no MiniLM export at {} (scripts/run-main.sh makes it)",
        model.display()
    );
    let encoder =
        deltaspace::model::Encoder::load(&crate::helpers::runtime(), &model, &Default::default())
            .unwrap();
    let text = std::fs::read_to_string(root.join("tests/fixtures/minilm/reference.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let inputs: Vec<deltaspace::model::TextInput> = reference["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| deltaspace::model::TextInput::single(s.as_str().unwrap()))
        .collect();
    let expected: Vec<f32> = reference["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    let embeddings = encoder.embed_frozen(&inputs).unwrap();
    let error = relative_error(embeddings.as_slice().unwrap(), &expected);
    assert!(
        error <= TOLERANCE,
        "MiniLM vs sentence-transformers: relative error {error}"
    );
}

/// Label lists longer than a chunk run in chunks, `turn` held around each (a server lends itself a
/// session per chunk), and give the embeddings a single call would.
#[test]
fn frozen_embeddings_in_turns_take_one_turn_per_chunk_and_equal_the_whole() {
    let encoder = tiny_encoder();
    let inputs: Vec<TextInput> = (0..130)
        .map(|i| TextInput::single(format!("label number {i}")))
        .collect();
    let mut turns = 0;
    let in_turns = encoder
        .embed_frozen_in_turns(&inputs, || turns += 1)
        .unwrap();
    assert_eq!(turns, 3, "130 rows in chunks of 64");
    let whole = encoder.embed_frozen(&inputs).unwrap();
    assert_eq!(in_turns.dim(), (130, whole.ncols()));
    let error = relative_error(in_turns.as_slice().unwrap(), whole.as_slice().unwrap());
    assert!(error <= TOLERANCE, "relative error {error}");
}
