//! Layer 2: what a delta-tuning method (DET) is.
//!
//! [`DetKind`] names the three DETs (LoRA, Adapter, Prefix-tuning); [`Theta0`] is their shared,
//! seeded initialisation θ⁰, written by the export next to the graphs (paper §1: every task's DET
//! starts from one fixed init per DET type). Sizes and layouts come from the manifest.

use std::fmt;
use std::str::FromStr;

use ndarray::Array1;

use crate::model::{Manifest, ModelFiles};
use crate::tensor_file::{TensorFile, TensorFileError};

/// The three DETs, in `det_select` column order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DetKind {
    Lora,
    Adapter,
    Prefix,
}

impl DetKind {
    /// Every DET, in column order.
    pub const ALL: [DetKind; 3] = [DetKind::Lora, DetKind::Adapter, DetKind::Prefix];

    /// The name used in manifests, task files and the API.
    pub fn name(self) -> &'static str {
        match self {
            DetKind::Lora => "lora",
            DetKind::Adapter => "adapter",
            DetKind::Prefix => "prefix",
        }
    }

    /// The paper's one-letter name (A, L, P), used in transfer tables.
    pub fn letter(self) -> char {
        match self {
            DetKind::Lora => 'L',
            DetKind::Adapter => 'A',
            DetKind::Prefix => 'P',
        }
    }

    /// This DET's `det_select` column in `manifest`.
    pub fn column(self, manifest: &Manifest) -> Result<usize, DetError> {
        manifest
            .det(self.name())
            .map(|layout| layout.select_index)
            .ok_or_else(|| DetError::NotInModel {
                det: self.name().into(),
                model: manifest.name.clone(),
            })
    }

    /// A `det_select` row that switches on this DET only.
    pub fn select_row(self, manifest: &Manifest) -> Result<Vec<f32>, DetError> {
        let mut row = vec![0.0; manifest.dets.len()];
        row[self.column(manifest)?] = 1.0;
        Ok(row)
    }
}

impl fmt::Display for DetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DetKind {
    type Err = DetError;
    fn from_str(s: &str) -> Result<Self, DetError> {
        DetKind::ALL
            .into_iter()
            .find(|det| det.name() == s)
            .ok_or_else(|| DetError::Unknown(s.to_string()))
    }
}

/// What can go wrong with DETs.
#[derive(Debug, thiserror::Error)]
pub enum DetError {
    #[error("unknown DET {0:?}: expected lora, adapter or prefix")]
    Unknown(String),
    #[error("DET {det} is not exported in model {model}")]
    NotInModel { det: String, model: String },
    #[error("θ⁰ of {det} has {got} values, the manifest says {want}")]
    Size {
        det: String,
        got: usize,
        want: usize,
    },
    #[error(transparent)]
    File(#[from] TensorFileError),
}

/// The shared initialisation θ⁰ of every DET, in column order.
#[derive(Debug, Clone)]
pub struct Theta0 {
    dets: Vec<Array1<f32>>,
}

impl Theta0 {
    /// Reads `theta0.safetensors` of a model directory and checks its sizes against the manifest.
    pub fn load(files: &ModelFiles) -> Result<Self, DetError> {
        let mut file = TensorFile::read(&files.path(&files.manifest.theta0))?;
        let mut dets = Vec::new();
        for layout in &files.manifest.dets {
            let tensor = file.take(&layout.name)?;
            if tensor.values.len() != layout.size {
                return Err(DetError::Size {
                    det: layout.name.clone(),
                    got: tensor.values.len(),
                    want: layout.size,
                });
            }
            dets.push(Array1::from(tensor.values));
        }
        Ok(Self { dets })
    }

    /// θ⁰ of the DET in column `index`.
    pub fn det(&self, index: usize) -> &Array1<f32> {
        &self.dets[index]
    }

    /// SHA-256, in hex, of every DET's θ⁰ in column order as little-endian f32: what a run in the
    /// original space starts from, so that its checkpoints name it.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for value in self.dets.iter().flatten() {
            hasher.update(value.to_le_bytes());
        }
        format!("{:x}", hasher.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_names_every_value_of_theta0() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
        let theta0 = Theta0::load(&ModelFiles::open(&dir).unwrap()).unwrap();
        let digest = theta0.digest();
        assert_eq!(digest.len(), 64);
        let mut other = theta0.clone();
        other.dets[2][0] += 1.0;
        assert_ne!(other.digest(), digest, "the last DET counts too");
    }

    #[test]
    fn det_names_round_trip_and_unknown_names_are_errors() {
        for det in DetKind::ALL {
            assert_eq!(det.name().parse::<DetKind>().unwrap(), det);
        }
        assert!(
            "bitfit"
                .parse::<DetKind>()
                .unwrap_err()
                .to_string()
                .contains("lora, adapter or prefix")
        );
        assert_eq!(
            serde_json::to_string(&DetKind::Prefix).unwrap(),
            "\"prefix\""
        );
    }
}
