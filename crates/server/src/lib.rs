//! deltaspace's HTTP server (online). [`run`] serves on a bound listener at once (liveness), loads
//! the model, subspace and stored tasks in the background (readiness), batches requests of any
//! tasks and DETs into shared encoder calls, and drains in-flight requests on shutdown.
//! Routes and wire types are in `api`, the one error-to-status table in `error`.

mod admit;
mod api;
mod auth;
mod batcher;
mod browser;
mod error;
mod import;
mod jobs;
mod load;
mod loaded;
mod metrics;
mod state;
mod store;

use browser::BrowserGuard;
use jobs::Jobs;
use loaded::Core;
use state::AppState;
use store::follow::{Follower, StoreStatus};

pub use admit::AdmitError;
pub use api::decode::{
    EmbedRequest, PredictRequest, RequestLimits, TaskBody, TuneRequest, check_inputs,
    decode_page_query,
};
pub use batcher::{BatchLimits, Cost, take_batch};
pub use browser::is_allowed_host;
pub use error::ApiError;
pub use import::{ImportError, ImportSummary, import_tasks};
pub use jobs::{MAX_YIELD, TuneLimits, TuneOrder};
pub use metrics::Metrics;
pub use store::{
    Backend, Changes, DATABASE_FILE, Database, JobRecord, JobResult, JobState, LabelSets,
    LocationError, POSTGRES_SCHEMA_VERSION, PostgresStore, Precondition, Record, StoreError,
    StoreLocation, StoredTask, TaskStore, export_tasks, labels_key, open as open_store,
};

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::{App, HttpServer, web};
use futures::future::{Either, ready};

use deltaspace_core::classifier::ClassifyError;
use deltaspace_core::model::{ModelError, ResidentChoice};
use deltaspace_core::runtime::{RuntimeError, RuntimeOptions};
use deltaspace_core::secret::Secret;
use deltaspace_core::subspace::SubspaceError;
use deltaspace_core::task::TaskLimits;

/// Everything the server needs, typed; `cli::serve` builds it from the configuration.
#[derive(Debug, Clone)]
pub struct Options {
    /// How to load ONNX Runtime.
    pub runtime: RuntimeOptions,
    /// Sessions of the serving graph, i.e. batches in flight at once.
    pub sessions: usize,
    /// Whether batches run with U and base resident in the sessions' memory.
    pub resident: ResidentChoice,
    /// With a resident model on CUDA: capture one CUDA graph per batch shape (at most 32 shapes
    /// per session; others run without).
    pub cuda_graphs: bool,
    /// Batches whose rows share one DET run that DET's own graph (off by default: see
    /// `model::EncoderOptions::one_det_graphs`).
    pub one_det_graphs: bool,
    /// Bytes of decoded deltas U z kept for recent tasks, so that a batch of few tasks does not
    /// read U (`model::DeltaCache`; the CPU path); 0 = none.
    pub delta_cache_bytes: usize,
    /// The exported model directory.
    pub model_dir: PathBuf,
    /// The subspace file every task's z belongs to.
    pub subspace: PathBuf,
    /// Where tasks are stored: the SQLite database (`[server] data_dir`/tasks.sqlite3 unless
    /// `[store] url` says otherwise) or a PostgreSQL database shared by replicas.
    pub store: StoreLocation,
    /// TASK.json files imported once at start (each name at most once, ever); skipped if absent.
    pub seed_tasks_dir: Option<PathBuf>,
    /// HTTP worker threads; 0 = one per core.
    pub workers: usize,
    /// Batch size and waiting limits.
    pub batch: BatchLimits,
    /// Most texts in one predict or embed request.
    pub max_inputs: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Longest text (or text_pair) of a predict or embed request, in characters.
    pub max_text_chars: usize,
    /// Most tasks served; creating one more answers 409 `too_many_tasks`.
    pub max_tasks: usize,
    /// Bounds on uploaded tasks.
    pub task_limits: TaskLimits,
    /// Bounds on tune jobs.
    pub tune: TuneLimits,
    /// Names this replica in the tune jobs it records; a restart fails only its own unfinished
    /// jobs.
    pub replica: String,
    /// Bearer tokens; empty = no authorization.
    pub tokens: Vec<Secret>,
    /// Require a token for predictions, embeddings and task reads too.
    pub protect_reads: bool,
    /// `Host` names the server answers besides this machine's; empty = any unless bound to a
    /// loopback address; `*` = any (`browser`).
    pub allowed_hosts: Vec<String>,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_timeout: Duration,
    /// How long a client may take to send a request's head before it gets 408; zero = no limit.
    pub client_request_timeout: Duration,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("loading model {dir}: {source}")]
    Model { dir: PathBuf, source: ModelError },
    #[error("loading subspace {path}: {source}")]
    Subspace {
        path: PathBuf,
        source: SubspaceError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("embedding label descriptions")]
    Labels(#[source] ModelError),
    #[error("warm-up")]
    WarmUp(#[source] ClassifyError),
    #[error("start-up was interrupted")]
    Interrupted,
}

/// Serves on `listener` until `shutdown` completes, then drains: stops accepting, lets in-flight
/// requests finish (up to `shutdown_timeout`), runs what is queued, and returns.
///
/// Liveness answers at once; the model, subspace and tasks load in the background and readiness
/// (`/health/ready`) turns true after a warm-up batch. A load failure stops the server with it.
pub async fn run(
    listener: std::net::TcpListener,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let store_status = Arc::new(StoreStatus::new(options.store.backend()));
    let metrics = Arc::new(Metrics::new());
    let jobs = Jobs::new(
        options.tune,
        options.task_limits,
        options.replica.clone(),
        metrics.clone(),
    );
    metrics
        .store_connected
        .set(i64::from(store_status.connected.load(Ordering::Relaxed)));
    let state = Arc::new(AppState {
        metrics,
        store_status,
        auth: auth::Auth::new(&options.tokens, options.protect_reads),
        options: options.clone(),
        jobs: Arc::new(jobs),
        core: OnceLock::new(),
        shutting_down: AtomicBool::new(false),
    });
    let address = listener.local_addr()?;
    let server = http_server(listener, state.clone())?;
    let http = server.handle();
    let serving = tokio::spawn(server);
    tracing::info!(%address, "listening; loading the model");

    tokio::pin!(shutdown);
    let started = Instant::now();
    let mut batcher_task = None;
    let mut follower = None;
    let outcome = tokio::select! {
        loaded = load::load(&options, state.metrics.clone()) => match loaded {
            Ok((core, task)) => {
                batcher_task = Some(task);
                follower = follow(&state, &core);
                state.jobs.keep_leases(core.store.clone());
                let tasks = core.store.len();
                let _ = state.core.set(core);
                tracing::info!(%address, tasks, seconds = started.elapsed().as_secs_f32(), "ready");
                shutdown.await;
                Ok(())
            }
            Err(error) => Err(error),
        },
        () = &mut shutdown => Ok(()),
    };

    tracing::info!("shutting down: draining in-flight requests");
    state.shutting_down.store(true, Ordering::Relaxed);
    if let Some(follower) = follower {
        follower.abort();
    }
    // One shutdown_timeout for both, side by side: the listener closes and in-flight requests finish
    // while running tune jobs end at their next run and are recorded as interrupted.
    tokio::join!(
        state.jobs.shut_down(options.shutdown_timeout),
        http.stop(true)
    );
    match serving.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::error!(%error, "HTTP server stopped with an error"),
        Err(error) => tracing::error!(%error, "HTTP server task failed"),
    }
    if let Some(core) = state.core.get() {
        core.batcher.close();
    }
    if let Some(task) = batcher_task {
        let _ = task.await;
    }
    tracing::info!("stopped");
    outcome
}

