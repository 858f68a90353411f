//! `deltaspace predict`, `embed` and `info`.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::json;

use super::{load_encoder, load_runtime, load_subspace};
use crate::classifier::{self, PreparedTask, TextRow};
use crate::config::Config;
use crate::det::DetKind;
use crate::model::{EncoderOptions, TextInput};
use crate::task::{Task, TaskError, TaskLimits};

/// Arguments of `deltaspace predict`.
#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// Model directory [default: [model] dir].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Subspace file [default: [model] subspace].
    #[arg(long)]
    pub subspace: Option<PathBuf>,
    /// The task: a TASK.json {name, det, z, labels: [{name, description}], subspace}.
    #[arg(long)]
    pub task: PathBuf,
    /// Decode z with this DET instead of the task's own (zero-shot transfer): lora, adapter, prefix.
    #[arg(long)]
    pub det: Option<DetKind>,
    /// Second text of every text on the command line, for pair tasks (entailment, paraphrase,
    /// ...); not with `-`, whose lines give their own.
    #[arg(long)]
    pub text_pair: Option<String>,
    /// Texts to classify; `-` reads JSON lines from stdin, each a string or {"text", "text_pair"}.
    #[arg(required = true)]
    pub texts: Vec<String>,
}

/// Arguments of `deltaspace embed`.
#[derive(Debug, clap::Args)]
pub struct EmbedArgs {
    /// Model directory [default: [model] dir].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Subspace file [default: [model] subspace]; only read with --task.
    #[arg(long)]
    pub subspace: Option<PathBuf>,
    /// Embed through this task's z and DET; without it, the frozen model (no delta).
    #[arg(long)]
    pub task: Option<PathBuf>,
    /// Decode the task's z with this DET instead of its own.
    #[arg(long, requires = "task")]
    pub det: Option<DetKind>,
    /// Second text of every text on the command line, for pair tasks; not with `-`.
    #[arg(long)]
    pub text_pair: Option<String>,
    /// Texts to embed; `-` reads JSON lines from stdin.
    #[arg(required = true)]
    pub texts: Vec<String>,
}

/// Arguments of `deltaspace info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Model directory [default: [model] dir].
    #[arg(long)]
    pub model: Option<PathBuf>,
}

pub fn predict(config: &Config, args: PredictArgs) -> anyhow::Result<()> {
    let inputs = read_inputs(&args.texts, args.text_pair.as_deref())?;
    let encoder = load_encoder(config, args.model.as_deref(), EncoderOptions::default())?;
    let subspace = load_subspace(config, args.subspace.as_deref(), &encoder)?;
    let task = load_task(&args.task, &subspace, &config.task_limits()?)?;
    let prepared = PreparedTask::prepare(task, &encoder)?;
    let predictions = classifier::predict(&encoder, &subspace, &prepared, args.det, &inputs)?;
    let mut out = std::io::stdout().lock();
    for (input, prediction) in inputs.iter().zip(predictions) {
        let line = json!({"text": input, "label": prediction.label, "score": prediction.score, "scores": prediction.scores});
        writeln!(out, "{line}")?;
    }
    Ok(())
}

pub fn embed(config: &Config, args: EmbedArgs) -> anyhow::Result<()> {
    let inputs = read_inputs(&args.texts, args.text_pair.as_deref())?;
    let encoder = load_encoder(config, args.model.as_deref(), EncoderOptions::default())?;
    let embeddings = match &args.task {
        Some(path) => {
            let subspace = load_subspace(config, args.subspace.as_deref(), &encoder)?;
            let task = load_task(path, &subspace, &config.task_limits()?)?;
            let det = args.det.unwrap_or(task.det);
            let rows: Vec<TextRow> = inputs
                .iter()
                .map(|input| TextRow {
                    input,
                    z: &task.z,
                    det,
                })
                .collect();
            classifier::embed_rows(&encoder, &subspace, &rows)?
        }
        None => encoder.embed_frozen(&inputs)?,
    };
    let mut out = std::io::stdout().lock();
    for (input, embedding) in inputs.iter().zip(embeddings.rows()) {
        writeln!(
            out,
            "{}",
            json!({"text": input, "embedding": embedding.to_vec()})
        )?;
    }
    Ok(())
}

pub fn info(config: &Config, args: InfoArgs) -> anyhow::Result<()> {
    // ONNX Runtime loads once per process: the encoder below uses this same library.
    let runtime = load_runtime(config)?;
    let encoder = load_encoder(config, args.model.as_deref(), EncoderOptions::default())?;
    let manifest = encoder.manifest();
    let dets: Vec<_> = manifest
        .dets
        .iter()
        .map(|d| json!({"name": d.name, "size": d.size, "hyper": d.hyper}))
        .collect();
    let info = json!({
        "model": manifest.name,
        "dir": encoder.dir(),
        "base_model_sha256": manifest.base_model_sha256,
        "layout_sha256": manifest.layout_sha256,
        "hidden": manifest.hidden(),
        "layers": manifest.config.layers,
        "max_seq_len": manifest.max_seq_len,
        "dets": dets,
        "execution_provider": encoder.provider(),
        "sessions": encoder.sessions(),
        "onnxruntime": runtime.library(),
    });
    let text = serde_json::to_string_pretty(&info)?;
    writeln!(std::io::stdout(), "{text}").context("writing stdout")?;
    Ok(())
}

/// Reads TASK.json and validates it against the loaded subspace and the configuration's bounds
/// (`[server]`'s, so a task the server accepts loads here too).
pub(super) fn load_task(
    path: &std::path::Path,
    subspace: &crate::subspace::Subspace,
    limits: &TaskLimits,
) -> anyhow::Result<Task> {
    let task = Task::load(path)?;
    if let Some(reference) = subspace.other(task.subspace.as_deref()) {
        return Err(TaskError::Subspace {
            task: reference.to_string(),
            loaded: subspace.id(),
        })
        .with_context(|| format!("task {}", path.display()));
    }
    task.validate(subspace.d(), limits)
        .with_context(|| format!("task {}", path.display()))?;
    Ok(task)
}

/// Positional texts, or JSON lines from stdin for `-`.
fn read_inputs(texts: &[String], text_pair: Option<&str>) -> anyhow::Result<Vec<TextInput>> {
    if text_pair.is_some() && texts.iter().any(|t| t == "-") {
        bail!(
            "--text-pair pairs the texts on the command line; lines read from stdin (-) give \
             their own: {{\"text\": ..., \"text_pair\": ...}}"
        );
    }
    let mut inputs = Vec::new();
    for text in texts {
        if text == "-" {
            for (number, line) in std::io::stdin().lock().lines().enumerate() {
                let line = line.context("reading stdin")?;
                if line.trim().is_empty() {
                    continue;
                }
                let input: TextInput = serde_json::from_str(&line).with_context(|| {
                    format!(
                        "stdin line {}: expected a JSON string or {{\"text\", \"text_pair\"}}",
                        number + 1
                    )
                })?;
                inputs.push(input);
            }
        } else {
            inputs.push(TextInput::pair(text.clone(), text_pair.map(str::to_string)));
        }
    }
    if inputs.is_empty() {
        bail!("no texts given");
    }
    Ok(inputs)
}
