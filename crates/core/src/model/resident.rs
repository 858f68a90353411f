//! [`ResidentEncoder`]: the serving graph with U and base bound once, in the session's own memory.
//!
//! [`Encoder::embed`](super::Encoder::embed) passes every input on every run. On the CPU that
//! costs nothing (ORT reads caller memory in place), but on a GPU it copies U and base, three
//! [D, d] matrices and three [D] vectors (15 MB at d = 16 for MiniLM), from the host each run:
//! about 3 ms a run on an H200 (docs/design/gpu.md, "Why U and base are resident"). Here each session gets an
//! ORT `IoBinding` that holds U_det and base_det for every DET, uploaded once into the session's
//! device memory (CUDA when the session runs on CUDA, host memory otherwise); a run binds only the
//! tokens, z and det_select.
//!
//! Two ways to feed the per-run inputs:
//! - fresh (no buckets, no CUDA graphs): each run binds new host tensors; ORT copies them to the
//!   device as they are bound, and copies the embeddings back to the host after the run;
//! - fixed buffers per shape bucket ([`ResidentOptions::buckets`] or [`ResidentOptions::cuda_graphs`]):
//!   each bucket (rows × seq) owns input and output tensors on the session's device, allocated
//!   once; a batch is padded up to the smallest bucket that holds it and copied into that
//!   bucket's buffers. With `cuda_graphs` the CUDA provider captures one CUDA graph per bucket
//!   (run option `gpu_graph_id`), which needs exactly this: fixed shapes and fixed addresses.
//!   A batch larger than every bucket runs fresh (`gpu_graph_id = -1`).
//!
//! Padding is exact up to float rounding: padded rows are copies of row 0 with z = 0 and no DET
//! and are dropped; padded positions have attention_mask 0, so attention gives them weight
//! exp(-1e9) = 0 and the mean pooling skips them.
//!
//! [`ResidentEncoder::load_plain`] runs the plain graph (no DET plug points) the same way, so that
//! benchmarks compare like with like (both with CUDA graphs, say).

use std::collections::HashMap;
use std::path::Path;

use ndarray::{Array2, ArrayView2, Ix2, s};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, RunOptions, Session};
use ort::value::Tensor;

use super::ModelError;
use super::inputs::{Batch, DeltaParams};
use super::manifest::{Manifest, ModelFiles, input};
use super::tokenize::Tokens;
use crate::runtime::{Pool, Provider, Runtime};

/// Most shape buckets (CUDA graphs) one session keeps when buckets are made on demand.
const MAX_AUTO_BUCKETS: usize = 32;

/// How a [`ResidentEncoder`] runs.
#[derive(Debug, Clone)]
pub struct ResidentOptions {
    /// Sessions of the graph (concurrent runs); each holds its own copy of U and base.
    pub sessions: usize,
    /// Shape buckets (rows, seq) with fixed input and output buffers; a batch is padded up to the
    /// smallest bucket that holds it. Empty: no padding (with `cuda_graphs`, one bucket per exact
    /// shape met, up to 32).
    pub buckets: Vec<(usize, usize)>,
    /// Capture one CUDA graph per bucket (CUDA provider only; ignored on the CPU).
    pub cuda_graphs: bool,
}

impl Default for ResidentOptions {
    fn default() -> Self {
        Self {
            sessions: 1,
            buckets: Vec::new(),
            cuda_graphs: false,
        }
    }
}

/// Where U and base ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// Host memory, read in place by the CPU provider.
    Host,
    /// Allocated on the GPU with the session's CUDA allocator and copied there once.
    Device,
    /// Bound from host tensors, which ORT copied to the GPU once, at bind time (the fallback when
    /// allocating on the device failed; still resident, but the copy is ORT's).
    BoundFromHost,
    /// The plain graph: no U and base at all.
    NoDelta,
}

