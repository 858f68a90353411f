//! What the handlers share: [`AppState`], set up before the model loads, with the tune jobs, and
//! completed by [`Core`] (`loaded`), present once the server is ready.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::error::ApiError;
use crate::jobs::Jobs;
use crate::loaded::Core;
use crate::metrics::Metrics;
use crate::store::follow::StoreStatus;
use crate::{Options, auth};

/// What every handler shares: set up before the model loads, completed by [`Core`] after.
pub(crate) struct AppState {
    pub(crate) metrics: Arc<Metrics>,
    /// The store's backend and, when shared, its change feed: `/health/ready` reports it.
    pub(crate) store_status: Arc<StoreStatus>,
    pub(crate) auth: auth::Auth,
    pub(crate) options: Options,
    /// The tune jobs: they run on [`Core`] once it is loaded.
    pub(crate) jobs: Arc<Jobs>,
    pub(crate) core: OnceLock<Core>,
    pub(crate) shutting_down: AtomicBool,
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
