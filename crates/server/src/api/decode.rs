//! Request decoding: the pure half of each handler, from body bytes (or a query string) to a
//! checked request, needing no model, store or network. The handlers call these, and so do the
//! cargo-fuzz targets in `fuzz/` and the test that replays their corpus, so what is fuzzed is
//! what serves.

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::jobs::{TuneLimits, TuneOrder};
use deltaspace_core::det::DetKind;
use deltaspace_core::model::TextInput;
use deltaspace_core::task::{Head, Label, Task, TaskLimits, validate_labels};
use deltaspace_core::tuning::data::Example;
use deltaspace_core::tuning::tune::{Start, TUNING};

/// Tasks per page of `GET /v1/tasks` unless `limit` says otherwise.
pub const PAGE_DEFAULT: usize = 100;
/// The most tasks a `limit` may ask for.
pub const PAGE_MAX: usize = 1000;

/// The bounds a predict or embed request is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Most texts in one request (already capped at the batch's rows).
    pub max_inputs: usize,
    /// Longest text (or text_pair), in characters.
    pub max_text_chars: usize,
}

/// `POST /v1/tasks/{name}/predict`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    pub inputs: Vec<TextInput>,
    /// Decode the task's z through this DET instead of its own.
    #[serde(default)]
    pub det: Option<String>,
    /// Keep only the best `top_k` labels in `scores`.
    #[serde(default, deserialize_with = "integral")]
    pub top_k: Option<usize>,
}

/// An optional non-negative integer up to `u32::MAX` (a count), also written as an integral number
/// such as `251.0`: JSON Schema counts that as an integer, so the OpenAPI description allows it.
fn integral<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<usize>, D::Error> {
    integral_at_most(deserializer, u32::MAX as usize)
}

/// [`integral`] for a seed: up to 2^53 − 1, the largest integer every JSON parser reads exactly.
fn seed<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<usize>, D::Error> {
    integral_at_most(deserializer, MAX_TUNE_SEED)
}

fn integral_at_most<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
    max: usize,
) -> Result<Option<usize>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let value = match (number.as_u64(), number.as_f64()) {
        (Some(value), _) => usize::try_from(value).ok(),
        (None, Some(value)) if value >= 0.0 && value.fract() == 0.0 && value <= max as f64 => {
            Some(value as usize)
        }
        _ => None,
    };
    match value.filter(|&v| v <= max) {
        Some(value) => Ok(Some(value)),
        None => Err(serde::de::Error::custom(format!(
            "expected an integer from 0 to {max}, got {number}"
        ))),
    }
}

/// `POST /v1/tasks/{name}/embed`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    pub inputs: Vec<TextInput>,
    #[serde(default)]
    pub det: Option<String>,
}

/// `PUT /v1/tasks/{name}`: the body of a task upload (the name comes from the path).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskBody {
    /// Optional; must equal the path's name when given.
    #[serde(default)]
    pub name: Option<String>,
    pub det: String,
    pub z: Vec<f32>,
    pub labels: Vec<Label>,
    /// Class priors and tuned prototypes (optional).
    #[serde(default)]
    pub head: Option<Head>,
    #[serde(default)]
    pub subspace: Option<String>,
}

/// `POST /v1/tasks/{name}/tune`: labeled examples for a new task.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuneRequest {
    pub labels: Vec<Label>,
    pub examples: Vec<LabeledText>,
    /// Tune through this DET only (default: every DET, keeping the best on dev).
    #[serde(default)]
    pub det: Option<String>,
    /// Examples for early stopping and the choice of DET (default: held out of `examples`).
    #[serde(default)]
    pub dev_examples: Option<Vec<LabeledText>>,
    /// Examples scored once at the end, for the job's `test_accuracy`.
    #[serde(default)]
    pub test_examples: Option<Vec<LabeledText>>,
    #[serde(default)]
    pub budget: Option<Budget>,
    #[serde(default, deserialize_with = "seed")]
    pub seed: Option<usize>,
    /// Where z starts, as `tune --init`: "normal" (N(0, 0.02²)), "upstream" (the code of the
    /// upstream task whose label descriptions are nearest), or both: tuned from each, keeping the
    /// better on dev [default: both where the subspace carries described upstream codes, normal
    /// elsewhere].
    #[serde(default)]
    pub init: Option<Vec<String>>,
}

/// The largest seed a tune request takes: 2^53 − 1, the largest integer every JSON parser reads
/// exactly.
pub const MAX_TUNE_SEED: usize = (1 << 53) - 1;

