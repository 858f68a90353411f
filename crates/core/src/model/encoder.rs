//! [`Encoder`]: rows in, embeddings (serving graph) or loss and gradients (gradient graph) out.
//!
//! Both graphs rebuild θ_det = base_det + U_det z inside, per row, and apply the DETs a row's
//! `det_select` switches on, so one run mixes tasks and DETs (docs/design/z-graph.md).

use std::borrow::Cow;
use std::sync::Arc;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Ix1, Ix2};
use ort::session::{SessionInputValue, SessionOutputs};
use ort::value::TensorRef;

use super::ModelError;
use super::deltas::{Decoded, DeltaCache};
use super::inputs::{Batch, DeltaParams, GradBatch};
use super::manifest::{Manifest, ModelFiles, input};
use super::tokenize::{TextInput, TextTokenizer, Tokens};
use crate::runtime::{Provider, Runtime, SessionPool};

/// The gradient graph's outputs.
#[derive(Debug, Clone)]
pub struct Gradients {
    /// Σ_b w_b · CE_b.
    pub loss: f32,
    /// [rows, classes], masked classes at about −1e9.
    pub logits: Array2<f32>,
    /// [rows, H].
    pub embeddings: Array2<f32>,
    /// d loss / d z, per row: [rows, d].
    pub grad_z: Array2<f32>,
    /// d loss / d U_det, per DET in column order: [D, d].
    pub grad_u: Vec<Array2<f32>>,
    /// d loss / d base_det, per DET in column order: `[D]`.
    pub grad_base: Vec<Array1<f32>>,
}

/// Which graphs to load, and how many sessions of each.
#[derive(Debug, Clone)]
pub struct EncoderOptions {
    /// Sessions of the serving graph (concurrent runs).
    pub sessions: usize,
    /// Load the gradient graph too (the trainer needs it, the server does not).
    pub with_grad: bool,
    /// Load the plain graph (no DET plug points), for benchmarks.
    pub with_plain: bool,
    /// Load the one-DET serving graphs the export has, so that a batch whose rows share one DET
    /// skips the other DETs' plug points ([`Encoder::embed`]). Off by default: each graph is a
    /// session with its own copy of the weights; and unless the runtime shares one thread pool
    /// (`RuntimeOptions::shared_threads`), their pools contend when runs alternate between them
    /// (docs/PERFORMANCE.md measured the server at half its throughput).
    pub one_det_graphs: bool,
    /// Truncate rows to this many tokens, at most the model's `max_seq_len` (training on CPUs)
    /// [default: the model's].
    pub max_seq_len: Option<usize>,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        Self {
            sessions: 1,
            with_grad: false,
            with_plain: false,
            one_det_graphs: false,
            max_seq_len: None,
        }
    }
}

/// Rows per run when embedding a long list (label descriptions), to bound memory.
const CHUNK_ROWS: usize = 64;

/// Called before every run of an encoder that does background work (a server's tune job), so
/// that its runs go between the foreground's: it may wait for its turn, and it may end the work
/// by returning why (the work was cancelled, or the server is stopping).
pub type Pace = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The frozen PLM: its manifest, tokenizer and graphs.
pub struct Encoder {
    files: ModelFiles,
    tokenizer: TextTokenizer,
    serve: SessionPool,
    /// `serve_<det>` of each DET column, when loaded ([`EncoderOptions::one_det_graphs`]).
    one_det: Vec<Option<SessionPool>>,
    grad: Option<SessionPool>,
    plain: Option<SessionPool>,
    /// Zero U and base, for the frozen model's embeddings (label descriptions).
    frozen: DeltaParams,
    /// Asked before each run (see [`Pace`]); none for foreground encoders.
    pace: Option<Pace>,
}