/// The rows of one run: tokens, and z and det_select for the serving graph.
#[derive(Clone, Copy)]
struct Rows<'a> {
    tokens: &'a Tokens,
    delta: Option<(ArrayView2<'a, f32>, ArrayView2<'a, f32>)>,
}

/// Fixed input and output tensors of one shape bucket.
struct Bucket {
    rows: usize,
    seq: usize,
    input_ids: Tensor<i64>,
    attention_mask: Tensor<i64>,
    token_type_ids: Tensor<i64>,
    /// z and det_select (the serving graph only).
    delta: Option<(Tensor<f32>, Tensor<f32>)>,
    embeddings: Tensor<f32>,
    /// Where the embeddings are copied when `embeddings` is not in host memory.
    host_embeddings: Option<Tensor<f32>>,
    /// `gpu_graph_id`, ≥ 1 (0 is ORT's default graph, -1 means none). ORT captures the graph
    /// after a few plain runs of an id and replays it from then on.
    graph_id: i32,
}

/// One session with its binding, its resident U and base, and its buckets.
struct Slot {
    session: Session,
    binding: IoBinding,
    /// The device allocator of the session (CUDA), or the default CPU allocator.
    allocator: Allocator,
    buckets: HashMap<(usize, usize), Bucket>,
}

/// The serving graph with U and base resident in each session's memory: see the module docs.
pub struct ResidentEncoder {
    manifest: Manifest,
    provider: Provider,
    placement: Placement,
    /// The subspace dimension; 0 for the plain graph.
    d: usize,
    options: ResidentOptions,
    slots: Pool<Slot>,
}

impl ResidentEncoder {
    /// Opens `options.sessions` sessions of the serving graph of the model directory `dir` and
    /// uploads `params` (U and base of every DET) into each, once.
    pub fn load(
        runtime: &Runtime,
        dir: &Path,
        params: &DeltaParams,
        options: &ResidentOptions,
    ) -> Result<Self, ModelError> {
        let files = ModelFiles::open(dir)?;
        params.check(&files.manifest)?;
        let graph = files.manifest.graphs.serve.clone();
        Self::open(runtime, files, &graph, Some(params), options)
    }

    /// The plain graph of `dir` (no DET plug points) run the same way: tokens only, through
    /// [`Self::embed_tokens`].
    pub fn load_plain(
        runtime: &Runtime,
        dir: &Path,
        options: &ResidentOptions,
    ) -> Result<Self, ModelError> {
        let files = ModelFiles::open(dir)?;
        let graph =
            files
                .manifest
                .graphs
                .plain
                .clone()
                .ok_or_else(|| ModelError::MissingGraph {
                    path: files.path("plain"),
                })?;
        Self::open(runtime, files, &graph, None, options)
    }

    fn open(
        runtime: &Runtime,
        files: ModelFiles,
        graph: &str,
        params: Option<&DeltaParams>,
        options: &ResidentOptions,
    ) -> Result<Self, ModelError> {
        let path = files.path(graph);
        if !path.is_file() {
            return Err(ModelError::MissingGraph { path });
        }
        let mut slots = Vec::new();
        let mut provider = Provider::Cpu;
        let mut placement = Placement::NoDelta;
        for _ in 0..options.sessions.max(1) {
            let (session, used) = runtime.open_session(&path, options.cuda_graphs)?;
            check_inputs(&session, &files.manifest, graph, params.is_some())?;
            provider = used;
            let (slot, placed) = Slot::new(session, used, &files.manifest, params)?;
            placement = placed;
            slots.push(slot);
        }
        tracing::info!(
            model = %files.manifest.name,
            graph,
            %provider,
            ?placement,
            sessions = slots.len(),
            buckets = options.buckets.len(),
            cuda_graphs = options.cuda_graphs && provider == Provider::Cuda,
            "resident graph loaded"
        );
        Ok(Self {
            manifest: files.manifest,
            provider,
            placement,
            d: params.map_or(0, DeltaParams::d),
            options: options.clone(),
            slots: Pool::new(slots),
        })
    }