/// Starts following the other replicas' writes when the store is shared (PostgreSQL), from the
/// change the tasks were loaded at.
fn follow(state: &AppState, core: &Core) -> Option<tokio::task::JoinHandle<()>> {
    let StoreLocation::Postgres(url) = &state.options.store else {
        return None;
    };
    let since = core.store.loaded_at()?;
    let follower = Follower {
        url: url.clone(),
        store: core.store.clone(),
        prepare: load::prepare(core, state.options.task_limits),
        status: state.store_status.clone(),
        metrics: state.metrics.clone(),
    };
    Some(tokio::spawn(follower.run(since)))
}

/// Every request: the browser guard, then its route; counted in the metrics and written to the
/// access log whatever the answer.
fn observed<S>(
    guard: &BrowserGuard,
    metrics: Arc<Metrics>,
    request: ServiceRequest,
    service: &S,
) -> impl Future<Output = Result<ServiceResponse, actix_web::Error>> + use<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse, Error = actix_web::Error>,
{
    let started = Instant::now();
    let method = request.method().as_str().to_string();
    let call = match guard.check(request.request()) {
        Ok(()) => Either::Left(service.call(request)),
        Err(refused) => {
            let headers = request.headers();
            let text = |name| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
            };
            let (host, origin) = (text(header::HOST), text(header::ORIGIN));
            tracing::info!(%method, host, origin, reason = %refused, "refused a browser's request");
            Either::Right(ready(Ok(request.error_response(refused))))
        }
    };
    async move {
        let response = call.await?;
        let route = response
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_string());
        let (status, seconds) = (response.status().as_u16(), started.elapsed());
        metrics.observe_request(&method, &route, status, seconds.as_secs_f64());
        // Failures are logged where they happen (`ApiError`); this is the access log.
        let ms = seconds.as_secs_f64() * 1e3;
        tracing::debug!(%method, %route, status, ms, "request");
        Ok(response)
    }
}

/// The HTTP server with its route table, not yet polled.
fn http_server(
    listener: std::net::TcpListener,
    state: Arc<AppState>,
) -> Result<actix_web::dev::Server, ServerError> {
    let workers = state.options.workers;
    let timeout = state.options.shutdown_timeout.as_secs().max(1);
    let client_request_timeout = state.options.client_request_timeout;
    let loopback = listener.local_addr()?.ip().is_loopback();
    let guard = BrowserGuard::new(loopback, &state.options.allowed_hosts);
    if guard.answers_any_host() && !state.auth.protects_writes() {
        tracing::warn!(
            "open to any client that reaches this address (no tokens, no [server] allowed_hosts):              a web page can reach it through DNS rebinding; set tokens or allowed_hosts"
        );
    }
    let data = web::Data::from(state);
    let mut server = HttpServer::new(move || {
        let (metrics, guard) = (data.metrics.clone(), guard.clone());
        App::new()
            .app_data(data.clone())
            .wrap_fn(move |request, service| observed(&guard, metrics.clone(), request, service))
            .configure(api::routes)
    })
    .disable_signals()
    .shutdown_timeout(timeout)
    .client_request_timeout(client_request_timeout)
    // A client that closes its side is gone: drop its request (and its place in the queue).
    .h1_allow_half_closed(false)
    .listen(listener)?;
    if workers > 0 {
        server = server.workers(workers);
    }
    Ok(server.run())
}