impl Encoder {
    /// Loads the model directory `dir` (manifest, tokenizer, graphs) on `runtime`.
    pub fn load(
        runtime: &Runtime,
        dir: &std::path::Path,
        options: &EncoderOptions,
    ) -> Result<Self, ModelError> {
        let files = ModelFiles::open(dir)?;
        let manifest = &files.manifest;
        let limit = manifest.max_seq_len;
        let max_seq_len = options.max_seq_len.unwrap_or(limit);
        let tokenizer = TextTokenizer::load(&files.path(&manifest.tokenizer), max_seq_len, limit)?;
        let open = |name: &str, count: usize| -> Result<SessionPool, ModelError> {
            let path = files.path(name);
            if !path.is_file() {
                return Err(ModelError::MissingGraph { path });
            }
            Ok(runtime.open_pool(&path, count)?)
        };
        let serve = open(&manifest.graphs.serve, options.sessions)?;
        check_inputs(&serve, &manifest.graphs.serve, &manifest.serve_inputs())?;
        let grad = if options.with_grad {
            let pool = open(&manifest.graphs.grad, 1)?;
            check_inputs(&pool, &manifest.graphs.grad, &manifest.grad_inputs())?;
            Some(pool)
        } else {
            None
        };
        let plain = match (&manifest.graphs.plain, options.with_plain) {
            (Some(name), true) => Some(open(name, 1)?),
            _ => None,
        };
        let mut one_det = Vec::new();
        for det in &manifest.dets {
            let graph = manifest
                .graphs
                .one_det(&det.name)
                .filter(|_| options.one_det_graphs);
            one_det.push(match graph {
                Some(name) => {
                    let pool = open(name, options.sessions)?;
                    check_inputs(&pool, name, &Manifest::one_det_inputs(&det.name))?;
                    Some(pool)
                }
                None => None,
            });
        }
        let frozen = DeltaParams::zeros(manifest, 1);
        tracing::info!(
            model = %manifest.name,
            provider = %serve.provider(),
            sessions = serve.size(),
            grad = grad.is_some(),
            "model loaded"
        );
        Ok(Self {
            files,
            tokenizer,
            serve,
            one_det,
            grad,
            plain,
            frozen,
            pace: None,
        })
    }

    /// The same encoder for background work: `pace` is asked before each of its runs.
    pub fn paced(self, pace: Pace) -> Self {
        Self {
            pace: Some(pace),
            ..self
        }
    }

    /// Waits for this encoder's turn to run, or fails with the reason its work ended.
    fn take_turn(&self) -> Result<(), ModelError> {
        match &self.pace {
            Some(pace) => pace().map_err(ModelError::Halted),
            None => Ok(()),
        }
    }

