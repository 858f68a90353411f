//! `manifest.json`: what the export wrote, and the contract every layer reads.
//!
//! It names the graphs and the tokenizer, gives the model's shape, and lays out each DET's flat
//! parameter vector (order, shapes, offsets). Written by `export/export.py`; see export/README.md.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ModelError;

/// The manifest format this build reads.
pub const FORMAT_VERSION: u32 = 1;

/// The parsed `manifest.json` of one exported model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// Model name, e.g. `all-MiniLM-L6-v2`.
    pub name: String,
    /// Where the weights came from.
    #[serde(default)]
    pub source: String,
    /// sha256 of the weights the graphs were exported from; subspaces record it.
    pub base_model_sha256: String,
    pub config: Architecture,
    /// Longest token sequence a row may have; longer inputs are truncated.
    pub max_seq_len: usize,
    /// s in score_c = s · cos(embedding(text), embedding(description_c)).
    pub logit_scale: f32,
    #[serde(default)]
    pub pooling: String,
    /// File names inside the model directory.
    pub tokenizer: String,
    pub theta0: String,
    pub graphs: Graphs,
    /// One entry per DET, in `det_select` column order.
    pub dets: Vec<DetLayout>,
    /// sha256 of the DET layouts; subspaces record it, so a subspace only loads on a matching layout.
    pub layout_sha256: String,
    #[serde(default)]
    pub seed: u64,
}

/// The model's shape, as read from its config.json at export time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Architecture {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    #[serde(default)]
    pub layer_norm_eps: f64,
}

/// The graph files of one export.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Graphs {
    /// Embeddings from tokens, z and the subspace (per-row DET selector).
    pub serve: String,
    /// Loss, logits, embeddings and exact gradients w.r.t. z, U and base.
    pub grad: String,
    /// The same encoder with no DET plug points (a baseline for benchmarks).
    #[serde(default)]
    pub plain: Option<String>,
    /// Graphs that make some runs cheaper, absent from older exports: `serve_<det>`
    /// ([`Graphs::one_det`]). Others (older exports listed `grad_z`) are ignored.
    #[serde(flatten)]
    pub faster: std::collections::BTreeMap<String, String>,
}

impl Graphs {
    /// The graph that serves rows which all use DET `det` (tokens, z, U and base of that DET),
    /// without the other DETs' plug points, when the export has one.
    pub fn one_det(&self, det: &str) -> Option<&str> {
        self.faster.get(&format!("serve_{det}")).map(String::as_str)
    }
}

/// Where one DET's parameters sit in its flat vector θ.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetLayout {
    /// `lora`, `adapter` or `prefix`.
    pub name: String,
    /// Column of `det_select` that switches this DET on for a row.
    pub select_index: usize,
    /// D: the length of θ for this DET.
    pub size: usize,
    /// The DET's own settings (rank, bottleneck, prefix length, ...), as exported.
    #[serde(default)]
    pub hyper: serde_json::Value,
    pub tensors: Vec<TensorSlot>,
}

/// One tensor inside a flat θ: `theta[offset .. offset + product(shape)]`, row-major.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSlot {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
}

impl TensorSlot {
    /// Number of values in the slot.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True for a slot with a zero-sized dimension.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The graphs' input names, in one place: the interface export/export.py writes and the
/// encoders bind (docs/design/z-graph.md).
pub mod input {
    pub const INPUT_IDS: &str = "input_ids";
    pub const ATTENTION_MASK: &str = "attention_mask";
    pub const TOKEN_TYPE_IDS: &str = "token_type_ids";
    /// What every graph takes, the plain one included: the tokens.
    pub const TOKENS: [&str; 3] = [INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS];
    /// Every row's code z [rows, d].
    pub const Z: &str = "z";
    /// Every row's one-hot DET [rows, DETs].
    pub const DET_SELECT: &str = "det_select";
    /// The gradient graph's class embeddings [classes, H].
    pub const TARGETS: &str = "targets";
    /// Which classes each row is scored against [rows, classes].
    pub const CLASS_MASK: &str = "class_mask";
    /// Each row's per-class logit offset (a head's biases) [rows, classes].
    pub const LOGIT_BIAS: &str = "logit_bias";
    /// Each row's true class `[rows]`.
    pub const LABELS: &str = "labels";
    /// Each row's weight in the loss `[rows]`.
    pub const ROW_WEIGHT: &str = "row_weight";