/// One labeled example of a tune request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabeledText {
    pub text: String,
    #[serde(default)]
    pub text_pair: Option<String>,
    pub label: String,
}

/// How long a tune job may train.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    #[serde(default, deserialize_with = "integral")]
    pub steps: Option<usize>,
    #[serde(default)]
    pub seconds: Option<f64>,
    /// Early stopping, as `deltaspace tune --patience`: evaluations without improvement before
    /// a DET stops (a perfect dev accuracy stops it at once); 0 never stops early.
    #[serde(default, deserialize_with = "integral")]
    pub patience: Option<usize>,
}

/// The most optimizer steps a tune request may ask for.
pub const MAX_TUNE_STEPS: usize = 10_000;

/// The seed of a tune request that gives none (the CLI's default too).
pub const DEFAULT_TUNE_SEED: usize = 42;

/// `GET /v1/tasks` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    after: Option<String>,
}

/// Parses a JSON body of the route's shape (unknown fields refused).
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::InvalidJson(format!("the body: {e}")))
}

impl PredictRequest {
    /// Parses and checks a predict body: inputs, `top_k` and `det`.
    pub fn decode(
        bytes: &[u8],
        limits: &RequestLimits,
    ) -> Result<(Self, Option<DetKind>), ApiError> {
        let request: Self = decode_json(bytes)?;
        if request.top_k == Some(0) {
            return Err(ApiError::InvalidRequest("top_k must be at least 1".into()));
        }
        check_inputs(&request.inputs, limits)?;
        let det = parse_det(request.det.as_deref())?;
        Ok((request, det))
    }
}

impl EmbedRequest {
    /// Parses and checks an embed body: inputs and `det`.
    pub fn decode(
        bytes: &[u8],
        limits: &RequestLimits,
    ) -> Result<(Self, Option<DetKind>), ApiError> {
        let request: Self = decode_json(bytes)?;
        check_inputs(&request.inputs, limits)?;
        let det = parse_det(request.det.as_deref())?;
        Ok((request, det))
    }
}

impl TaskBody {
    /// Parses an upload body into the task it names (validated later, against the subspace).
    pub fn decode(bytes: &[u8], name: &str) -> Result<Task, ApiError> {
        let body: Self = decode_json(bytes)?;
        if body.name.as_deref().is_some_and(|n| n != name) {
            return Err(ApiError::InvalidTask(format!(
                "the body names task {:?} but the path names {name:?}",
                body.name.unwrap_or_default()
            )));
        }
        let det: DetKind = body
            .det
            .parse()
            .map_err(|e: deltaspace_core::det::DetError| ApiError::InvalidTask(e.to_string()))?;
        Ok(Task {
            name: name.to_string(),
            det,
            z: body.z,
            labels: body.labels,
            head: body.head,
            subspace: body.subspace,
        })
    }
}

