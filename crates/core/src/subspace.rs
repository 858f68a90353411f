//! Layer 2: the unified subspace artifact: U_det `[D, d]` and base_det `[D]` for every DET.
//!
//! θ_det = base_det + U_det z (paper §2 "Projections"; base is θ⁰_det for a subspace found by the
//! trainer). Stored as safetensors (`U.<det>`, `base.<det>`) with metadata naming the subspace,
//! d, and the hashes of the DET layout and base model it was made for, plus a content hash that
//! is checked on load. A subspace only loads against a model with the same layout and weights.
//!
//! The last columns of U may be seeded random directions ([`Subspace::with_random_columns`]): the
//! file then stores only the learned columns and the seed, and loading draws the rest again, so
//! a subspace of large d stays small on disk. The content hash covers every column, drawn ones
//! included, so a draw that came out differently would be caught.
//!
//! A subspace found from upstream tasks may carry their codes ([`UpstreamCodes`]), the starts a
//! warm start for a new task chooses from. They are not part of θ = base + U z, so the content
//! hash and the id leave them out (tasks keep their subspace when codes are added); they have a
//! hash of their own, checked on load. With them may come each upstream task's label
//! descriptions, by which a new task finds the upstream task nearest to it.

use std::collections::HashMap;
use std::path::Path;

use ndarray::{Array1, Array2, ArrayView1, Axis};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use sha2::{Digest, Sha256};

use crate::det::Theta0;
use crate::model::{DeltaParams, DetLayout, DetParams, Manifest, ModelError};
use crate::tensor_file::{Storage, TensorFile, TensorFileError};

/// The `format` metadata value of a subspace file.
pub const FORMAT: &str = "deltaspace.subspace";

/// The most columns a subspace may have. The product uses 1,024; at MiniLM's 73,728 values per DET
/// this bound is 2.4 GB of U per DET, and a file (or a flag) asking for more is refused before
/// anything is drawn rather than failing its allocation.
pub const MAX_D: usize = 8_192;

/// `d` within 1..=[`MAX_D`], or why not.
pub fn check_d(d: usize) -> Result<(), String> {
    match d {
        0 => Err("d must be at least 1".into()),
        d if d > MAX_D => Err(format!(
            "d = {d} is more than the {MAX_D} columns a subspace may have"
        )),
        _ => Ok(()),
    }
}

/// What can go wrong loading or saving a subspace.
#[derive(Debug, thiserror::Error)]
pub enum SubspaceError {
    #[error(transparent)]
    File(#[from] TensorFileError),
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error(
        "{path} was made for another {what} ({found}) than the loaded model's ({expected}); \
         use a subspace made for this model"
    )]
    Mismatch {
        path: String,
        what: &'static str,
        found: String,
        expected: String,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// A unified subspace for one model.
#[derive(Debug, Clone)]
pub struct Subspace {
    name: String,
    /// DET names in column order (from the manifest), for tensor names.
    det_names: Vec<String>,
    layout_sha256: String,
    base_model_sha256: String,
    content_sha256: String,
    params: DeltaParams,
    /// The last columns of every U, when they are seeded random draws rather than stored values.
    random: Option<RandomColumns>,
    codes: Option<UpstreamCodes>,
}

/// The codes of the upstream tasks a subspace was found from: each task's z on the learned
/// columns (0 on drawn ones): its stage-0 solutions' coordinates from the decomposition, or after
/// a refinement that was kept, the mean of its per-DET codes at the best step. Stored as `codes`
/// [tasks, learned columns], with the task names, the codes' own hash and the tasks' label
/// descriptions (when stage 1 read the tasks' data) in the metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamCodes {
    /// Task names, in the order of `z`.
    pub tasks: Vec<String>,
    /// One z of d values per task.
    pub z: Vec<Vec<f32>>,
    /// Each task's label descriptions, in the order of `tasks`, if known.
    pub descriptions: Option<Vec<Vec<String>>>,
}

/// Random columns at the end of every U: `count` columns per DET with i.i.d. N(0, 1/D) entries,
/// drawn from ChaCha8(`seed`) DET by DET in column order, row-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomColumns {
    pub count: usize,
    pub seed: u64,
}

