//! Shared set-up: the tiny model, its PyTorch reference, and error measures.

use std::collections::HashMap;
use std::path::PathBuf;

use deltaspace::model::{DeltaParams, DetParams, Encoder, EncoderOptions, TextInput, input};
use deltaspace::runtime::{ProviderChoice, Runtime, RuntimeOptions};
use deltaspace::tensor_file::{Storage, TensorFile};
use ndarray::{Array1, Array2, ArrayD, IxDyn};
use safetensors::tensor::{Dtype, SafeTensors};

/// The committed tiny model (2 layers, hidden 32, random weights).
pub fn tiny_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny")
}

/// ONNX Runtime on the CPU, with 1 thread per session so parallel tests share the cores.
pub fn runtime() -> Runtime {
    Runtime::load(RuntimeOptions {
        provider: ProviderChoice::Cpu,
        intra_threads: 1,
        library: None,
        shared_threads: false,
    })
    .unwrap()
}

/// The tiny model with every graph loaded.
pub fn tiny_encoder() -> Encoder {
    let options = EncoderOptions {
        with_grad: true,
        with_plain: true,
        one_det_graphs: true,
        ..EncoderOptions::default()
    };
    Encoder::load(&runtime(), &tiny_dir(), &options).unwrap()
}

/// max|a − b| / max|b|: the measure the export's tests and these share.
pub fn relative_error(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len(), "lengths differ");
    let scale = expected
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()))
        .max(1e-30);
    let diff = actual
        .iter()
        .zip(expected)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

/// reference.json and reference.safetensors of the tiny model.
pub struct Reference {
    pub json: serde_json::Value,
    pub f32s: HashMap<String, ArrayD<f32>>,
    pub i64s: HashMap<String, ArrayD<i64>>,
}

impl Reference {
    pub fn load() -> Self {
        let dir = tiny_dir();
        let json =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let (mut f32s, mut i64s) = (HashMap::new(), HashMap::new());
        for (name, view) in file.tensors() {
            let shape = IxDyn(view.shape());
            match view.dtype() {
                Dtype::F32 => {
                    let values = view
                        .data()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                        .collect();
                    f32s.insert(name, ArrayD::from_shape_vec(shape, values).unwrap());
                }
                Dtype::I64 => {
                    let values = view
                        .data()
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                        .collect();
                    i64s.insert(name, ArrayD::from_shape_vec(shape, values).unwrap());
                }
                other => panic!("unexpected dtype {other:?} for {name}"),
            }
        }
        Self { json, f32s, i64s }
    }

    pub fn f2(&self, name: &str) -> Array2<f32> {
        self.f32s[name].clone().into_dimensionality().unwrap()
    }

    pub fn f1(&self, name: &str) -> Array1<f32> {
        self.f32s[name].clone().into_dimensionality().unwrap()
    }

    pub fn i2(&self, name: &str) -> Array2<i64> {
        self.i64s[name].clone().into_dimensionality().unwrap()
    }

    /// The texts (and pairs) of the reference rows.
    pub fn inputs(&self) -> Vec<TextInput> {
        let texts = self.json["texts"].as_array().unwrap();
        let pairs = self.json["pairs"].as_array().unwrap();
        texts
            .iter()
            .zip(pairs)
            .map(|(text, pair)| match pair.as_array() {
                Some(pair) => TextInput::pair(
                    pair[0].as_str().unwrap(),
                    Some(pair[1].as_str().unwrap().to_string()),
                ),
                None => TextInput::single(text.as_str().unwrap()),
            })
            .collect()
    }

    /// The reference U and base of every DET.
    pub fn params(&self, encoder: &Encoder) -> DeltaParams {
        let dets = encoder
            .manifest()
            .dets
            .iter()
            .map(|det| DetParams {
                u: self.f2(&input::u(&det.name)),
                base: self.f1(&input::base(&det.name)),
            })
            .collect();
        DeltaParams::new(encoder.manifest(), dets).unwrap()
    }
}

/// Writes `file`'s tensors and metadata (altered by a test) to `path`, in f32.
pub fn rewrite(path: &std::path::Path, file: &TensorFile) {
    let tensors: Vec<(&str, &[usize], &[f32])> = file
        .tensors
        .iter()
        .map(|(name, t)| (name.as_str(), t.shape.as_slice(), t.values.as_slice()))
        .collect();
    TensorFile::write(path, &tensors, file.metadata.clone(), Storage::F32).unwrap();
}
