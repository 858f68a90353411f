//! What the fuzz targets run, kept apart from libFuzzer so that `cargo test` compiles it too and
//! replays the committed corpus through it (tests/it/reliability/fuzz_corpus.rs). Each function
//! must never panic, whatever the bytes; the `assert!`s are the properties a success promises.
// Each fuzz target uses one of the two harnesses.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use deltaspace::model::{TextInput, TextTokenizer};
use deltaspace::server::{
    EmbedRequest, PredictRequest, RequestLimits, TaskBody, check_inputs, decode_page_query,
};
use deltaspace::task::{Task, TaskLimits};

/// The limits the server ships with (`config/deltaspace.toml`).
const LIMITS: RequestLimits = RequestLimits {
    max_inputs: 32,
    max_text_chars: 10_000,
};

/// The subspace dimension tasks are validated against.
const D: usize = 4;

/// The tiny model's tokenizer (the fixture the tests use), truncating at its max_seq_len.
fn tokenizer() -> &'static TextTokenizer {
    static TOKENIZER: OnceLock<TextTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let tiny = [
            root.join("tests/fixtures/tiny"),
            root.join("../tests/fixtures/tiny"),
        ]
        .into_iter()
        .find(|dir| dir.is_dir())
        .expect("tests/fixtures/tiny is missing. This is a bug.");
        let manifest: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(tiny.join("manifest.json")).expect("the tiny manifest"),
        )
        .expect("the tiny manifest parses");
        let max_seq_len = manifest["max_seq_len"].as_u64().expect("max_seq_len") as usize;
        TextTokenizer::load(&tiny.join("tokenizer.json"), max_seq_len, max_seq_len)
            .expect("the tokenizer")
    })
}

/// A request body for one route, chosen by the first byte: what a handler does with a body
/// before it needs the model's encoder (decode, check, then tokenize to size the request).
pub fn request_decoding(data: &[u8]) {
    let Some((&route, body)) = data.split_first() else {
        return;
    };
    match route % 4 {
        0 => {
            if let Ok((request, _det)) = PredictRequest::decode(body, &LIMITS) {
                assert_ne!(request.top_k, Some(0));
                accepted_inputs(&request.inputs);
            }
        }
        1 => {
            if let Ok((request, _det)) = EmbedRequest::decode(body, &LIMITS) {
                accepted_inputs(&request.inputs);
            }
        }
        2 => {
            if let Ok(task) = TaskBody::decode(body, "fuzzed") {
                assert_eq!(task.name, "fuzzed");
                let _ = task.validate(D, &TaskLimits::default());
            }
        }
        _ => {
            if let Ok((_after, limit)) = decode_page_query(&String::from_utf8_lossy(body)) {
                assert!((1..=1000).contains(&limit));
            }
        }
    }
}

/// What accepted inputs promise: within the limits, and tokenizable within max_seq_len.
fn accepted_inputs(inputs: &[TextInput]) {
    assert!(check_inputs(inputs, &LIMITS).is_ok());
    assert!((1..=LIMITS.max_inputs).contains(&inputs.len()));
    for input in inputs {
        for text in [Some(input.text()), input.text_pair()]
            .into_iter()
            .flatten()
        {
            assert!(!text.trim().is_empty());
            assert!(text.chars().count() <= LIMITS.max_text_chars);
        }
    }
    let tokenizer = tokenizer();
    let tokens = tokenizer.encode(inputs).expect("accepted inputs tokenize");
    assert!(tokens.seq_len() <= tokenizer.max_seq_len());
}

/// A task, chosen by the first byte: as JSON (TASK.json files and stored rows), or built field by
/// field from raw bytes (z from raw f32 bit patterns: NaN, infinities, subnormals, huge values).
/// A task that validates must satisfy every documented rule, checked here independently, and
/// must survive the store's JSON round trip unchanged and still valid (else a restart would
/// stop serving it).
pub fn task_validation(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let task = if mode % 2 == 0 {
        match serde_json::from_slice::<Task>(rest) {
            Ok(task) => task,
            Err(_) => return,
        }
    } else {
        task_from_bytes(rest)
    };
    let limits = TaskLimits {
        max_z_norm: 1.0e4,
        max_labels: 8,
        max_label_chars: 16,
        ..TaskLimits::default()
    };
    if task.validate(D, &limits).is_err() {
        return;
    }
    let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    assert!((1..=128).contains(&task.name.chars().count()));
    assert!(task.name.chars().all(name_ok));
    assert_eq!(task.z.len(), D);
    assert!(task.z.iter().all(|v| v.is_finite()));
    let norm = task
        .z
        .iter()
        .map(|&v| f64::from(v).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(
        norm <= f64::from(limits.max_z_norm) * (1.0 + 1e-5),
        "{norm}"
    );
    assert!((2..=limits.max_labels).contains(&task.labels.len()));
    for (i, label) in task.labels.iter().enumerate() {
        for text in [&label.name, &label.description] {
            assert!((1..=limits.max_label_chars).contains(&text.chars().count()));
        }
        assert!(
            task.labels[..i]
                .iter()
                .all(|other| other.name != label.name)
        );
    }
    let json = serde_json::to_string(&task).expect("a valid task serializes");
    let back: Task = serde_json::from_str(&json).expect("a stored task parses back");
    assert_eq!(back, task, "{json}");
    assert!(back.validate(D, &limits).is_ok());
}

/// A task from raw bytes: name, DET, four f32s, then labels separated by 0xff bytes.
fn task_from_bytes(data: &[u8]) -> Task {
    let mut parts = data.split(|&b| b == 0xff);
    let text =
        |bytes: Option<&[u8]>| String::from_utf8_lossy(bytes.unwrap_or_default()).into_owned();
    let name = text(parts.next());
    let header = parts.next().unwrap_or_default();
    let det = ["lora", "adapter", "prefix"][usize::from(header.first().copied().unwrap_or(0)) % 3];
    let z = header
        .get(1..)
        .unwrap_or_default()
        .chunks(4)
        .map(|c| {
            let mut bytes = [0u8; 4];
            bytes[..c.len()].copy_from_slice(c);
            f32::from_le_bytes(bytes)
        })
        .collect();
    let mut labels = Vec::new();
    while let (Some(name), Some(description)) = (parts.next(), parts.next()) {
        labels.push(deltaspace::task::Label {
            name: text(Some(name)),
            description: text(Some(description)),
        });
    }
    Task {
        name,
        det: det.parse().expect("a DET name. This is a bug."),
        z,
        labels,
        head: None,
        subspace: None,
    }
}