impl RandomColumns {
    /// Every DET's learned columns (column order) completed by its drawn ones: U = [learned |
    /// drawn], [D, k + count] row-major. The draws fill U row by row, which is the row-major order
    /// of the drawn block alone, straight into the one matrix: at d = 1,024 each U is 302 MB.
    fn complete(self, learned: Vec<DetParams>) -> Vec<DetParams> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
        learned
            .into_iter()
            .map(|det| {
                let (size, k) = det.u.dim();
                let normal = Normal::new(0.0f32, 1.0 / (size as f32).sqrt())
                    .expect("finite std. This is a bug.");
                let mut u = Array2::zeros((size, k + self.count));
                for (mut row, known) in u.rows_mut().into_iter().zip(det.u.rows()) {
                    let (mut stored, mut drawn) = row.view_mut().split_at(Axis(0), k);
                    stored.assign(&known);
                    drawn.iter_mut().for_each(|v| *v = normal.sample(&mut rng));
                }
                DetParams { u, base: det.base }
            })
            .collect()
    }
}

impl Subspace {
    /// Builds a subspace from U and base per DET (column order), e.g. at the end of training.
    pub fn new(
        name: &str,
        manifest: &Manifest,
        dets: Vec<DetParams>,
    ) -> Result<Self, SubspaceError> {
        let d = dets.first().map_or(0, |det| det.u.ncols());
        check_d(d).map_err(|message| SubspaceError::Invalid {
            path: name.to_string(),
            message,
        })?;
        let params = DeltaParams::new(manifest, dets)?;
        let content_sha256 = content_hash(&params);
        Ok(Self {
            name: name.to_string(),
            det_names: manifest.dets.iter().map(|det| det.name.clone()).collect(),
            layout_sha256: manifest.layout_sha256.clone(),
            base_model_sha256: manifest.base_model_sha256.clone(),
            content_sha256,
            params,
            random: None,
            codes: None,
        })
    }

    /// This subspace with the upstream tasks' codes: `codes[t]` is task `tasks[t]`'s z on the
    /// learned columns (a drawn column's coordinate is 0).
    pub fn with_codes(
        mut self,
        tasks: Vec<String>,
        codes: Vec<Vec<f32>>,
    ) -> Result<Self, SubspaceError> {
        let learned = self.learned_columns();
        let invalid = |message: String| SubspaceError::Invalid {
            path: self.name.clone(),
            message,
        };
        if learned == 0 {
            return Err(invalid(
                "a subspace without learned columns has no upstream codes".into(),
            ));
        }
        if tasks.is_empty() || tasks.len() != codes.len() {
            return Err(invalid(format!(
                "upstream codes need one code per task, at least one: {} tasks, {} codes",
                tasks.len(),
                codes.len()
            )));
        }
        if let Some((index, name)) = tasks
            .iter()
            .enumerate()
            .find(|(index, name)| tasks[..*index].contains(name))
        {
            return Err(invalid(format!(
                "upstream task {name:?} has two codes (the second at {index})"
            )));
        }
        let mut padded = Vec::with_capacity(codes.len());
        for (name, mut code) in tasks.iter().zip(codes) {
            if code.len() != learned {
                return Err(invalid(format!(
                    "upstream task {name:?}: a code needs {learned} values (one per learned \
                     column); it has {}",
                    code.len()
                )));
            }
            if let Some(at) = code.iter().position(|v| !v.is_finite()) {
                return Err(invalid(format!(
                    "upstream task {name:?}: value {at} of its code is not finite ({})",
                    code[at]
                )));
            }
            code.resize(self.d(), 0.0);
            padded.push(code);
        }
        self.codes = Some(UpstreamCodes {
            tasks,
            z: padded,
            descriptions: None,
        });
        Ok(self)
    }