impl TuneRequest {
    /// Parses and checks a tune body: labels, every example's text and label, the sizes and
    /// the budget, so that an accepted job can only fail for reasons the client could not see.
    /// Without `init`, z starts from `default_starts` (the subspace's [`default_starts`]).
    ///
    /// [`default_starts`]: deltaspace_core::tuning::tune::default_starts
    pub fn decode(
        bytes: &[u8],
        limits: &TuneLimits,
        max_text_chars: usize,
        task_limits: &TaskLimits,
        default_starts: &[Start<'static>],
    ) -> Result<TuneOrder, ApiError> {
        let request: Self = decode_json(bytes)?;
        validate_labels(&request.labels, task_limits)
            .map_err(|e| ApiError::InvalidTune(format!("labels: {e}")))?;
        let total = request.examples.len()
            + request.dev_examples.as_ref().map_or(0, Vec::len)
            + request.test_examples.as_ref().map_or(0, Vec::len);
        if total > limits.max_examples {
            return Err(ApiError::InvalidTune(format!(
                "{total} examples in all; the limit is max_tune_examples = {}",
                limits.max_examples
            )));
        }
        let examples = |field: &str, list: Vec<LabeledText>| {
            if list.is_empty() {
                return Err(ApiError::InvalidTune(format!(
                    "{field} is empty; give at least one example per label"
                )));
            }
            list.into_iter()
                .enumerate()
                .map(|(index, example)| {
                    example.check(
                        &format!("{field}[{index}]"),
                        &request.labels,
                        max_text_chars,
                    )
                })
                .collect::<Result<Vec<Example>, ApiError>>()
        };
        let train = examples("examples", request.examples)?;
        if let Some(missing) =
            (0..request.labels.len()).find(|&label| !train.iter().any(|e| e.label == label))
        {
            return Err(ApiError::InvalidTune(format!(
                "label {:?} has no example in examples",
                request.labels[missing].name
            )));
        }
        let dev = request
            .dev_examples
            .map(|list| examples("dev_examples", list))
            .transpose()?;
        // Held out from examples: a share of each label's, never its last one.
        let mut per_label = vec![0usize; request.labels.len()];
        train.iter().for_each(|e| per_label[e.label] += 1);
        if dev.is_none() && per_label.iter().all(|&n| n < 2) {
            return Err(ApiError::InvalidTune(
                "examples: without dev_examples, dev is held out from examples (a fifth of each \
                 label's, never its last), and one example per label leaves none; give a label \
                 at least 2 examples, or dev_examples"
                    .into(),
            ));
        }
        let test = request
            .test_examples
            .map(|list| examples("test_examples", list))
            .transpose()?
            .unwrap_or_default();
        let budget = request.budget.unwrap_or_default();
        let steps = budget.steps.unwrap_or(TUNING.steps);
        if !(1..=MAX_TUNE_STEPS).contains(&steps) {
            return Err(ApiError::InvalidTune(format!(
                "budget.steps must be 1-{MAX_TUNE_STEPS}, got {steps}"
            )));
        }
        let max_seconds = limits.max_seconds as f64;
        let seconds = budget.seconds.unwrap_or(max_seconds);
        if !(seconds > 0.0 && seconds <= max_seconds) {
            return Err(ApiError::InvalidTune(format!(
                "budget.seconds must be above 0 and at most max_tune_seconds = {max_seconds}, got {seconds}"
            )));
        }
        let seed = request.seed.unwrap_or(DEFAULT_TUNE_SEED);
        let det = request
            .det
            .map(|det| det.parse::<DetKind>())
            .transpose()
            .map_err(|e| ApiError::InvalidTune(e.to_string()))?;
        let starts = match request.init {
            Some(init) => decode_starts(&init)?,
            None => default_starts.to_vec(),
        };
        Ok(TuneOrder {
            starts,
            labels: request.labels,
            train,
            dev,
            test,
            det,
            steps,
            seconds,
            patience: budget.patience.unwrap_or(TUNING.patience),
            seed: seed as u64,
        })
    }
}

/// A tune request's `init`: one or both of "normal" and "upstream", each once.
fn decode_starts(init: &[String]) -> Result<Vec<Start<'static>>, ApiError> {
    if !(1..=2).contains(&init.len()) {
        return Err(ApiError::InvalidTune(format!(
            "init must name 1 or 2 starts (normal, upstream), got {}",
            init.len()
        )));
    }
    let mut starts = Vec::new();
    for (index, name) in init.iter().enumerate() {
        let start = Start::named(name).ok_or_else(|| {
            ApiError::InvalidTune(format!(
                "init[{index}]: {name:?} is not a start; give normal or upstream"
            ))
        })?;
        if starts.contains(&start) {
            return Err(ApiError::InvalidTune(format!(
                "init[{index}]: {name:?} is given twice"
            )));
        }
        starts.push(start);
    }
    Ok(starts)
}

impl LabeledText {
    /// The example, its texts checked as predict inputs are and its label found in `labels`.
    fn check(self, at: &str, labels: &[Label], max_text_chars: usize) -> Result<Example, ApiError> {
        let Some(label) = labels.iter().position(|l| l.name == self.label) else {
            return Err(ApiError::InvalidTune(format!(
                "{at}: label {:?} is not one of the labels",
                self.label
            )));
        };
        let input = TextInput::pair(self.text, self.text_pair);
        check_text(at, &input, max_text_chars).map_err(|e| ApiError::InvalidTune(e.to_string()))?;
        Ok(Example { input, label })
    }
}

/// `GET /v1/tasks?limit=&after=`: the cursor and the page size.
pub fn decode_page_query(query: &str) -> Result<(Option<String>, usize), ApiError> {
    let query = actix_web::web::Query::<ListQuery>::from_query(query)
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let limit = query.limit.unwrap_or(PAGE_DEFAULT);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(ApiError::InvalidRequest(format!(
            "limit must be 1-{PAGE_MAX}"
        )));
    }
    Ok((query.into_inner().after, limit))
}