    /// The model's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The execution provider the sessions run on.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Where U and base live.
    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// Whether runs capture and replay CUDA graphs (asked for, and the provider is CUDA).
    pub fn cuda_graphs(&self) -> bool {
        self.options.cuda_graphs && self.provider == Provider::Cuda
    }

    /// Sessions of the graph.
    pub fn sessions(&self) -> usize {
        self.slots.size()
    }

    /// Shape buckets made so far, over every idle session (fixed buffers; one CUDA graph each
    /// when [`Self::cuda_graphs`]).
    pub fn bucket_count(&self) -> usize {
        self.slots
            .idle(|slots| slots.iter().map(|slot| slot.buckets.len()).sum())
    }

    /// The subspace dimension d of the resident U (0 for the plain graph).
    pub fn d(&self) -> usize {
        self.d
    }

    /// Embeddings [rows, H] of a batch, each row through its own z and DETs, with the resident U
    /// and base: the same as [`Encoder::embed`](super::Encoder::embed) with the params this
    /// encoder was loaded with.
    pub fn embed(&self, batch: Batch<'_>) -> Result<Array2<f32>, ModelError> {
        let rows = batch.tokens.rows();
        if rows == 0 {
            return Err(ModelError::EmptyBatch);
        }
        if self.placement == Placement::NoDelta {
            return Err(ModelError::Shape(
                "this is the plain graph: it takes no z (use embed_tokens)".into(),
            ));
        }
        let n_dets = self.manifest.dets.len();
        if batch.z.dim() != (rows, self.d) || batch.det_select.dim() != (rows, n_dets) {
            return Err(ModelError::Shape(format!(
                "z is {:?} and det_select {:?}; expected [{rows}, {}] and [{rows}, {n_dets}]",
                batch.z.dim(),
                batch.det_select.dim(),
                self.d,
            )));
        }
        self.run(Rows {
            tokens: batch.tokens,
            delta: Some((batch.z, batch.det_select)),
        })
    }

    /// Embeddings [rows, H] through the plain graph ([`Self::load_plain`]).
    pub fn embed_tokens(&self, tokens: &Tokens) -> Result<Array2<f32>, ModelError> {
        if tokens.rows() == 0 {
            return Err(ModelError::EmptyBatch);
        }
        if self.placement != Placement::NoDelta {
            return Err(ModelError::Shape(
                "the serving graph needs z and det_select (use embed)".into(),
            ));
        }
        self.run(Rows {
            tokens,
            delta: None,
        })
    }

    fn run(&self, rows: Rows<'_>) -> Result<Array2<f32>, ModelError> {
        let bucketed = !self.options.buckets.is_empty() || self.cuda_graphs();
        let dims = (self.d, self.manifest.dets.len(), self.manifest.hidden());
        let cuda_graphs = self.cuda_graphs();
        self.with_slot(|slot| {
            if bucketed && let Some(key) = slot.bucket_for(rows, &self.options, dims)? {
                return slot.run_bucket(key, rows, cuda_graphs);
            }
            slot.run_fresh(rows, cuda_graphs)
        })
    }

    fn with_slot<T>(&self, f: impl FnOnce(&mut Slot) -> T) -> T {
        self.slots.run(f)
    }
}