    /// This subspace with its upstream tasks' label descriptions: `descriptions[t]` are task
    /// `tasks[t]`'s (see [`Subspace::with_codes`]), at least one each.
    pub fn with_code_descriptions(
        mut self,
        descriptions: Vec<Vec<String>>,
    ) -> Result<Self, SubspaceError> {
        let invalid = |message: String| SubspaceError::Invalid {
            path: self.name.clone(),
            message,
        };
        let Some(codes) = self.codes.as_mut() else {
            return Err(invalid(
                "label descriptions come with upstream codes; this subspace has none".into(),
            ));
        };
        if descriptions.len() != codes.tasks.len() {
            return Err(invalid(format!(
                "upstream codes need the label descriptions of each of their {} tasks, got {}",
                codes.tasks.len(),
                descriptions.len()
            )));
        }
        if let Some(task) = descriptions.iter().position(Vec::is_empty) {
            return Err(invalid(format!(
                "upstream task {:?} has no label description",
                codes.tasks[task]
            )));
        }
        codes.descriptions = Some(descriptions);
        Ok(self)
    }

    /// This subspace with `columns.count` seeded random columns appended to every U: a learned
    /// basis completed up to d.
    pub fn with_random_columns(
        self,
        manifest: &Manifest,
        columns: RandomColumns,
    ) -> Result<Self, SubspaceError> {
        if self.random.is_some() {
            return Err(SubspaceError::Invalid {
                path: self.name.clone(),
                message: "a subspace takes random columns once".into(),
            });
        }
        let learned = self.params.dets().to_vec();
        let completed = Self::from_parts(&self.name, manifest, learned, Some(columns))?;
        // Upstream codes have no coordinate on the drawn columns.
        match self.codes {
            Some(codes) => completed.with_upstream(codes),
            None => Ok(completed),
        }
    }

    /// A random subspace through θ⁰: base = θ⁰, U with i.i.d. N(0, 1/D) entries (unit-norm,
    /// nearly orthogonal columns), all of them seeded draws. The control of the paper's
    /// precursor (IPT), and a start for z.
    pub fn random(
        manifest: &Manifest,
        theta0: &Theta0,
        d: usize,
        seed: u64,
    ) -> Result<Self, SubspaceError> {
        let learned = manifest
            .dets
            .iter()
            .enumerate()
            .map(|(column, layout)| DetParams {
                u: Array2::zeros((layout.size, 0)),
                base: theta0.det(column).clone(),
            })
            .collect();
        let columns = RandomColumns { count: d, seed };
        Self::from_parts(
            &format!("random-d{d}-seed{seed}"),
            manifest,
            learned,
            Some(columns),
        )
    }

    /// Learned columns (any number, 0 included) followed by the drawn ones.
    fn from_parts(
        name: &str,
        manifest: &Manifest,
        learned: Vec<DetParams>,
        random: Option<RandomColumns>,
    ) -> Result<Self, SubspaceError> {
        let d = learned.first().map_or(0, |det| det.u.ncols()) + random.map_or(0, |r| r.count);
        check_d(d).map_err(|message| SubspaceError::Invalid {
            path: name.to_string(),
            message,
        })?;
        let dets = match random {
            None => learned,
            Some(columns) => columns.complete(learned),
        };
        let mut subspace = Self::new(name, manifest, dets)?;
        subspace.random = random;
        Ok(subspace)
    }

    /// How many columns of U are stored values (the rest are seeded draws).
    fn learned_columns(&self) -> usize {
        self.d() - self.random.map_or(0, |r| r.count)
    }

