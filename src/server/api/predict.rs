//! Prediction and embedding routes: check the request, size it in tokens, send its texts to the
//! batcher (where they share an encoder run with other tasks' rows), and score the result against
//! the task's cached label embeddings.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::{State, find, read_json};
use crate::classifier;
use crate::det::DetKind;
use crate::model::{LabelScore, TextInput};
use crate::server::auth::Access;
use crate::server::batcher::Cost;
use crate::server::error::ApiError;
use crate::server::store::StoredTask;
use crate::server::{AppState, Core};

/// `POST /v1/tasks/{name}/predict`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictRequest {
    inputs: Vec<TextInput>,
    /// Decode the task's z through this DET instead of its own.
    #[serde(default)]
    det: Option<String>,
    /// Keep only the best `top_k` labels in `scores`.
    #[serde(default)]
    top_k: Option<usize>,
}

/// `POST /v1/tasks/{name}/embed`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedRequest {
    inputs: Vec<TextInput>,
    #[serde(default)]
    det: Option<String>,
}

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
    let body: PredictRequest = read_json(body, state.options.max_body_bytes).await?;
    if body.top_k == Some(0) {
        return Err(ApiError::InvalidRequest("top_k must be at least 1".into()));
    }
    let core = state.core()?;
    let (stored, det, embeddings) = encode(&state, core, &name, body.inputs, body.det).await?;
    let logit_scale = core.encoder.manifest().logit_scale;
    let predictions: Vec<Prediction> =
        classifier::score(embeddings.view(), &stored.prepared, logit_scale)
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
        task: &stored.task().name,
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
    let body: EmbedRequest = read_json(body, state.options.max_body_bytes).await?;
    let core = state.core()?;
    let (stored, det, embeddings) = encode(&state, core, &name, body.inputs, body.det).await?;
    let rows: Vec<Vec<f32>> = embeddings.rows().into_iter().map(|r| r.to_vec()).collect();
    Ok(HttpResponse::Ok().json(Answer {
        task: &stored.task().name,
        generation: stored.generation,
        det,
        result: Embeddings { embeddings: rows },
    }))
}

/// Checks a predict/embed request and runs its texts through the batcher: [inputs, H].
async fn encode(
    state: &AppState,
    core: &Core,
    name: &str,
    inputs: Vec<TextInput>,
    det: Option<String>,
) -> Result<(Arc<StoredTask>, DetKind, Array2<f32>), ApiError> {
    let stored = find(core, name)?;
    let det = match det {
        Some(det) => det
            .parse::<DetKind>()
            .map_err(|e| ApiError::InvalidRequest(e.to_string()))?,
        None => stored.task().det,
    };
    det.column(core.encoder.manifest())
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let max_inputs = state.options.max_inputs.min(state.options.batch.max_rows);
    if inputs.is_empty() || inputs.len() > max_inputs {
        return Err(ApiError::InvalidRequest(format!(
            "inputs must hold 1-{max_inputs} texts, got {}",
            inputs.len()
        )));
    }
    // Tokenized here (cheap next to the model) only to size the request; the batch re-tokenizes.
    let seq_len = core
        .encoder
        .tokenize(&inputs)
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?
        .seq_len();
    let cost = Cost {
        rows: inputs.len(),
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
        .embed(Arc::from(name), inputs, stored.z.clone(), det, seq_len)
        .await?;
    Ok((stored, det, embeddings))
}