    /// The model's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.files.manifest
    }

    /// The model directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.files.dir
    }

    /// The execution provider the serving graph runs on.
    pub fn provider(&self) -> Provider {
        self.serve.provider()
    }

    /// Whether any one-DET serving graph is loaded (asked once per batch: no allocation).
    pub fn has_one_det_graphs(&self) -> bool {
        self.one_det.iter().any(Option::is_some)
    }

    /// The DETs whose one-DET serving graph is loaded, in column order.
    pub fn one_det_graphs(&self) -> Vec<&str> {
        let dets = self.manifest().dets.iter().zip(&self.one_det);
        dets.filter(|(_, pool)| pool.is_some())
            .map(|(det, _)| det.name.as_str())
            .collect()
    }

    /// Sessions of the serving graph.
    pub fn sessions(&self) -> usize {
        self.serve.size()
    }

    /// The tokenizer (padding to the longest row, truncating at `max_seq_len`).
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Tokenizes a batch of texts.
    pub fn tokenize(&self, inputs: &[TextInput]) -> Result<Tokens, ModelError> {
        self.tokenizer.encode(inputs)
    }

    /// Embeddings [rows, H] of a batch, each row through its own z and DETs.
    pub fn embed<'a>(
        &self,
        batch: Batch<'a>,
        params: &'a DeltaParams,
    ) -> Result<Array2<f32>, ModelError> {
        check_batch(batch, params, self.manifest())?;
        self.take_turn()?;
        self.run_serving(batch.tokens, DeltaInputs::new(batch, params))
    }

    /// [`Encoder::embed`], with the rows' codes decoded through `deltas` when the batch has
    /// fewer distinct codes than d (see [`DeltaCache`]): the same embeddings, without reading U.
    pub fn embed_decoding<'a>(
        &self,
        batch: Batch<'a>,
        params: &'a DeltaParams,
        deltas: &DeltaCache,
    ) -> Result<Array2<f32>, ModelError> {
        check_batch(batch, params, self.manifest())?;
        self.take_turn()?;
        match deltas.decode(batch, params) {
            Some(decoded) => {
                let inputs = DeltaInputs::decoded(&decoded, batch.det_select, params);
                self.run_serving(batch.tokens, inputs)
            }
            None => self.run_serving(batch.tokens, DeltaInputs::new(batch, params)),
        }
    }

    /// One run of the serving graph, or of the one-DET graph of a batch whose rows share a DET
    /// (the caller has taken its turn).
    fn run_serving(
        &self,
        tokens: &Tokens,
        delta: DeltaInputs<'_>,
    ) -> Result<Array2<f32>, ModelError> {
        if let Some((column, pool)) = self.one_det_graph(delta.det_select) {
            return pool.run(|session| {
                let mut inputs = token_inputs(tokens)?;
                inputs.extend(delta.one_det_inputs(self.manifest(), column)?);
                let outputs = session.run(inputs)?;
                extract2(&outputs, "embeddings")
            });
        }
        self.serve.run(|session| {
            let mut inputs = token_inputs(tokens)?;
            inputs.extend(delta.inputs(self.manifest())?);
            let outputs = session.run(inputs)?;
            extract2(&outputs, "embeddings")
        })
    }

    /// The one-DET graph of a batch whose rows all select the same single DET, if loaded: with
    /// that DET's column.
    fn one_det_graph(&self, det_select: ArrayView2<'_, f32>) -> Option<(usize, &SessionPool)> {
        let column = det_select.row(0).iter().position(|&v| v == 1.0)?;
        let one_hot = |row: ndarray::ArrayView1<'_, f32>| {
            row.iter()
                .enumerate()
                .all(|(k, &v)| v == if k == column { 1.0 } else { 0.0 })
        };
        if !det_select.rows().into_iter().all(one_hot) {
            return None;
        }
        Some((column, self.one_det.get(column)?.as_ref()?))
    }

    /// Embeddings of the frozen model (no DET on any row), in chunks: label descriptions use this.
    pub fn embed_frozen(&self, inputs: &[TextInput]) -> Result<Array2<f32>, ModelError> {
        self.embed_frozen_in_turns(inputs, || ())
    }

    /// As [`Self::embed_frozen`], holding what `turn` returns while each chunk runs: a server
    /// lends itself a session per chunk, so that its predictions run between the chunks of a
    /// long label list.
    pub fn embed_frozen_in_turns<T>(
        &self,
        inputs: &[TextInput],
        mut turn: impl FnMut() -> T,
    ) -> Result<Array2<f32>, ModelError> {
        if inputs.is_empty() {
            return Err(ModelError::EmptyBatch);
        }
        let mut chunks = Vec::new();
        for chunk in inputs.chunks(CHUNK_ROWS) {
            let _turn = turn();
            let tokens = self.tokenize(chunk)?;
            let rows = tokens.rows();
            let z = Array2::zeros((rows, 1));
            let det_select = Array2::zeros((rows, self.manifest().dets.len()));
            let batch = Batch {
                tokens: &tokens,
                z: z.view(),
                det_select: det_select.view(),
            };
            chunks.push(self.embed(batch, &self.frozen)?);
        }
        let views: Vec<_> = chunks.iter().map(|c| c.view()).collect();
        ndarray::concatenate(ndarray::Axis(0), &views).map_err(|source| ModelError::ArrayShape {
            what: "label embeddings, joined".into(),
            source,
        })
    }

    /// Embeddings through the plain graph (no DET plug points); needs `EncoderOptions::with_plain`.
    pub fn embed_plain(&self, tokens: &Tokens) -> Result<Array2<f32>, ModelError> {
        let pool = self
            .plain
            .as_ref()
            .ok_or_else(|| match self.manifest().graphs.plain {
                Some(_) => ModelError::NoPlainGraph,
                None => ModelError::MissingGraph {
                    path: self.files.path("plain"),
                },
            })?;
        pool.run(|session| {
            let outputs = session.run(token_inputs(tokens)?)?;
            extract2(&outputs, "embeddings")
        })
    }

    /// Loss, logits and exact gradients w.r.t. z, U and base; needs `EncoderOptions::with_grad`.
    pub fn gradients<'a>(
        &self,
        batch: GradBatch<'a>,
        params: &'a DeltaParams,
    ) -> Result<Gradients, ModelError> {
        let pool = self.grad.as_ref().ok_or(ModelError::NoGradGraph)?;
        let manifest = self.manifest();
        check_batch(batch.batch, params, manifest)?;
        let rows = batch.batch.tokens.rows();
        let classes = batch.targets.nrows();
        if batch.targets.ncols() != manifest.hidden()
            || batch.class_mask.dim() != (rows, classes)
            || batch.logit_bias.dim() != (rows, classes)
            || batch.labels.len() != rows
            || batch.row_weight.len() != rows
        {
            return Err(ModelError::Shape(format!(
                "targets [{classes}, {}] (H = {}), class_mask {:?}, logit_bias {:?}, labels [{}], row_weight [{}] \
                 for {rows} rows",
                batch.targets.ncols(),
                manifest.hidden(),
                batch.class_mask.dim(),
                batch.logit_bias.dim(),
                batch.labels.len(),
                batch.row_weight.len()
            )));
        }
        if let Some(&bad) = batch
            .labels
            .iter()
            .find(|&&l| l < 0 || l as usize >= classes)
        {
            return Err(ModelError::Shape(format!(
                "label {bad} is outside 0..{classes}"
            )));
        }
        self.take_turn()?;
        pool.run(|session| -> Result<Gradients, ModelError> {
            let mut inputs = token_inputs(batch.batch.tokens)?;
            inputs.push((
                input::TARGETS.into(),
                TensorRef::from_array_view(batch.targets)?.into(),
            ));
            inputs.push((
                input::CLASS_MASK.into(),
                TensorRef::from_array_view(batch.class_mask)?.into(),
            ));
            inputs.push((
                input::LOGIT_BIAS.into(),
                TensorRef::from_array_view(batch.logit_bias)?.into(),
            ));
            inputs.push((
                input::LABELS.into(),
                TensorRef::from_array_view(batch.labels)?.into(),
            ));
            inputs.push((
                input::ROW_WEIGHT.into(),
                TensorRef::from_array_view(batch.row_weight)?.into(),
            ));
            inputs.extend(DeltaInputs::new(batch.batch, params).inputs(manifest)?);
            let outputs = session.run(inputs)?;
            let (_, loss) = output(&outputs, "loss")?.try_extract_tensor::<f32>()?;
            let (mut grad_u, mut grad_base) = (Vec::new(), Vec::new());
            for det in &manifest.dets {
                grad_u.push(extract2(&outputs, &format!("grad_U_{}", det.name))?);
                grad_base.push(extract1(&outputs, &format!("grad_base_{}", det.name))?);
            }
            Ok(Gradients {
                loss: loss.first().copied().unwrap_or(f32::NAN),
                logits: extract2(&outputs, "logits")?,
                embeddings: extract2(&outputs, "embeddings")?,
                grad_z: extract2(&outputs, "grad_z")?,
                grad_u,
                grad_base,
            })
        })
    }
}