impl Slot {
    /// Binds U and base of every DET, once, in the session's memory.
    fn new(
        session: Session,
        provider: Provider,
        manifest: &Manifest,
        params: Option<&DeltaParams>,
    ) -> Result<(Self, Placement), ModelError> {
        let mut binding = session.create_binding()?;
        let allocator = match provider {
            Provider::Cuda => Allocator::new(
                &session,
                MemoryInfo::new(
                    AllocationDevice::CUDA,
                    0,
                    AllocatorType::Device,
                    MemoryType::Default,
                )?,
            )?,
            Provider::Cpu => Allocator::default(),
        };
        let mut placement = match (provider, params) {
            (_, None) => Placement::NoDelta,
            (Provider::Cuda, _) => Placement::Device,
            (Provider::Cpu, _) => Placement::Host,
        };
        let dets = params.map_or(&[][..], DeltaParams::dets);
        for (layout, det) in manifest.dets.iter().zip(dets) {
            let u = Tensor::from_array(det.u.as_standard_layout().into_owned())?;
            let base = Tensor::from_array(det.base.as_standard_layout().into_owned())?;
            for (name, host) in [
                (input::u(&layout.name), u),
                (input::base(&layout.name), base),
            ] {
                if provider == Provider::Cpu {
                    binding.bind_input(name, &host)?;
                    continue;
                }
                match upload(&allocator, &host) {
                    Ok(device) => binding.bind_input(name, &device)?,
                    Err(error) => {
                        // Still resident: ORT copies a host tensor to the device when it is bound.
                        tracing::warn!(%error, input = %name, "device allocation failed; binding from host");
                        placement = Placement::BoundFromHost;
                        binding.bind_input(name, &host)?;
                    }
                }
            }
        }
        Ok((
            Self {
                session,
                binding,
                allocator,
                buckets: HashMap::new(),
            },
            placement,
        ))
    }

