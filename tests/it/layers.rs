//! The layer rule of src/lib.rs, enforced: a module never names a layer to its right, and ONNX
//! Runtime types never leave `runtime` and `model`.

use std::path::Path;

/// (files under src/, crate paths they must not mention)
const RULES: &[(&str, &[&str])] = &[
    (
        "runtime",
        &[
            "crate::model",
            "crate::det",
            "crate::subspace",
            "crate::task",
            "crate::classifier",
            "crate::cli",
            "crate::config",
            "crate::server",
            "crate::train",
        ],
    ),
    (
        "model",
        &[
            "crate::det",
            "crate::subspace",
            "crate::task",
            "crate::classifier",
            "crate::cli",
            "crate::config",
            "crate::server",
            "crate::train",
        ],
    ),
    (
        "det.rs",
        &[
            "crate::cli",
            "crate::config",
            "crate::server",
            "crate::train",
            "crate::classifier",
        ],
    ),
    (
        "subspace.rs",
        &[
            "crate::cli",
            "crate::config",
            "crate::server",
            "crate::train",
            "crate::classifier",
        ],
    ),
    (
        "task.rs",
        &[
            "crate::cli",
            "crate::config",
            "crate::server",
            "crate::train",
            "crate::classifier",
        ],
    ),
    (
        "classifier.rs",
        &[
            "crate::cli",
            "crate::config",
            "crate::server",
            "crate::train",
        ],
    ),
    ("server", &["crate::train", "crate::cli"]),
    ("train", &["crate::server", "crate::cli"]),
];

fn sources(path: &Path, out: &mut Vec<(String, String)>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            sources(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push((
            path.display().to_string(),
            std::fs::read_to_string(path).unwrap(),
        ));
    }
}

#[test]
fn no_module_imports_a_layer_to_its_right() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for (under, forbidden) in RULES {
        let mut files = Vec::new();
        sources(&src.join(under), &mut files);
        for (file, text) in files {
            for name in *forbidden {
                assert!(!text.contains(name), "{file} mentions {name}");
            }
        }
    }
}

#[test]
fn onnx_runtime_types_stay_in_runtime_and_model() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    for (file, text) in files {
        let inside = file.contains("/src/runtime/") || file.contains("/src/model/");
        if !inside {
            assert!(
                !mentions_ort(&text),
                "{file} uses ort:: outside runtime/ and model/"
            );
        }
    }
}

/// `ort::` as a path of its own, not the tail of another name (`report::`).
fn mentions_ort(text: &str) -> bool {
    text.match_indices("ort::").any(|(at, _)| {
        text[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
    })
}
