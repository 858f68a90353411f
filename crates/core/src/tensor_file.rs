//! Named f32 tensors in a safetensors file, with string metadata: how θ⁰, subspaces and DET
//! solutions are stored. f16 and bf16 files are widened to f32 on read.
//!
//! Writes are whole or nothing ([`crate::atomic_file`]).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

/// What can go wrong reading or writing a tensor file.
#[derive(Debug, thiserror::Error)]
pub enum TensorFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid safetensors file")]
    Format {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },
    #[error("{path}: tensor {name:?} has dtype {dtype}; expected F32, F16 or BF16")]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path}: tensor {name:?} is missing")]
    Missing { path: PathBuf, name: String },
    #[error("{path}: tensor {name:?} holds {value}, beyond f16's range (±65,504); store it as f32")]
    BeyondF16 {
        path: PathBuf,
        name: String,
        value: f32,
    },
}

/// How values are stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    #[default]
    F32,
    /// Half the size; about 3 significant digits.
    F16,
}

/// One tensor: shape and row-major values.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// The tensors and metadata of one file.
#[derive(Debug, Clone, Default)]
pub struct TensorFile {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    /// Reads every tensor of `path` as f32.
    pub fn read(path: &Path) -> Result<Self, TensorFileError> {
        let bytes = std::fs::read(path).map_err(|source| TensorFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let format = |source| TensorFileError::Format {
            path: path.to_path_buf(),
            source,
        };
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(format)?;
        let parsed = SafeTensors::deserialize(&bytes).map_err(format)?;
        let mut tensors = BTreeMap::new();
        for (name, view) in parsed.tensors() {
            let values = widen(&view).ok_or_else(|| TensorFileError::Dtype {
                path: path.to_path_buf(),
                name: name.clone(),
                dtype: format!("{:?}", view.dtype()),
            })?;
            tensors.insert(
                name,
                Tensor {
                    shape: view.shape().to_vec(),
                    values,
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            metadata: header.metadata().clone().unwrap_or_default(),
        })
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Result<&Tensor, TensorFileError> {
        self.tensors
            .get(name)
            .ok_or_else(|| TensorFileError::Missing {
                path: self.path.clone(),
                name: name.into(),
            })
    }

    /// Removes and returns the tensor called `name`.
    pub fn take(&mut self, name: &str) -> Result<Tensor, TensorFileError> {
        self.tensors
            .remove(name)
            .ok_or_else(|| TensorFileError::Missing {
                path: self.path.clone(),
                name: name.into(),
            })
    }

    /// Writes `tensors` and `metadata` to `path`, whole or not at all.
    pub fn write(
        path: &Path,
        tensors: &[(&str, &[usize], &[f32])],
        metadata: HashMap<String, String>,
        storage: Storage,
    ) -> Result<(), TensorFileError> {
        let io = |source| TensorFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        if storage == Storage::F16 {
            check_f16_range(path, tensors)?;
        }
        let encoded: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(name, shape, values)| {
                let (dtype, bytes) = match storage {
                    Storage::F32 => (
                        Dtype::F32,
                        values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    ),
                    Storage::F16 => (
                        Dtype::F16,
                        values
                            .iter()
                            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                            .collect(),
                    ),
                };
                (name.to_string(), dtype, shape.to_vec(), bytes)
            })
            .collect();
        let views = encoded
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                TensorView::new(*dtype, shape.clone(), bytes).map(|view| (name.clone(), view))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TensorFileError::Format {
                path: path.to_path_buf(),
                source,
            })?;
        let mut bytes = safetensors::serialize(views, Some(metadata)).map_err(|source| {
            TensorFileError::Format {
                path: path.to_path_buf(),
                source,
            }
        })?;
        if sort_header(&mut bytes).is_none() {
            tracing::warn!(path = %path.display(), "header left in the order safetensors wrote it");
        }
        crate::atomic_file::write(path, |out| out.write_all(&bytes)).map_err(io)
    }
}

/// A finite value past f16's largest would be stored as ±inf, which every reader refuses.
fn check_f16_range(
    path: &Path,
    tensors: &[(&str, &[usize], &[f32])],
) -> Result<(), TensorFileError> {
    let beyond = |v: &&f32| v.is_finite() && f16::from_f32(**v).is_infinite();
    for (name, _, values) in tensors {
        if let Some(value) = values.iter().find(beyond) {
            return Err(TensorFileError::BeyondF16 {
                path: path.to_path_buf(),
                name: name.to_string(),
                value: *value,
            });
        }
    }
    Ok(())
}

/// safetensors writes the metadata in a HashMap's order, which changes from run to run, so the same tensors and
/// metadata made different bytes. This writes the header again through serde_json's map, which keeps its keys
/// sorted (at every depth: its preserve_order feature is off, and the test below would catch it on): the same keys
/// and values, so the same length, and a file made twice from the same content is the same file (a re-made
/// subspace is not a change to commit). Bytes it cannot read as a header are left as they are (`None`).
fn sort_header(bytes: &mut [u8]) -> Option<()> {
    let length = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let end = length.checked_add(8)?;
    let header: serde_json::Value = serde_json::from_slice(bytes.get(8..end)?).ok()?;
    let sorted = serde_json::to_vec(&header).ok()?;
    if sorted.len() > length {
        return None;
    }
    bytes[8..8 + sorted.len()].copy_from_slice(&sorted);
    bytes[8 + sorted.len()..end].fill(b' ');
    Some(())
}

fn widen(view: &TensorView<'_>) -> Option<Vec<f32>> {
    let data = view.data();
    match view.dtype() {
        Dtype::F32 => Some(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        Dtype::F16 => Some(
            data.chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        Dtype::BF16 => Some(
            data.chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_f32_exactly_and_f16_approximately() {
        let dir = tempfile::tempdir().unwrap();
        let values = [0.1f32, -2.5, 1e-3, 7.0, 0.0, 3.25];
        for (storage, tolerance) in [(Storage::F32, 0.0), (Storage::F16, 1e-3)] {
            let path = dir.path().join(format!("{storage:?}.safetensors"));
            let metadata = HashMap::from([("name".to_string(), "x".to_string())]);
            TensorFile::write(&path, &[("a", &[2, 3], &values)], metadata, storage).unwrap();
            let file = TensorFile::read(&path).unwrap();
            let a = file.get("a").unwrap();
            assert_eq!(a.shape, vec![2, 3]);
            for (got, want) in a.values.iter().zip(values) {
                assert!(
                    (got - want).abs() <= tolerance * want.abs().max(1.0),
                    "{storage:?}: {got} vs {want}"
                );
            }
            assert_eq!(file.metadata["name"], "x");
            assert!(
                file.get("b")
                    .unwrap_err()
                    .to_string()
                    .contains("\"b\" is missing")
            );
        }
    }

    #[test]
    fn the_same_content_always_makes_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let keys = [
            "name", "d", "seed", "format", "dets", "id", "base", "layout",
        ];
        let write = |file: &str| {
            // A new HashMap each time: its iteration order is seeded per map.
            let metadata: HashMap<String, String> = keys
                .iter()
                .map(|k| (k.to_string(), format!("{k}-value")))
                .collect();
            let path = dir.path().join(file);
            let values = [1.0f32, 2.0, 3.0, 4.0];
            TensorFile::write(
                &path,
                &[("b", &[4], &values), ("a", &[2, 2], &values)],
                metadata,
                Storage::F16,
            )
            .unwrap();
            std::fs::read(path).unwrap()
        };
        let first = write("first.safetensors");
        assert_eq!(first, write("second.safetensors"));
        let header = String::from_utf8_lossy(&first[8..]);
        let positions: Vec<usize> = [
            "base", "d", "dets", "format", "id", "layout", "name", "seed",
        ]
        .iter()
        .map(|k| header.find(&format!("\"{k}\":\"{k}-value\"")).unwrap())
        .collect();
        assert!(
            positions.is_sorted(),
            "metadata keys out of order: {header}"
        );
        let file = TensorFile::read(&dir.path().join("first.safetensors")).unwrap();
        assert_eq!(file.metadata.len(), keys.len());
        assert_eq!(file.get("a").unwrap().values, vec![1.0, 2.0, 3.0, 4.0]);
    }

    /// f16 would store 1e5 as inf, a file no reader accepts; f32 keeps it.
    #[test]
    fn values_beyond_f16_are_refused_in_f16_and_kept_in_f32() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.safetensors");
        let values = [1.0f32, 1e5];
        let write =
            |storage| TensorFile::write(&path, &[("a", &[2], &values)], HashMap::new(), storage);
        let error = write(Storage::F16).unwrap_err();
        assert!(
            matches!(error, TensorFileError::BeyondF16 { value: 1e5, .. }),
            "{error}"
        );
        assert!(!path.exists());
        write(Storage::F32).unwrap();
        assert_eq!(
            TensorFile::read(&path).unwrap().get("a").unwrap().values,
            values
        );
    }

    #[test]
    fn a_truncated_file_is_a_format_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{").unwrap();
        assert!(matches!(
            TensorFile::read(&path),
            Err(TensorFileError::Format { .. })
        ));
    }
}