    /// Per-run inputs as fresh host tensors; the embeddings come back in host memory.
    fn run_fresh(&mut self, rows: Rows<'_>, cuda_graphs: bool) -> Result<Array2<f32>, ModelError> {
        let tokens = rows.tokens;
        self.binding.bind_input(
            input::INPUT_IDS,
            &Tensor::from_array(tokens.input_ids.clone())?,
        )?;
        self.binding.bind_input(
            input::ATTENTION_MASK,
            &Tensor::from_array(tokens.attention_mask.clone())?,
        )?;
        self.binding.bind_input(
            input::TOKEN_TYPE_IDS,
            &Tensor::from_array(tokens.token_type_ids.clone())?,
        )?;
        if let Some((z, det_select)) = rows.delta {
            self.binding.bind_input(
                input::Z,
                &Tensor::from_array(z.as_standard_layout().into_owned())?,
            )?;
            self.binding.bind_input(
                input::DET_SELECT,
                &Tensor::from_array(det_select.as_standard_layout().into_owned())?,
            )?;
        }
        // Bound anew every run: after a run ORT keeps the produced tensor in the binding and would
        // take it as a pre-allocated output of that shape for the next run.
        let host = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::CPUOutput,
        )?;
        self.binding.clear_outputs();
        self.binding.bind_output_to_device("embeddings", &host)?;
        let outputs = if cuda_graphs {
            // A session made with enable_cuda_graph captures graph 0 unless told otherwise.
            let options = graph_run_options(-1)?;
            self.session
                .run_binding_with_options(&self.binding, &options)?
        } else {
            self.session.run_binding(&self.binding)?
        };
        let embeddings = outputs
            .get("embeddings")
            .ok_or_else(|| ModelError::MissingOutput {
                output: "embeddings".into(),
            })?
            .try_extract_array::<f32>()?;
        embeddings
            .into_dimensionality::<Ix2>()
            .map(|view| view.to_owned())
            .map_err(|source| ModelError::ArrayShape {
                what: "embeddings".into(),
                source,
            })
    }

    /// The bucket a batch goes to, made on first use; `None`: run it fresh.
    fn bucket_for(
        &mut self,
        rows: Rows<'_>,
        options: &ResidentOptions,
        (d, n_dets, hidden): (usize, usize, usize),
    ) -> Result<Option<(usize, usize)>, ModelError> {
        let (n, seq) = (rows.tokens.rows(), rows.tokens.seq_len());
        let key = if options.buckets.is_empty() {
            if !self.buckets.contains_key(&(n, seq)) && self.buckets.len() >= MAX_AUTO_BUCKETS {
                return Ok(None);
            }
            (n, seq)
        } else {
            match options
                .buckets
                .iter()
                .filter(|&&(r, s)| r >= n && s >= seq)
                .min_by_key(|&&(r, s)| (r * s, r))
            {
                Some(&key) => key,
                None => return Ok(None),
            }
        };
        if !self.buckets.contains_key(&key) {
            let graph_id = i32::try_from(self.buckets.len() + 1).unwrap_or(i32::MAX);
            let delta = rows.delta.is_some().then_some((d, n_dets));
            let bucket = Bucket::new(&self.allocator, key, delta, hidden, graph_id)?;
            self.buckets.insert(key, bucket);
        }
        Ok(Some(key))
    }

    /// Copies the batch (padded) into the bucket's buffers and runs on them.
    fn run_bucket(
        &mut self,
        key: (usize, usize),
        rows: Rows<'_>,
        cuda_graphs: bool,
    ) -> Result<Array2<f32>, ModelError> {
        let bucket = self
            .buckets
            .get_mut(&key)
            .expect("bucket_for made this bucket. This is a bug.");
        let padded = pad(rows, bucket.rows, bucket.seq);
        fill(&mut bucket.input_ids, padded.input_ids)?;
        fill(&mut bucket.attention_mask, padded.attention_mask)?;
        fill(&mut bucket.token_type_ids, padded.token_type_ids)?;
        // Re-binding the bucket's own tensors is free (same device, no copy) and keeps each
        // graph's addresses fixed: a captured graph replays on exactly these buffers.
        self.binding
            .bind_input(input::INPUT_IDS, &bucket.input_ids)?;
        self.binding
            .bind_input(input::ATTENTION_MASK, &bucket.attention_mask)?;
        self.binding
            .bind_input(input::TOKEN_TYPE_IDS, &bucket.token_type_ids)?;
        if let (Some((z, det_select)), Some((pz, pselect))) = (&mut bucket.delta, padded.delta) {
            fill(z, pz)?;
            fill(det_select, pselect)?;
            self.binding.bind_input(input::Z, z)?;
            self.binding.bind_input(input::DET_SELECT, det_select)?;
        }
        self.binding.clear_outputs();
        self.binding
            .bind_output("embeddings", &mut bucket.embeddings)?;
        if cuda_graphs {
            let options = graph_run_options(bucket.graph_id)?;
            self.session
                .run_binding_with_options(&self.binding, &options)?;
        } else {
            self.session.run_binding(&self.binding)?;
        }
        let host = match &mut bucket.host_embeddings {
            None => bucket.embeddings.extract_array().to_owned(),
            Some(host) => {
                bucket.embeddings.copy_into(&mut *host)?;
                host.extract_array().to_owned()
            }
        };
        let host = host
            .into_dimensionality::<Ix2>()
            .map_err(|source| ModelError::ArrayShape {
                what: "embeddings".into(),
                source,
            })?;
        Ok(host.slice(s![..rows.tokens.rows(), ..]).to_owned())
    }
}

impl Bucket {
    fn new(
        allocator: &Allocator,
        (rows, seq): (usize, usize),
        delta: Option<(usize, usize)>,
        hidden: usize,
        graph_id: i32,
    ) -> Result<Self, ModelError> {
        let delta = match delta {
            Some((d, n_dets)) => Some((
                Tensor::new(allocator, [rows, d])?,
                Tensor::new(allocator, [rows, n_dets])?,
            )),
            None => None,
        };
        let embeddings = Tensor::new(allocator, [rows, hidden])?;
        let host_embeddings = if embeddings.memory_info().is_cpu_accessible() {
            None
        } else {
            Some(Tensor::new(&Allocator::default(), [rows, hidden])?)
        };
        Ok(Self {
            rows,
            seq,
            input_ids: Tensor::new(allocator, [rows, seq])?,
            attention_mask: Tensor::new(allocator, [rows, seq])?,
            token_type_ids: Tensor::new(allocator, [rows, seq])?,
            delta,
            embeddings,
            host_embeddings,
            graph_id,
        })
    }
}

