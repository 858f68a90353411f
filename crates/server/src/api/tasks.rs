//! Task routes: create or replace (`If-Match` / `If-None-Match` guarded), read, list by pages,
//! delete. An upload is validated, its labels embedded (reused when unchanged), and acknowledged
//! only once committed.

use std::sync::Arc;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use super::decode::{TaskBody, decode_page_query};
use super::{State, find, read_body};
use crate::AppState;
use crate::admit::{admit, commit};
use crate::auth::Access;
use crate::error::ApiError;
use crate::error::blocking;
use crate::store::{Precondition, StoredTask};
use deltaspace_core::det::DetKind;
use deltaspace_core::task::{Head, Label, validate_name};

/// `PUT /v1/tasks/{name}` answer.
#[derive(Debug, Serialize)]
struct TaskWritten<'a> {
    name: &'a str,
    generation: u64,
    etag: &'a str,
}

/// `GET /v1/tasks/{name}` answer.
#[derive(Debug, Serialize)]
struct TaskView<'a> {
    name: &'a str,
    det: DetKind,
    z: Vec<f32>,
    labels: &'a [Label],
    #[serde(skip_serializing_if = "Option::is_none")]
    head: Option<Head>,
    subspace: Option<&'a str>,
    generation: u64,
    etag: &'a str,
    updated_at_ms: i64,
}

/// One task of a `GET /v1/tasks` page.
#[derive(Debug, Serialize)]
struct TaskSummary<'a> {
    name: &'a str,
    det: DetKind,
    labels: Vec<&'a str>,
    generation: u64,
    etag: &'a str,
    updated_at_ms: i64,
}

/// `GET /v1/tasks` answer.
#[derive(Debug, Serialize)]
struct TaskPage<'a> {
    tasks: Vec<TaskSummary<'a>>,
    /// Pass as `after` for the next page; `null` on the last.
    next: Option<String>,
}

pub(super) async fn put_task(
    request: HttpRequest,
    state: State,
    name: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let result = upload(&request, &state, &name, body).await;
    let outcome = match &result {
        Ok((_, true)) => "created",
        Ok((_, false)) => "replaced",
        Err(ApiError::Unauthorized) => "unauthorized",
        Err(ApiError::EtagMismatch(_) | ApiError::TooManyTasks(_)) => "conflict",
        Err(
            ApiError::InvalidJson(_)
            | ApiError::InvalidTask(_)
            | ApiError::InvalidRequest(_)
            | ApiError::PayloadTooLarge(_),
        ) => "invalid",
        Err(_) => "error",
    };
    state.metrics.upload(outcome);
    let (stored, created) = result?;
    state
        .metrics
        .tasks_registered
        .set(state.core()?.store.len() as i64);
    let mut response = if created {
        let mut created = HttpResponse::Created();
        created.insert_header((header::LOCATION, format!("/v1/tasks/{}", *name)));
        created
    } else {
        HttpResponse::Ok()
    };
    Ok(response
        .insert_header(etag_header(&stored.etag))
        .json(TaskWritten {
            name: &stored.name,
            generation: stored.generation,
            etag: &stored.etag,
        }))
}

async fn upload(
    request: &HttpRequest,
    state: &AppState,
    name: &str,
    body: web::Payload,
) -> Result<(Arc<StoredTask>, bool), ApiError> {
    state.auth.require(request, Access::Write)?;
    let core = state.core()?;
    validate_name(name)?;
    let expect = precondition(request)?;
    let bytes = read_body(body, state.options.max_body_bytes).await?;
    let task = TaskBody::decode(&bytes, name)?;
    let task = admit(
        task,
        core.encoder.manifest(),
        &core.subspace,
        &state.options.task_limits,
    )?;
    let core = core.clone();
    blocking(move || commit(&core, task, &expect)).await
}

pub(super) async fn get_task(
    request: HttpRequest,
    state: State,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.auth.require(&request, Access::Read)?;
    let core = state.core()?;
    let stored = find(core, &name)?;
    Ok(HttpResponse::Ok()
        .insert_header(etag_header(&stored.etag))
        .json(TaskView {
            name: &stored.name,
            det: stored.det,
            z: stored.z.to_vec(),
            labels: &stored.labels.labels,
            head: stored.head.as_ref().map(|h| h.to_head()),
            subspace: Some(&core.subspace.id()),
            generation: stored.generation,
            etag: &stored.etag,
            updated_at_ms: stored.updated_at_ms,
        }))
}

pub(super) async fn list_tasks(
    request: HttpRequest,
    state: State,
) -> Result<HttpResponse, ApiError> {
    state.auth.require(&request, Access::Read)?;
    let (after, limit) = decode_page_query(request.query_string())?;
    let (page, next) = state.core()?.store.page(after.as_deref(), limit);
    let tasks = page
        .iter()
        .map(|stored| TaskSummary {
            name: &stored.name,
            det: stored.det,
            labels: stored
                .labels
                .labels
                .iter()
                .map(|l| l.name.as_str())
                .collect(),
            generation: stored.generation,
            etag: &stored.etag,
            updated_at_ms: stored.updated_at_ms,
        })
        .collect();
    Ok(HttpResponse::Ok().json(TaskPage { tasks, next }))
}

pub(super) async fn delete_task(
    request: HttpRequest,
    state: State,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.auth.require(&request, Access::Write)?;
    let core = state.core()?;
    let expect = precondition(&request)?;
    let (store, subspace_id) = (core.store.clone(), core.subspace.id());
    let name = name.into_inner();
    blocking(move || Ok(store.delete(&name, &subspace_id, &expect)?)).await?;
    state.metrics.tasks_registered.set(core.store.len() as i64);
    Ok(HttpResponse::NoContent().finish())
}

/// `If-Match: "etag"` or `*`, or `If-None-Match: *`.
pub(super) fn precondition(request: &HttpRequest) -> Result<Precondition, ApiError> {
    let header_text = |name: header::HeaderName| {
        request
            .headers()
            .get(&name)
            .map(|v| {
                v.to_str()
                    .map(str::trim)
                    .map_err(|_| ApiError::InvalidRequest(format!("{name} is not text")))
            })
            .transpose()
    };
    if let Some(value) = header_text(header::IF_MATCH)? {
        if value == "*" {
            return Ok(Precondition::Exists);
        }
        if value.contains(',') {
            return Err(ApiError::InvalidRequest(
                "If-Match takes one etag or `*`, not a list".into(),
            ));
        }
        // A weak etag is taken as the strong one it weakens (proxies weaken them on compression).
        let etag = value.trim_start_matches("W/").trim_matches('"');
        return Ok(Precondition::Etag(etag.to_string()));
    }
    match header_text(header::IF_NONE_MATCH)? {
        Some("*") => Ok(Precondition::Absent),
        Some(_) => Err(ApiError::InvalidRequest(
            "only `If-None-Match: *` is supported on writes".into(),
        )),
        None => Ok(Precondition::None),
    }
}

fn etag_header(etag: &str) -> (header::HeaderName, HeaderValue) {
    let value = HeaderValue::from_str(&format!("\"{etag}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("\"\""));
    (header::ETAG, value)
}
