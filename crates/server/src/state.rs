//! What the handlers share: [`AppState`], set up before the model loads, and [`Core`], the
//! loaded half (model, subspace, store, batcher), present once the server is ready.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use actix_web::web;

use deltaspace_core::model::{DeltaCache, Encoder};
use deltaspace_core::runtime::{Provider, Runtime};
use deltaspace_core::subspace::Subspace;

use crate::error::ApiError;
use crate::jobs::Jobs;
use crate::metrics::Metrics;
use crate::store::TaskStore;
use crate::store::follow::StoreStatus;
use crate::{Options, auth, batcher};

/// What every handler shares: set up before the model loads, completed by [`Core`] after.
pub(crate) struct AppState {
    pub(crate) metrics: Arc<Metrics>,
    /// The store's backend and, when shared, its change feed: `/health/ready` reports it.
    pub(crate) store_status: Arc<StoreStatus>,
    pub(crate) auth: auth::Auth,
    pub(crate) options: Options,
    pub(crate) core: OnceLock<Core>,
    pub(crate) shutting_down: AtomicBool,
}

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
    pub(crate) jobs: Arc<Jobs>,
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

impl AppState {
    /// The loaded model, store and batcher, or 503 while loading.
    pub(crate) fn core(&self) -> Result<&Core, ApiError> {
        self.core.get().ok_or(ApiError::NotReady)
    }

    /// True once loaded and warmed, and not shutting down.
    pub(crate) fn ready(&self) -> bool {
        self.core.get().is_some() && !self.shutting_down.load(Ordering::Relaxed)
    }
}

/// Runs blocking work (ORT, SQLite) on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    web::block(work)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
}