    /// Reads a subspace file and checks it against `manifest`.
    pub fn load(path: &Path, manifest: &Manifest) -> Result<Self, SubspaceError> {
        let mut file = Stored {
            file: TensorFile::read(path)?,
            path: path.display().to_string(),
        };
        if file.meta("format")? != FORMAT {
            return Err(file.invalid(format!("not a subspace (format is not {FORMAT:?})")));
        }
        let (name, stored_hash) = (file.meta("name")?, file.meta("content_sha256")?);
        let layout_sha256 = file.meta("layout_sha256")?;
        let base_model_sha256 = file.meta("base_model_sha256")?;
        let d: usize = file.number("d")?;
        check_d(d).map_err(|message| file.invalid(message))?;
        for (what, found, expected) in [
            ("DET layout", layout_sha256, &manifest.layout_sha256),
            ("base model", base_model_sha256, &manifest.base_model_sha256),
        ] {
            if found != *expected {
                return Err(SubspaceError::Mismatch {
                    path: file.path,
                    what,
                    found,
                    expected: expected.clone(),
                });
            }
        }
        // Seeded random columns, when the file has them, are drawn again rather than read.
        let random = match file.file.metadata.contains_key("random_columns") {
            false => None,
            true => Some(RandomColumns {
                count: file.number("random_columns")?,
                seed: file.number("random_seed")?,
            }),
        };
        let stored = d
            .checked_sub(random.map_or(0, |r| r.count))
            .ok_or_else(|| file.invalid("more random columns than d".into()))?;
        let learned = (manifest.dets.iter())
            .map(|layout| file.det(layout, stored))
            .collect::<Result<Vec<_>, _>>()?;
        let subspace = Self::from_parts(&name, manifest, learned, random)?;
        if subspace.content_sha256 != stored_hash {
            return Err(file.invalid(
                "content hash mismatch: the file is corrupt, or its seeded columns were drawn \
                 differently (another version of the random-number crates)"
                    .into(),
            ));
        }
        match read_codes(&mut file.file, stored).map_err(|m| file.invalid(m))? {
            // What is wrong with a stored code is wrong with the file.
            Some(codes) => subspace.with_upstream(codes).map_err(|e| match e {
                SubspaceError::Invalid { message, .. } => file.invalid(message),
                other => other,
            }),
            None => Ok(subspace),
        }
    }