    /// U of one DET [D, d].
    pub fn u(det: &str) -> String {
        format!("U_{det}")
    }

    /// θ⁰ (base) of one DET `[D]`.
    pub fn base(det: &str) -> String {
        format!("base_{det}")
    }
}

impl Manifest {
    /// The serving graph's inputs: tokens, z, det_select, then U and base of every DET.
    pub fn serve_inputs(&self) -> Vec<String> {
        let mut names: Vec<String> = input::TOKENS.map(String::from).to_vec();
        names.extend([input::Z, input::DET_SELECT].map(String::from));
        for det in &self.dets {
            names.push(input::u(&det.name));
            names.push(input::base(&det.name));
        }
        names
    }

    /// A one-DET serving graph's inputs ([`Graphs::one_det`]): tokens, z, U and base of `det`.
    pub fn one_det_inputs(det: &str) -> Vec<String> {
        let mut names: Vec<String> = input::TOKENS.map(String::from).to_vec();
        names.extend([input::Z.to_string(), input::u(det), input::base(det)]);
        names
    }

    /// The gradient graph's inputs: the serving graph's, then the loss's.
    pub fn grad_inputs(&self) -> Vec<String> {
        let mut names = self.serve_inputs();
        names.extend(
            [
                input::TARGETS,
                input::CLASS_MASK,
                input::LOGIT_BIAS,
                input::LABELS,
                input::ROW_WEIGHT,
            ]
            .map(String::from),
        );
        names
    }

    /// Reads and checks `<dir>/manifest.json`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|source| ModelError::Manifest {
                path: path.clone(),
                source,
            })?;
        manifest
            .validate()
            .map_err(|message| ModelError::InvalidManifest { path, message })?;
        Ok(manifest)
    }

    /// Checks what the rest of the crate relies on: versions, contiguous layouts, select columns.
    pub fn validate(&self) -> Result<(), String> {
        if self.format_version != FORMAT_VERSION {
            return Err(format!(
                "format_version {} is not supported (this build reads {FORMAT_VERSION}); re-export the model",
                self.format_version
            ));
        }
        if self.max_seq_len == 0 || self.max_seq_len > self.config.max_position_embeddings {
            return Err(format!(
                "max_seq_len {} must be in 1..={}",
                self.max_seq_len, self.config.max_position_embeddings
            ));
        }
        if self.dets.is_empty() {
            return Err("a model needs at least one DET (dets is empty)".into());
        }
        for (column, det) in self.dets.iter().enumerate() {
            if det.select_index != column {
                return Err(format!(
                    "DET {} has select_index {} but is listed at {column}",
                    det.name, det.select_index
                ));
            }
            let mut next = 0;
            for slot in &det.tensors {
                if slot.offset != next {
                    return Err(format!(
                        "DET {} tensor {} starts at {} not {next}",
                        det.name, slot.name, slot.offset
                    ));
                }
                next += slot.len();
            }
            if next != det.size {
                return Err(format!(
                    "DET {} tensors cover {next} values but size is {}",
                    det.name, det.size
                ));
            }
        }
        Ok(())
    }

    /// The layout of the DET called `name`.
    pub fn det(&self, name: &str) -> Option<&DetLayout> {
        self.dets.iter().find(|det| det.name == name)
    }

    /// Names of the DETs, in `det_select` column order.
    pub fn det_names(&self) -> Vec<&str> {
        self.dets.iter().map(|det| det.name.as_str()).collect()
    }

    /// Width of an embedding.
    pub fn hidden(&self) -> usize {
        self.config.hidden
    }
}

/// Resolves the files a manifest names inside its directory.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl ModelFiles {
    /// Reads the manifest of the model directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::MissingModel {
                dir: dir.to_path_buf(),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest: Manifest::load(dir)?,
        })
    }

    /// `<dir>/<name>`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every array of θ is indexed by DET; a model without one used to load and then panic at
    /// its first batch (`DeltaParams::d` reads the first DET).
    #[test]
    fn a_manifest_without_dets_is_refused() {
        let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
        let mut manifest = Manifest::load(&tiny).unwrap();
        manifest.validate().unwrap();
        manifest.dets.clear();
        let error = manifest.validate().unwrap_err();
        assert!(error.contains("at least one DET"), "{error}");
    }
}
