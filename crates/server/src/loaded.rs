//! [`Core`]: the loaded half of the server's state (model, subspace, store, batcher), present
//! once the server is ready; `state::AppState` holds it.

use std::sync::Arc;

use deltaspace_core::model::{DeltaCache, Encoder};
use deltaspace_core::runtime::{Provider, Runtime};
use deltaspace_core::subspace::Subspace;

use crate::batcher;
use crate::store::TaskStore;

/// The loaded half of the state: present once the server is ready. Cloning shares it.
#[derive(Clone)]
pub(crate) struct Core {
    /// ONNX Runtime, for the tune jobs' encoder.
    pub(crate) runtime: Runtime,
    /// Tokenizes requests and embeds label descriptions (and, unless `serving.resident`, runs
    /// the batches).
    pub(crate) encoder: Arc<Encoder>,
    /// The model the batches run through.
    pub(crate) serving: Serving,
    pub(crate) subspace: Arc<Subspace>,
    pub(crate) store: Arc<TaskStore>,
    pub(crate) batcher: batcher::BatcherHandle,
    /// Identifies the model that made cached label embeddings.
    pub(crate) model_key: String,
}

/// The model the batcher's runs go through (see `load::serving_model`).
#[derive(Debug, Clone)]
pub(crate) struct Serving {
    pub(crate) provider: Provider,
    /// Runs at once.
    pub(crate) sessions: usize,
    /// U and base resident in the sessions' memory (`model::ResidentEncoder`), rather than sent
    /// with each run.
    pub(crate) resident: bool,
    /// The decoded deltas of recent tasks (the host path only: resident U is on the device).
    pub(crate) deltas: Option<Arc<DeltaCache>>,
}