type Inputs<'v> = Vec<(Cow<'static, str>, SessionInputValue<'v>)>;

fn token_inputs(tokens: &Tokens) -> Result<Inputs<'_>, ModelError> {
    Ok(vec![
        (
            input::INPUT_IDS.into(),
            TensorRef::from_array_view(&tokens.input_ids)?.into(),
        ),
        (
            input::ATTENTION_MASK.into(),
            TensorRef::from_array_view(&tokens.attention_mask)?.into(),
        ),
        (
            input::TOKEN_TYPE_IDS.into(),
            TensorRef::from_array_view(&tokens.token_type_ids)?.into(),
        ),
    ])
}

/// What a run binds besides the tokens: each row's z and DET selector, and U and base of every
/// DET, all as views. U and base are read in place by the CPU provider: they cost no copy per run.
struct DeltaInputs<'v> {
    z: ArrayView2<'v, f32>,
    det_select: ArrayView2<'v, f32>,
    u: Vec<ArrayView2<'v, f32>>,
    base: Vec<ArrayView1<'v, f32>>,
}

impl<'v> DeltaInputs<'v> {
    fn new(batch: Batch<'v>, params: &'v DeltaParams) -> Self {
        Self {
            z: batch.z,
            det_select: batch.det_select,
            u: params.dets().iter().map(|det| det.u.view()).collect(),
            base: params.dets().iter().map(|det| det.base.view()).collect(),
        }
    }