    /// Writes the subspace: base and the learned columns of U (seeded random columns are
    /// recorded by their seed); `Storage::F16` halves the stored values (they are rounded, the
    /// hash follows).
    pub fn save(&self, path: &Path, storage: Storage) -> Result<(), SubspaceError> {
        let stored = match storage {
            Storage::F32 => self.clone(),
            Storage::F16 => self.rounded_to_f16(),
        };
        let learned = self.learned_columns();
        let mut names = Vec::new();
        for (index, det) in stored.params.dets().iter().enumerate() {
            let det_name = &self.det_names[index];
            if learned > 0 {
                let u = det.u.slice(ndarray::s![.., ..learned]).to_owned();
                names.push((
                    format!("U.{det_name}"),
                    vec![u.nrows(), learned],
                    u.into_raw_vec_and_offset().0,
                ));
            }
            names.push((
                format!("base.{det_name}"),
                det.base.shape().to_vec(),
                det.base.to_vec(),
            ));
        }
        let mut tensors: Vec<(&str, &[usize], &[f32])> = names
            .iter()
            .map(|(n, s, v)| (n.as_str(), s.as_slice(), v.as_slice()))
            .collect();
        let mut metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("format_version".to_string(), "1".to_string()),
            ("name".to_string(), self.name.clone()),
            ("d".to_string(), self.d().to_string()),
            ("dets".to_string(), self.det_names.join(",")),
            ("layout_sha256".to_string(), self.layout_sha256.clone()),
            (
                "base_model_sha256".to_string(),
                self.base_model_sha256.clone(),
            ),
            ("content_sha256".to_string(), stored.content_sha256.clone()),
        ]);
        if let Some(random) = self.random {
            metadata.insert("random_columns".into(), random.count.to_string());
            metadata.insert("random_seed".into(), random.seed.to_string());
        }
        // The codes as stored: their learned coordinates, task by task.
        let codes = stored.codes.as_ref().map(|codes| {
            let values: Vec<f32> = codes
                .z
                .iter()
                .flat_map(|z| &z[..learned])
                .copied()
                .collect();
            (codes, [codes.z.len(), learned], values)
        });
        if let Some((codes, shape, values)) = &codes {
            tensors.push(("codes", shape, values));
            let names = serde_json::to_string(&codes.tasks).expect("names serialize");
            metadata.insert("code_tasks".into(), names);
            metadata.insert("codes_sha256".into(), values_sha256(values));
            if let Some(descriptions) = &codes.descriptions {
                let descriptions = serde_json::to_string(descriptions).expect("texts serialize");
                metadata.insert("code_descriptions".into(), descriptions);
            }
        }
        TensorFile::write(path, &tensors, metadata, storage)?;
        Ok(())
    }

    /// The name given when the subspace was made.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `name@` + the first 12 hex digits of the content hash: names one exact subspace.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, &self.content_sha256[..12])
    }

    /// True when a task's `subspace` reference (a name or a full id) names this subspace.
    pub fn matches(&self, reference: &str) -> bool {
        reference == self.name || reference == self.id()
    }

    /// A task's `subspace` reference when it names another subspace than this one.
    pub fn other<'r>(&self, reference: Option<&'r str>) -> Option<&'r str> {
        reference.filter(|r| !self.matches(r))
    }

    /// The subspace dimension d.
    pub fn d(&self) -> usize {
        self.params.d()
    }

    /// U and base of every DET, as the encoder takes them.
    pub fn params(&self) -> &DeltaParams {
        &self.params
    }

    /// θ = base + U z of the DET in column `index` (for solutions, transfer and inspection).
    pub fn theta(&self, index: usize, z: ArrayView1<f32>) -> Array1<f32> {
        let det = self.params.det(index);
        &det.base + &det.u.dot(&z)
    }

    /// The upstream tasks' codes, if the subspace carries them.
    pub fn codes(&self) -> Option<&UpstreamCodes> {
        self.codes.as_ref()
    }

    /// This subspace with `codes`, whose z hold the learned coordinates alone (checked as
    /// [`Subspace::with_codes`] and [`Subspace::with_code_descriptions`] check them).
    fn with_upstream(self, codes: UpstreamCodes) -> Result<Self, SubspaceError> {
        let subspace = self.with_codes(codes.tasks, codes.z)?;
        match codes.descriptions {
            Some(descriptions) => subspace.with_code_descriptions(descriptions),
            None => Ok(subspace),
        }
    }

    /// Stored values rounded to f16 (the codes' too); drawn columns stay as drawn, since loading
    /// draws them again.
    fn rounded_to_f16(&self) -> Self {
        let learned = self.learned_columns();
        let round = |v: f32| half::f16::from_f32(v).to_f32();
        let mut rounded = self.clone();
        rounded.params = self.params.map_columns(learned, round);
        rounded.content_sha256 = content_hash(&rounded.params);
        if let Some(codes) = rounded.codes.as_mut() {
            codes.z.iter_mut().flatten().for_each(|v| *v = round(*v));
        }
        rounded
    }
}

/// A subspace file being read, named as its errors show it.
struct Stored {
    file: TensorFile,
    path: String,
}

impl Stored {
    fn invalid(&self, message: String) -> SubspaceError {
        SubspaceError::Invalid {
            path: self.path.clone(),
            message,
        }
    }

    /// The metadata `key`, which must be there.
    fn meta(&self, key: &str) -> Result<String, SubspaceError> {
        (self.file.metadata.get(key).cloned())
            .ok_or_else(|| self.invalid(format!("metadata {key:?} missing")))
    }

    /// The metadata `key` as a number.
    fn number<T: std::str::FromStr>(&self, key: &str) -> Result<T, SubspaceError> {
        (self.meta(key)?.parse())
            .map_err(|_| self.invalid(format!("metadata {key:?} is not a number")))
    }

