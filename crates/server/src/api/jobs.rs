//! Tune job routes: `POST /v1/tasks/{name}/tune` accepts labeled examples and answers 202 with the
//! job; `GET /v1/jobs/{id}` follows it, `GET /v1/jobs` lists jobs by pages, newest first, and
//! `DELETE /v1/jobs/{id}` cancels one. The jobs themselves run in `crate::jobs`.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use super::decode::{TuneRequest, decode_page_query};
use super::tasks::precondition;
use super::{State, read_body};
use crate::auth::Access;
use crate::error::ApiError;
use crate::store::JobRecord;
use deltaspace_core::task::validate_name;
use deltaspace_core::tuning::tune::{default_starts, upstream_unavailable};

/// `POST /v1/tasks/{name}/tune` answer.
#[derive(Debug, Serialize)]
struct JobAccepted<'a> {
    job: &'a str,
    status_url: &'a str,
}

/// `GET /v1/jobs` answer.
#[derive(Debug, Serialize)]
struct JobPage {
    jobs: Vec<JobRecord>,
    /// Pass as `after` for the next page; `null` on the last.
    next: Option<String>,
}

pub(super) async fn tune(
    request: HttpRequest,
    state: State,
    name: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    state.auth.require(&request, Access::Write)?;
    let core = state.core()?;
    validate_name(&name)?;
    let expect = precondition(&request)?;
    let bytes = read_body(body, state.options.max_body_bytes).await?;
    let options = &state.options;
    let order = TuneRequest::decode(
        &bytes,
        &options.tune,
        options.max_text_chars,
        &options.task_limits,
        default_starts(&core.subspace, true),
    )?;
    if let Some(reason) = upstream_unavailable(&order.starts, &core.subspace) {
        return Err(ApiError::InvalidTune(format!(
            "init: \"upstream\" cannot start here: {reason}"
        )));
    }
    // A precondition or a full store that fails now fails at once, not after the budget; the job
    // checks both again when it serves. A shared store is checked then only: this replica may not
    // yet have another's latest write.
    if !core.store.shared() {
        let current = core.store.get(&name);
        expect.check(&name, current.as_ref().map(|c| c.etag.as_str()))?;
        if current.is_none() {
            // Jobs queued or running for other new names will take room first.
            let mut creating = state.jobs.creating(&core.store);
            creating.insert(name.to_string());
            core.store.check_room(creating.len())?;
        }
    }
    let record = state.jobs.submit(core, &name, order, expect).await?;
    let status_url = format!("/v1/jobs/{}", record.job);
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, status_url.clone()))
        .json(JobAccepted {
            job: &record.job,
            status_url: &status_url,
        }))
}

pub(super) async fn get_job(
    request: HttpRequest,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.auth.require(&request, Access::Read)?;
    let core = state.core()?;
    Ok(HttpResponse::Ok().json(state.jobs.get(&core.store, &id).await?))
}

pub(super) async fn list_jobs(
    request: HttpRequest,
    state: State,
) -> Result<HttpResponse, ApiError> {
    state.auth.require(&request, Access::Read)?;
    let core = state.core()?;
    let (after, limit) = decode_page_query(request.query_string())?;
    let (jobs, next) = state.jobs.page(&core.store, after, limit).await?;
    Ok(HttpResponse::Ok().json(JobPage { jobs, next }))
}

pub(super) async fn cancel_job(
    request: HttpRequest,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.auth.require(&request, Access::Write)?;
    let core = state.core()?;
    Ok(HttpResponse::Ok().json(state.jobs.cancel(&core.store, &id).await?))
}