    /// The decoded form of a batch ([`DeltaCache`]): one-hot z' and U' = [U z_1 … U z_T].
    fn decoded(
        decoded: &'v Decoded,
        det_select: ArrayView2<'v, f32>,
        params: &'v DeltaParams,
    ) -> Self {
        Self {
            z: decoded.z.view(),
            det_select,
            u: decoded.u.iter().map(|u| u.view()).collect(),
            base: params.dets().iter().map(|det| det.base.view()).collect(),
        }
    }

    /// z, det_select, then U_<det> and base_<det> for every DET.
    fn inputs(&self, manifest: &Manifest) -> Result<Inputs<'v>, ModelError> {
        let mut inputs: Inputs<'v> = vec![
            (input::Z.into(), TensorRef::from_array_view(self.z)?.into()),
            (
                input::DET_SELECT.into(),
                TensorRef::from_array_view(self.det_select)?.into(),
            ),
        ];
        for (column, layout) in manifest.dets.iter().enumerate() {
            inputs.extend(self.det_inputs(&layout.name, column)?);
        }
        Ok(inputs)
    }

    /// A one-DET graph's inputs beyond the tokens: z, and U and base of the DET in `column`.
    fn one_det_inputs(&self, manifest: &Manifest, column: usize) -> Result<Inputs<'v>, ModelError> {
        let mut inputs: Inputs<'v> =
            vec![(input::Z.into(), TensorRef::from_array_view(self.z)?.into())];
        inputs.extend(self.det_inputs(&manifest.dets[column].name, column)?);
        Ok(inputs)
    }

    fn det_inputs(&self, name: &str, column: usize) -> Result<Inputs<'v>, ModelError> {
        Ok(vec![
            (
                input::u(name).into(),
                TensorRef::from_array_view(self.u[column])?.into(),
            ),
            (
                input::base(name).into(),
                TensorRef::from_array_view(self.base[column])?.into(),
            ),
        ])
    }
}

fn check_batch(
    batch: Batch<'_>,
    params: &DeltaParams,
    manifest: &Manifest,
) -> Result<(), ModelError> {
    let rows = batch.tokens.rows();
    if rows == 0 {
        return Err(ModelError::EmptyBatch);
    }
    if batch.z.dim() != (rows, params.d()) || batch.det_select.dim() != (rows, manifest.dets.len())
    {
        return Err(ModelError::Shape(format!(
            "z is {:?} and det_select {:?}; expected [{rows}, {}] and [{rows}, {}]",
            batch.z.dim(),
            batch.det_select.dim(),
            params.d(),
            manifest.dets.len()
        )));
    }
    Ok(())
}

fn output<'o, 's>(
    outputs: &'o SessionOutputs<'s>,
    name: &str,
) -> Result<&'o ort::value::DynValue, ModelError> {
    outputs.get(name).ok_or_else(|| ModelError::MissingOutput {
        output: name.into(),
    })
}

fn extract2(outputs: &SessionOutputs<'_>, name: &str) -> Result<Array2<f32>, ModelError> {
    let view = output(outputs, name)?.try_extract_array::<f32>()?;
    view.into_dimensionality::<Ix2>()
        .map(|v| v.to_owned())
        .map_err(|source| ModelError::ArrayShape {
            what: name.to_string(),
            source,
        })
}

fn extract1(outputs: &SessionOutputs<'_>, name: &str) -> Result<Array1<f32>, ModelError> {
    let view = output(outputs, name)?.try_extract_array::<f32>()?;
    view.into_dimensionality::<Ix1>()
        .map(|v| v.to_owned())
        .map_err(|source| ModelError::ArrayShape {
            what: name.to_string(),
            source,
        })
}

/// Fails early, with the graph's name, when an export predates the interface this build speaks.
fn check_inputs(pool: &SessionPool, graph: &str, expected: &[String]) -> Result<(), ModelError> {
    let present = pool.input_names();
    match expected.iter().find(|name| !present.contains(name)) {
        Some(missing) => Err(ModelError::GraphInterface {
            graph: graph.to_string(),
            input: missing.clone(),
        }),
        None => Ok(()),
    }
}