/// A batch padded to a bucket's shape.
struct Padded {
    input_ids: Array2<i64>,
    attention_mask: Array2<i64>,
    token_type_ids: Array2<i64>,
    delta: Option<(Array2<f32>, Array2<f32>)>,
}

/// Pads `rows` to `n` × `seq`: rows beyond the batch copy row 0's tokens with z = 0 and no DET,
/// positions beyond the batch's seq are padding (id 0, mask 0).
fn pad(rows: Rows<'_>, n: usize, seq: usize) -> Padded {
    let tokens = rows.tokens;
    let (have, len) = (tokens.rows(), tokens.seq_len());
    let grid = |source: &Array2<i64>| {
        Array2::from_shape_fn((n, seq), |(i, j)| {
            let i = if i < have { i } else { 0 };
            if j < len { source[[i, j]] } else { 0 }
        })
    };
    let widen = |source: ArrayView2<'_, f32>| {
        Array2::from_shape_fn((n, source.ncols()), |(i, j)| {
            if i < have { source[[i, j]] } else { 0.0 }
        })
    };
    Padded {
        input_ids: grid(&tokens.input_ids),
        attention_mask: grid(&tokens.attention_mask),
        token_type_ids: grid(&tokens.token_type_ids),
        delta: rows.delta.map(|(z, select)| (widen(z), widen(select))),
    }
}

/// Writes `values` into a bucket tensor: in place when it is in host memory, else through a copy
/// from a host tensor (ort's device copy).
fn fill<T>(target: &mut Tensor<T>, values: Array2<T>) -> Result<(), ModelError>
where
    T: ort::value::PrimitiveTensorElementType + Copy + std::fmt::Debug + 'static,
{
    if target.memory_info().is_cpu_accessible() {
        let (_, data) = target.extract_tensor_mut();
        let source = values
            .as_slice()
            .ok_or_else(|| ModelError::Shape("padded batch is not contiguous".into()))?;
        if data.len() != source.len() {
            return Err(ModelError::Shape(format!(
                "bucket holds {} values, the batch {}",
                data.len(),
                source.len()
            )));
        }
        data.copy_from_slice(source);
        Ok(())
    } else {
        fill_by_copy(target, values)
    }
}

/// Copies `values` into `target` through ort's device copy (an identity session).
fn fill_by_copy<T>(target: &mut Tensor<T>, values: Array2<T>) -> Result<(), ModelError>
where
    T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static,
{
    Tensor::from_array(values)?.copy_into(target)?;
    Ok(())
}

/// Copies a host tensor into a new tensor of `allocator` (the session's CUDA memory).
fn upload<T>(allocator: &Allocator, host: &Tensor<T>) -> Result<Tensor<T>, ort::Error>
where
    T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + 'static,
{
    let shape: Vec<i64> = host.shape().iter().copied().collect();
    let mut device = Tensor::<T>::new(allocator, shape)?;
    host.copy_into(&mut device)?;
    Ok(device)
}

fn graph_run_options(graph_id: i32) -> Result<RunOptions, ModelError> {
    let mut options = RunOptions::new()?;
    options.set("gpu_graph_id", graph_id.to_string())?;
    Ok(options)
}

