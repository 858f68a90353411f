//! Routes and the handlers that describe the server (info, health, metrics, OpenAPI), plus what
//! every handler shares. Task uploads and reads are in `tasks`, predictions and embeddings in
//! `predict`, the pure decoding of their bodies in `decode` (which fuzz/ also drives). Handlers
//! check authorization before reading a body, run blocking work off the HTTP workers, and fail
//! only with [`ApiError`]; docs/openapi.json describes the same routes.

pub(crate) mod decode;
mod jobs;
mod openapi;
mod predict;
mod tasks;

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::error::ApiError;
use super::store::StoredTask;
use super::{AppState, Core, Options};
use decode::RequestLimits;
use deltaspace_core::tuning::tune::{Start, upstream_unavailable};
use jobs::{cancel_job, get_job, list_jobs, tune};
use predict::{embed, predict};
use tasks::{delete_task, get_task, list_tasks, put_task};

/// The page at `/`: plain HTML and JavaScript, compiled into the binary.
const PAGE: &str = include_str!("../page/index.html");

pub(super) type State = web::Data<AppState>;

/// The route table. Every route answers other methods with 405 and an `Allow` header.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .service(
            web::resource("/v1/tasks")
                .route(web::get().to(list_tasks))
                .default_service(wrong_method("GET")),
        )
        .service(
            web::resource("/v1/tasks/{name}")
                .route(web::put().to(put_task))
                .route(web::get().to(get_task))
                .route(web::delete().to(delete_task))
                .default_service(wrong_method("PUT, GET, DELETE")),
        )
        .service(
            web::resource("/v1/tasks/{name}/predict")
                .route(web::post().to(predict))
                .default_service(wrong_method("POST")),
        )
        .service(
            web::resource("/v1/tasks/{name}/embed")
                .route(web::post().to(embed))
                .default_service(wrong_method("POST")),
        )
        .service(
            web::resource("/v1/tasks/{name}/tune")
                .route(web::post().to(tune))
                .default_service(wrong_method("POST")),
        )
        .service(
            web::resource("/v1/jobs/{id}")
                .route(web::get().to(get_job))
                .route(web::delete().to(cancel_job))
                .default_service(wrong_method("GET, DELETE")),
        );
    for (path, handler) in [
        ("/", web::get().to(page)),
        ("/v1/jobs", web::get().to(list_jobs)),
        ("/v1/info", web::get().to(info)),
        ("/health/live", web::get().to(live)),
        ("/health/ready", web::get().to(ready)),
        ("/metrics", web::get().to(metrics)),
        ("/openapi.json", web::get().to(openapi)),
    ] {
        config.service(
            web::resource(path)
                .route(handler)
                .default_service(wrong_method("GET")),
        );
    }
    config.default_service(web::to(not_found));
}

/// The answer of a route to a method it does not take: 405 with `Allow: allow`.
fn wrong_method(allow: &'static str) -> actix_web::Route {
    web::to(move |request: HttpRequest| async move {
        Err::<HttpResponse, _>(ApiError::MethodNotAllowed {
            method: request.method().to_string(),
            allow,
        })
    })
}

async fn info(state: State) -> Result<HttpResponse, ApiError> {
    let core = state.core()?;
    let manifest = core.encoder.manifest();
    let options = &state.options;
    Ok(HttpResponse::Ok().json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "model": {
            "name": manifest.name, "hidden": manifest.hidden(), "layers": manifest.config.layers,
            "max_seq_len": manifest.max_seq_len, "base_model_sha256": manifest.base_model_sha256,
        },
        "subspace": {"id": core.subspace.id(), "name": core.subspace.name(), "d": core.subspace.d()},
        "dets": manifest.dets.iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
        "execution_provider": core.serving.provider,
        "sessions": core.serving.sessions,
        "resident": core.serving.resident,
        "shared_threads": core.runtime.shares_threads(),
        "delta_cache": core.serving.deltas.as_ref().map(|deltas| deltas.stats()),
        "tasks": core.store.len(),
        "label_sets": core.store.label_sets().len(),
        "auth": {"writes": state.auth.protects_writes(), "reads": state.auth.protects_reads()},
        "limits": {
            "max_batch_rows": options.batch.max_rows,
            "max_batch_tokens": options.batch.max_tokens,
            "max_wait_ms": options.batch.max_wait.as_millis(),
            "queue_capacity": options.batch.queue_capacity,
            "max_inputs": options.max_inputs.min(options.batch.max_rows),
            "max_body_bytes": options.max_body_bytes,
            "max_text_chars": options.max_text_chars,
            "max_tasks": options.max_tasks,
            "max_z_norm": options.task_limits.max_z_norm,
            "max_labels": options.task_limits.max_labels,
            "max_label_chars": options.task_limits.max_label_chars,
            "max_head_bias": options.task_limits.max_head_bias,
            "max_tune_jobs": options.tune.max_jobs,
            "max_queued_tune_jobs": options.tune.max_queued,
            "max_tune_examples": options.tune.max_examples,
            "max_tune_seconds": options.tune.max_seconds,
            "tune_run_rows": options.tune.run_rows,
        },
    })))
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "live"}))
}

async fn ready(state: State) -> Result<HttpResponse, ApiError> {
    if state.ready() {
        // Ready while a shared store is down too: predictions are served from memory.
        let store = state.store_status.to_json();
        Ok(HttpResponse::Ok().json(json!({"status": "ready", "store": store})))
    } else if state.core.get().is_some() {
        Err(ApiError::ShuttingDown)
    } else {
        Err(ApiError::NotReady)
    }
}

async fn metrics(state: State) -> HttpResponse {
    if let Some(core) = state.core.get() {
        if let Some(deltas) = core.serving.deltas.as_ref() {
            state.metrics.observe_delta_cache(deltas.stats());
        }
        let sets = core.store.label_sets();
        (state.metrics).observe_label_sets(sets.len(), sets.embedded());
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

async fn openapi(state: State) -> HttpResponse {
    let sizes = state.core.get().map(|core| openapi::Sizes {
        d: core.subspace.d(),
        hidden: core.encoder.manifest().hidden(),
        subspace: [core.subspace.name().to_string(), core.subspace.id()],
        upstream_codes: upstream_unavailable(&[Start::Upstream], &core.subspace).is_none(),
    });
    HttpResponse::Ok().json(openapi::render(&state.options, sizes))
}

async fn not_found(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound(
        request.path().chars().take(200).collect(),
    ))
}

pub(super) fn find(core: &Core, name: &str) -> Result<Arc<StoredTask>, ApiError> {
    core.store
        .get(name)
        .ok_or_else(|| ApiError::TaskNotFound(name.chars().take(160).collect()))
}

/// Reads a body of at most `limit` bytes; it is parsed as JSON whatever its content type, so
/// `curl -d` works.
pub(super) async fn read_body(body: web::Payload, limit: usize) -> Result<web::Bytes, ApiError> {
    body.to_bytes_limited(limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(limit))?
        .map_err(|e| ApiError::InvalidJson(format!("reading the body: {e}")))
}

/// The bounds on predict and embed requests.
pub(super) fn request_limits(options: &Options) -> RequestLimits {
    RequestLimits {
        max_inputs: options.max_inputs.min(options.batch.max_rows),
        max_text_chars: options.max_text_chars,
    }
}