    /// One DET's base and its `stored` columns of U, checked for shape and finite values.
    fn det(&mut self, layout: &DetLayout, stored: usize) -> Result<DetParams, SubspaceError> {
        let name = &layout.name;
        let base = self.file.take(&format!("base.{name}"))?;
        let u = match stored {
            0 => Array2::zeros((layout.size, 0)),
            _ => {
                let u = self.file.take(&format!("U.{name}"))?;
                if u.shape != [layout.size, stored] {
                    let expected = format!("[{}, {stored}]", layout.size);
                    return Err(self.invalid(format!(
                        "DET {name}: U is {:?}, expected {expected}",
                        u.shape
                    )));
                }
                Array2::from_shape_vec((layout.size, stored), u.values)
                    .map_err(|e| self.invalid(e.to_string()))?
            }
        };
        if base.shape != [layout.size] {
            let expected = format!("[{}]", layout.size);
            return Err(self.invalid(format!(
                "DET {name}: base is {:?}, expected {expected}",
                base.shape
            )));
        }
        if !u.iter().chain(&base.values).all(|v| v.is_finite()) {
            return Err(self.invalid(format!("DET {name} has non-finite values")));
        }
        Ok(DetParams {
            u,
            base: Array1::from(base.values),
        })
    }
}

/// The upstream codes a subspace file holds, `learned` values each (not yet padded to d), once
/// their hash is checked; None for a file without codes.
fn read_codes(file: &mut TensorFile, learned: usize) -> Result<Option<UpstreamCodes>, String> {
    let Some(names) = file.metadata.get("code_tasks").cloned() else {
        return Ok(None);
    };
    let tasks: Vec<String> = serde_json::from_str(&names)
        .map_err(|e| format!("metadata \"code_tasks\" is not a list of names: {e}"))?;
    let hash = file
        .metadata
        .get("codes_sha256")
        .cloned()
        .ok_or("metadata \"codes_sha256\" missing")?;
    let codes = file.take("codes").map_err(|e| e.to_string())?;
    if codes.shape != [tasks.len(), learned] {
        return Err(format!(
            "codes are {:?}, expected [{}, {learned}] (tasks, learned columns)",
            codes.shape,
            tasks.len()
        ));
    }
    if values_sha256(&codes.values) != hash {
        return Err("codes hash mismatch: the file is corrupt".into());
    }
    let z = codes
        .values
        .chunks(learned.max(1))
        .map(<[f32]>::to_vec)
        .collect();
    let descriptions = match file.metadata.get("code_descriptions") {
        Some(texts) => Some(serde_json::from_str(texts).map_err(|e| {
            format!("metadata \"code_descriptions\" is not a list of lists of texts: {e}")
        })?),
        None => None,
    };
    Ok(Some(UpstreamCodes {
        tasks,
        z,
        descriptions,
    }))
}

/// sha256 of values as little-endian f32, in hex: the upstream codes' hash, and stage 2's name for
/// a start.
pub(crate) fn values_sha256(values: &[f32]) -> String {
    let mut hasher = Sha256::new();
    for value in values {
        hasher.update(value.to_le_bytes());
    }
    format!("{:x}", hasher.finalize())
}

/// sha256 over every U then base, in column order, as little-endian f32.
fn content_hash(params: &DeltaParams) -> String {
    let mut hasher = Sha256::new();
    let mut bytes = Vec::with_capacity(4 * HASH_CHUNK);
    for det in params.dets() {
        let mut values = det.u.iter().chain(det.base.iter()).peekable();
        while values.peek().is_some() {
            bytes.clear();
            for value in values.by_ref().take(HASH_CHUNK) {
                bytes.extend_from_slice(&value.to_le_bytes());
            }
            hasher.update(&bytes);
        }
    }
    format!("{:x}", hasher.finalize())
}

/// Values per update of [`content_hash`]: one call per value spent more time in the call than in
/// sha256 itself.
const HASH_CHUNK: usize = 1 << 14;