/// Fails early when the graph lacks an input this encoder binds.
fn check_inputs(
    session: &Session,
    manifest: &Manifest,
    graph: &str,
    delta: bool,
) -> Result<(), ModelError> {
    let present: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
    let expected: Vec<String> = match delta {
        true => manifest.serve_inputs(),
        false => input::TOKENS.map(String::from).to_vec(),
    };
    match expected
        .iter()
        .find(|name| !present.contains(&name.as_str()))
    {
        Some(missing) => Err(ModelError::GraphInterface {
            graph: graph.to_string(),
            input: missing.clone(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use ndarray::Array1;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    use super::*;
    use crate::model::{DetParams, Encoder, EncoderOptions, TextInput};
    use crate::runtime::test_runtime;

    const D: usize = 16;
    const TOLERANCE: f32 = 1e-5;

    fn tiny_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny")
    }

    /// U ~ N(0, 0.05²/d), base ~ N(0, 0.03²) for every DET, as in the export's tests.
    fn random_params(manifest: &Manifest, rng: &mut ChaCha8Rng) -> DeltaParams {
        let dets = manifest
            .dets
            .iter()
            .map(|layout| DetParams {
                u: Array2::from_shape_simple_fn((layout.size, D), || {
                    rng.sample::<f32, _>(StandardNormal) * 0.05 / (D as f32).sqrt()
                }),
                base: Array1::from_shape_simple_fn(layout.size, || {
                    rng.sample::<f32, _>(StandardNormal) * 0.03
                }),
            })
            .collect();
        DeltaParams::new(manifest, dets).unwrap()
    }

    /// Texts of different lengths (padding inside the batch), z per row, rows cycling through
    /// every DET and no DET.
    fn rows(
        encoder: &Encoder,
        n: usize,
        rng: &mut ChaCha8Rng,
    ) -> (Tokens, Array2<f32>, Array2<f32>) {
        let words = [
            "the", "movie", "was", "a", "gorgeous", "witty", "and", "slow", "one",
        ];
        let texts: Vec<TextInput> = (0..n)
            .map(|i| {
                let text: Vec<&str> = (0..(3 + 5 * i % 17)).map(|j| words[(i + j) % 9]).collect();
                TextInput::single(text.join(" "))
            })
            .collect();
        let tokens = encoder.tokenize(&texts).unwrap();
        let n_dets = encoder.manifest().dets.len();
        let z = Array2::from_shape_simple_fn((n, D), || rng.sample::<f32, _>(StandardNormal));
        let select = Array2::from_shape_fn((n, n_dets), |(i, k)| f32::from(i % (n_dets + 1) == k));
        (tokens, z, select)
    }

    fn max_abs_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
        assert_eq!(a.dim(), b.dim());
        a.iter()
            .zip(b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
    }

    /// Checks `resident.embed` against `Encoder::embed` on batches of `batches` rows; returns how
    /// many shape buckets the resident encoder made.
    fn check(options: &ResidentOptions, batches: &[usize]) -> usize {
        let runtime = test_runtime();
        let encoder = Encoder::load(&runtime, &tiny_dir(), &EncoderOptions::default()).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let params = random_params(encoder.manifest(), &mut rng);
        let resident = ResidentEncoder::load(&runtime, &tiny_dir(), &params, options).unwrap();
        assert_eq!(resident.provider(), Provider::Cpu);
        assert_eq!(resident.placement(), Placement::Host);
        assert!(!resident.cuda_graphs());
        // Twice each: the second run of a bucket reuses its buffers.
        for &n in batches.iter().chain(batches) {
            let (tokens, z, select) = rows(&encoder, n, &mut rng);
            let batch = Batch {
                tokens: &tokens,
                z: z.view(),
                det_select: select.view(),
            };
            let expected = encoder.embed(batch, &params).unwrap();
            let actual = resident.embed(batch).unwrap();
            let diff = max_abs_diff(&actual, &expected);
            eprintln!(
                "{n} rows × {} tokens: max |resident - embed| = {diff:e}",
                tokens.seq_len()
            );
            assert!(
                diff <= TOLERANCE,
                "{n} rows ({options:?}): max |resident - embed| = {diff}"
            );
        }
        resident.bucket_count()
    }

    #[test]
    fn resident_u_and_base_give_the_same_embeddings_as_embed() {
        assert_eq!(check(&ResidentOptions::default(), &[1, 5, 8]), 0);
    }

    #[test]
    fn fixed_buckets_pad_rows_and_positions_without_changing_embeddings() {
        let options = ResidentOptions {
            buckets: vec![(4, 64), (8, 16), (8, 64)],
            ..ResidentOptions::default()
        };
        // 3 and 1 rows: padded to (4, 64) or (8, 16) by length; 9 rows fit no bucket and run fresh.
        let made = check(&options, &[3, 8, 9, 1]);
        assert!((1..=3).contains(&made), "{made} buckets");
    }

    #[test]
    fn cuda_graphs_on_the_cpu_are_ignored() {
        let options = ResidentOptions {
            cuda_graphs: true,
            sessions: 2,
            ..ResidentOptions::default()
        };
        assert_eq!(check(&options, &[2, 6]), 0);
    }

    #[test]
    fn the_plain_graph_runs_resident_too() {
        let runtime = test_runtime();
        let options = EncoderOptions {
            with_plain: true,
            ..EncoderOptions::default()
        };
        let encoder = Encoder::load(&runtime, &tiny_dir(), &options).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for options in [
            ResidentOptions::default(),
            ResidentOptions {
                buckets: vec![(8, 64)],
                ..ResidentOptions::default()
            },
        ] {
            let plain = ResidentEncoder::load_plain(&runtime, &tiny_dir(), &options).unwrap();
            assert_eq!(plain.placement(), Placement::NoDelta);
            for n in [3, 8] {
                let (tokens, z, select) = rows(&encoder, n, &mut rng);
                let expected = encoder.embed_plain(&tokens).unwrap();
                let diff = max_abs_diff(&plain.embed_tokens(&tokens).unwrap(), &expected);
                assert!(diff <= TOLERANCE, "plain, {n} rows: {diff}");
                let batch = Batch {
                    tokens: &tokens,
                    z: z.view(),
                    det_select: select.view(),
                };
                assert!(plain.embed(batch).is_err());
            }
            assert_eq!(plain.bucket_count(), options.buckets.len());
        }
    }

    /// The copies the CUDA path makes (host tensor into an allocated tensor, allocated into
    /// allocated), run here between CPU tensors: same element type and shape checks, same calls.
    #[test]
    fn the_device_copy_calls_work_between_cpu_tensors() {
        let _runtime = test_runtime();
        let values = Array2::from_shape_fn((3, 5), |(i, j)| (i * 5 + j) as i64);
        let mut target = Tensor::<i64>::new(&Allocator::default(), [3usize, 5]).unwrap();
        fill_by_copy(&mut target, values.clone()).unwrap();
        assert_eq!(target.extract_array(), values.into_dyn());

        let host = Tensor::from_array(Array2::from_elem((4, 2), 0.5f32)).unwrap();
        let uploaded = upload(&Allocator::default(), &host).unwrap();
        let mut back = Tensor::<f32>::new(&Allocator::default(), [4usize, 2]).unwrap();
        uploaded.copy_into(&mut back).unwrap();
        assert!(back.extract_array().iter().all(|&v| v == 0.5));
    }

    #[test]
    fn wrong_shapes_are_errors_not_panics() {
        let runtime = test_runtime();
        let encoder = Encoder::load(&runtime, &tiny_dir(), &EncoderOptions::default()).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let params = random_params(encoder.manifest(), &mut rng);
        let resident =
            ResidentEncoder::load(&runtime, &tiny_dir(), &params, &ResidentOptions::default())
                .unwrap();
        let (tokens, _, select) = rows(&encoder, 2, &mut rng);
        let z = Array2::zeros((2, D + 1));
        let batch = Batch {
            tokens: &tokens,
            z: z.view(),
            det_select: select.view(),
        };
        assert!(matches!(resident.embed(batch), Err(ModelError::Shape(_))));
    }
}
