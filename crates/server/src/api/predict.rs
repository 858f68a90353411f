//! Prediction and embedding routes: check the request, size it in tokens, send its texts to the
//! batcher (where they share an encoder run with other tasks' rows), and score the result against
//! the task's cached label embeddings.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use ndarray::Array2;
use serde::Serialize;

use super::decode::{EmbedRequest, PredictRequest};
use super::{State, find, read_body, request_limits};
use crate::auth::Access;
use crate::batcher::Cost;
use crate::error::{ApiError, blocking};
use crate::store::StoredTask;
use crate::{AppState, Core};
use deltaspace_core::classifier;
use deltaspace_core::det::DetKind;
use deltaspace_core::model::{LabelScore, TextInput};

/// One input's labels, best first.
#[derive(Debug, Serialize)]
struct Prediction {
    label: String,
    score: f32,
    scores: Vec<LabelScore>,
}

/// `POST /v1/tasks/{name}/predict` and `/embed` answers.
#[derive(Debug, Serialize)]
struct Answer<'a, T> {
    task: &'a str,
    generation: u64,
    det: DetKind,
    #[serde(flatten)]
    result: T,
}

#[derive(Debug, Serialize)]
struct Predictions {
    predictions: Vec<Prediction>,
}

#[derive(Debug, Serialize)]
struct Embeddings {
    embeddings: Vec<Vec<f32>>,
}

pub(super) async fn predict(
    request: HttpRequest,
    state: State,
    name: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    state.auth.require(&request, Access::Read)?;
    let bytes = read_body(body, state.options.max_body_bytes).await?;
    let (body, det) = PredictRequest::decode(&bytes, &request_limits(&state.options))?;
    let core = state.core()?;
    let (stored, det, embeddings) = encode(&state, core, &name, body.inputs, det).await?;
    let logit_scale = core.encoder.manifest().logit_scale;
    let ranked = match &stored.head {
        Some(head) => head.classes(&stored.labels.embeddings).score(
            embeddings.view(),
            &stored.labels.names(),
            logit_scale,
        ),
        None => classifier::score(embeddings.view(), &stored.labels, logit_scale),
    };
    let predictions: Vec<Prediction> = ranked
        .into_iter()
        .map(|mut ranked| {
            ranked.scores.truncate(body.top_k.unwrap_or(usize::MAX));
            Prediction {
                label: ranked.label,
                score: ranked.score,
                scores: ranked.scores,
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(Answer {
        task: &stored.name,
        generation: stored.generation,
        det,
        result: Predictions { predictions },
    }))
}

pub(super) async fn embed(
    request: HttpRequest,
    state: State,
    name: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    state.auth.require(&request, Access::Read)?;
    let bytes = read_body(body, state.options.max_body_bytes).await?;
    let (body, det) = EmbedRequest::decode(&bytes, &request_limits(&state.options))?;
    let core = state.core()?;
    let (stored, det, embeddings) = encode(&state, core, &name, body.inputs, det).await?;
    let rows: Vec<Vec<f32>> = embeddings.rows().into_iter().map(|r| r.to_vec()).collect();
    Ok(HttpResponse::Ok().json(Answer {
        task: &stored.name,
        generation: stored.generation,
        det,
        result: Embeddings { embeddings: rows },
    }))
}

/// Runs a decoded predict/embed request's texts through the batcher: [inputs, H].
async fn encode(
    state: &AppState,
    core: &Core,
    name: &str,
    inputs: Vec<TextInput>,
    det: Option<DetKind>,
) -> Result<(Arc<StoredTask>, DetKind, Array2<f32>), ApiError> {
    let stored = find(core, name)?;
    let det = det.unwrap_or(stored.det);
    det.column(core.encoder.manifest())
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    // Tokenized once, here: the tokens size the request and travel with it into the batch. Off
    // the HTTP worker, as a request's texts may come to megabytes.
    let encoder = Arc::clone(&core.encoder);
    let tokens = blocking(move || {
        (encoder.tokenize(&inputs)).map_err(|e| ApiError::InvalidRequest(e.to_string()))
    })
    .await?;
    let seq_len = tokens.seq_len();
    let cost = Cost {
        rows: tokens.rows(),
        seq_len,
    };
    let max_tokens = state.options.batch.max_tokens;
    if cost.tokens() > max_tokens {
        return Err(ApiError::InvalidRequest(format!(
            "{} texts padded to {seq_len} tokens exceed max_batch_tokens = {max_tokens}; send fewer",
            cost.rows
        )));
    }
    let embeddings = core
        .batcher
        .embed(Arc::from(name), tokens, stored.z.to_vec().into(), det)
        .await?;
    Ok((stored, det, embeddings))
}
