//! A stage-0 solution: one DET trained for one task in its original space, stored as its flat
//! δ = θ − θ⁰ (safetensors tensor `delta`, f32 or f16) with its dev and test scores in the
//! metadata. δ rather than θ, because δ is what stage 1 decomposes and because δ keeps its
//! precision in f16 where θ⁰ + δ would not.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use deltaspace_core::det::DetKind;
use deltaspace_core::model::Manifest;
use deltaspace_core::tensor_file::{Storage, TensorFile};
use deltaspace_core::tuning::eval::Scores;

/// The `format` metadata value of a solution file.
pub const FORMAT: &str = "deltaspace.solution";

/// θ of one DET for one task, with how well it did.
#[derive(Debug, Clone)]
pub struct Solution {
    pub task: String,
    pub det: DetKind,
    /// δ = θ − θ⁰ of the DET, in the manifest's flat layout.
    pub delta: Vec<f32>,
    pub dev: Scores,
    pub test: Scores,
    /// The training step whose θ this is (best on dev).
    pub step: usize,
}

impl Solution {
    /// `<dir>/<task>.<det>.safetensors`: where `train det` puts a solution.
    pub fn path_in(dir: &Path, task: &str, det: DetKind) -> PathBuf {
        dir.join(format!("{task}.{det}.safetensors"))
    }

    /// Every solution in `dir` (`*.safetensors`, checkpoints left out: files whose name says
    /// "checkpoint"), in name order.
    pub fn load_dir(dir: &Path, manifest: &Manifest) -> anyhow::Result<Vec<Self>> {
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".safetensors") && !name.contains("checkpoint") {
                paths.push(entry.path());
            }
        }
        paths.sort();
        paths
            .iter()
            .map(|path| Self::load(path, manifest))
            .collect()
    }

    pub fn save(&self, path: &Path, manifest: &Manifest, storage: Storage) -> anyhow::Result<()> {
        let metric = |m: &Scores| {
            [
                m.accuracy.to_string(),
                m.macro_f1.to_string(),
                m.n.to_string(),
            ]
        };
        let [dev_accuracy, dev_macro_f1, dev_n] = metric(&self.dev);
        let [test_accuracy, test_macro_f1, test_n] = metric(&self.test);
        let metadata = HashMap::from(
            [
                ("format", FORMAT.to_string()),
                ("task", self.task.clone()),
                ("det", self.det.to_string()),
                ("step", self.step.to_string()),
                ("dev_accuracy", dev_accuracy),
                ("dev_macro_f1", dev_macro_f1),
                ("dev_n", dev_n),
                ("test_accuracy", test_accuracy),
                ("test_macro_f1", test_macro_f1),
                ("test_n", test_n),
                ("layout_sha256", manifest.layout_sha256.clone()),
                ("base_model_sha256", manifest.base_model_sha256.clone()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        TensorFile::write(
            path,
            &[("delta", &[self.delta.len()], &self.delta)],
            metadata,
            storage,
        )
        .with_context(|| format!("writing solution {}", path.display()))
    }

    pub fn load(path: &Path, manifest: &Manifest) -> anyhow::Result<Self> {
        let mut file = TensorFile::read(path)?;
        let meta = |key: &str| -> anyhow::Result<String> {
            file.metadata
                .get(key)
                .cloned()
                .with_context(|| format!("{}: metadata {key:?} missing", path.display()))
        };
        if meta("format")? != FORMAT {
            bail!("{} is not a deltaspace solution", path.display());
        }
        if meta("layout_sha256")? != manifest.layout_sha256
            || meta("base_model_sha256")? != manifest.base_model_sha256
        {
            bail!(
                "{} was trained for another model or DET layout",
                path.display()
            );
        }
        let number = |key: &str| -> anyhow::Result<f32> {
            meta(key)?
                .parse()
                .with_context(|| format!("{}: metadata {key:?} is not a number", path.display()))
        };
        let metrics = |split: &str| -> anyhow::Result<Scores> {
            Ok(Scores {
                accuracy: number(&format!("{split}_accuracy"))?,
                macro_f1: number(&format!("{split}_macro_f1"))?,
                n: number(&format!("{split}_n"))? as usize,
            })
        };
        let det: DetKind = (meta("det")?.parse()).with_context(|| path.display().to_string())?;
        let (dev, test, step, task) = (
            metrics("dev")?,
            metrics("test")?,
            number("step")? as usize,
            meta("task")?,
        );
        if !file.tensors.contains_key("delta") {
            bail!(
                "{} holds no tensor `delta` (solutions before format 2 stored θ): run `train det` again",
                path.display()
            );
        }
        let delta = file.take("delta")?.values;
        let Some(layout) = manifest.det(det.name()) else {
            bail!(
                "{}: a {det} solution, and the model has no {det} DET",
                path.display()
            );
        };
        if delta.len() != layout.size {
            bail!(
                "{}: δ has {} values, the {det} layout has {}",
                path.display(),
                delta.len(),
                layout.size
            );
        }
        // A NaN in δ would reach every θ it is decoded into, and stage 1's eigendecomposition.
        if let Some(at) = delta.iter().position(|v| !v.is_finite()) {
            bail!(
                "{}: δ value {at} is not finite ({})",
                path.display(),
                delta[at]
            );
        }
        Ok(Self {
            task,
            det,
            delta,
            dev,
            test,
            step,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A δ with a NaN was loaded as any other (the subspace reader refuses one), and a DET the
    /// model lacks read as "a layout of 0 values".
    #[test]
    fn a_solution_with_a_value_that_is_not_finite_is_refused_naming_its_file() {
        let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
        let manifest = Manifest::load(&tiny).unwrap();
        let scores = Scores {
            accuracy: 0.5,
            macro_f1: 0.5,
            n: 2,
        };
        let size = manifest.det("lora").unwrap().size;
        let mut solution = Solution {
            task: "sst2".into(),
            det: DetKind::Lora,
            delta: vec![0.0; size],
            dev: scores,
            test: scores,
            step: 1,
        };
        solution.delta[3] = f32::NAN;
        let dir = tempfile::tempdir().unwrap();
        let path = Solution::path_in(dir.path(), "sst2", DetKind::Lora);
        solution.save(&path, &manifest, Storage::F32).unwrap();
        let error = format!("{:#}", Solution::load(&path, &manifest).unwrap_err());
        assert!(error.contains("δ value 3 is not finite"), "{error}");
        assert!(error.contains("sst2.lora.safetensors"), "{error}");
    }
}