/// 1 to `max_inputs` texts, each (and each text_pair) non-blank and at most `max_text_chars`.
pub fn check_inputs(inputs: &[TextInput], limits: &RequestLimits) -> Result<(), ApiError> {
    if inputs.is_empty() || inputs.len() > limits.max_inputs {
        return Err(ApiError::InvalidRequest(format!(
            "inputs must hold 1-{} texts, got {}",
            limits.max_inputs,
            inputs.len()
        )));
    }
    for (index, input) in inputs.iter().enumerate() {
        check_text(&format!("inputs[{index}]"), input, limits.max_text_chars)?;
    }
    Ok(())
}

/// An input's text (and text_pair) non-blank and at most `max_text_chars`; `at` names it.
fn check_text(at: &str, input: &TextInput, max_text_chars: usize) -> Result<(), ApiError> {
    let texts = [
        ("text", Some(input.text())),
        ("text_pair", input.text_pair()),
    ];
    for (field, text) in texts {
        let Some(text) = text else { continue };
        if text.trim().is_empty() {
            return Err(ApiError::InvalidRequest(format!("{at}: {field} is empty")));
        }
        // Counting stops past the limit, so a huge text costs no more than a long one.
        if text.chars().nth(max_text_chars).is_some() {
            return Err(ApiError::InvalidRequest(format!(
                "{at}: {field} is longer than max_text_chars = {max_text_chars}"
            )));
        }
    }
    Ok(())
}

/// The DET a request asks for, if any.
fn parse_det(det: Option<&str>) -> Result<Option<DetKind>, ApiError> {
    det.map(|det| {
        det.parse::<DetKind>()
            .map_err(|e| ApiError::InvalidRequest(e.to_string()))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RequestLimits = RequestLimits {
        max_inputs: 2,
        max_text_chars: 5,
    };

    fn predict(body: &str) -> Result<(PredictRequest, Option<DetKind>), ApiError> {
        PredictRequest::decode(body.as_bytes(), &LIMITS)
    }

    #[test]
    fn predict_bodies_are_checked_before_any_work() {
        let (request, det) =
            predict(r#"{"inputs": ["hello"], "det": "prefix", "top_k": 1}"#).unwrap();
        assert_eq!(request.inputs.len(), 1);
        assert_eq!(det, Some(DetKind::Prefix));
        let pair = r#"{"inputs": [{"text": "a", "text_pair": "b"}]}"#;
        assert!(predict(pair).is_ok());
        for (body, code) in [
            ("{", "invalid_json"),
            (r#"{"inputs": ["a"], "extra": 1}"#, "invalid_json"),
            (r#"{"inputs": []}"#, "invalid_request"),
            (r#"{"inputs": ["a", "b", "c"]}"#, "invalid_request"),
            (r#"{"inputs": [" "]}"#, "invalid_request"),
            (r#"{"inputs": ["sixsix"]}"#, "invalid_request"),
            (
                r#"{"inputs": [{"text": "a", "text_pair": ""}]}"#,
                "invalid_request",
            ),
            (r#"{"inputs": ["a"], "top_k": 0}"#, "invalid_request"),
            (r#"{"inputs": ["a"], "det": "LORA"}"#, "invalid_request"),
        ] {
            assert_eq!(predict(body).unwrap_err().code(), code, "{body}");
        }
        // Five characters, not five bytes.
        assert!(predict(r#"{"inputs": ["ééééé"]}"#).is_ok());
        // An integral number is an integer, as JSON Schema counts; a fraction is not.
        let (request, _) = predict(r#"{"inputs": ["a"], "top_k": 251.0}"#).unwrap();
        assert_eq!(request.top_k, Some(251));
        for bad in ["1.5", "-1", "\"2\""] {
            let body = format!(r#"{{"inputs": ["a"], "top_k": {bad}}}"#);
            assert_eq!(predict(&body).unwrap_err().code(), "invalid_json", "{body}");
        }
    }

    #[test]
    fn task_bodies_and_page_queries() {
        let body = br#"{"det": "lora", "z": [1], "labels": [], "name": "t"}"#;
        assert_eq!(TaskBody::decode(body, "t").unwrap().det, DetKind::Lora);
        assert_eq!(
            TaskBody::decode(body, "u").unwrap_err().code(),
            "invalid_task"
        );
        assert_eq!(decode_page_query("").unwrap(), (None, PAGE_DEFAULT));
        assert_eq!(
            decode_page_query("limit=5&after=b").unwrap(),
            (Some("b".into()), 5)
        );
        for bad in ["limit=0", "limit=1001", "limit=x", "limit=1&limit=2", "x=1"] {
            assert!(decode_page_query(bad).is_err(), "{bad}");
        }
    }
}
