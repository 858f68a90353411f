//! The edge: clap commands. Each command group has its own file; this one holds the global
//! options and the shared set-up (config, runtime, model, subspace).

mod eval;
mod export;
mod import;
mod landscape;
mod predict;
mod report;
mod serve;
mod subspace;
mod train;
mod tune;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::model::{Encoder, EncoderOptions};
use crate::runtime::{ProviderChoice, Runtime};
use crate::subspace::Subspace;

/// clap's parser for a count that must be at least `N` (`--batch 0` is an error, exit code 2,
/// not a silent 1).
fn at_least<const N: usize>(text: &str) -> Result<usize, String> {
    let value: usize = text.parse().map_err(|e| format!("{e}"))?;
    if value < N {
        return Err(format!("{value} is too small: at least {N}"));
    }
    Ok(value)
}

/// clap's parser for a finite number above 0 (learning rates, step sizes, seconds).
fn positive<T>(text: &str) -> Result<T, String>
where
    T: std::str::FromStr + Into<f64> + Copy,
    T::Err: std::fmt::Display,
{
    finite_number(text, |real| real > 0.0, "above 0")
}

/// clap's parser for a finite number of at least 0 (margins).
fn non_negative(text: &str) -> Result<f32, String> {
    finite_number(text, |real| real >= 0.0, "of at least 0")
}

/// A finite number that `allowed` accepts; the error says it is not one `bound`.
fn finite_number<T>(text: &str, allowed: fn(f64) -> bool, bound: &str) -> Result<T, String>
where
    T: std::str::FromStr + Into<f64> + Copy,
    T::Err: std::fmt::Display,
{
    let value: T = text.parse().map_err(|e: T::Err| format!("{e}"))?;
    let real: f64 = value.into();
    if !(real.is_finite() && allowed(real)) {
        return Err(format!("{text} is not a finite number {bound}"));
    }
    Ok(value)
}

/// Serve one frozen language model for many tasks, each task a tiny vector z in a unified
/// delta-tuning subspace.
#[derive(Debug, Parser)]
#[command(name = "deltaspace", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// Log more (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Configuration file [default: config/deltaspace.toml when present].
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Execution provider: auto, cuda or cpu (overrides the config file's runtime.provider).
    #[arg(long, global = true)]
    pub provider: Option<ProviderChoice>,
    /// ONNX Runtime intra-op threads (the shared pool's, else each session's), 0 = one per core (overrides the config file's runtime.intra_threads).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Classify texts with a task: one JSON line {text, label, score, scores} per text.
    Predict(predict::PredictArgs),
    /// Print embeddings: one JSON line {text, embedding} per text.
    Embed(predict::EmbedArgs),
    /// Make or inspect subspace artifacts.
    #[command(subcommand)]
    Subspace(subspace::SubspaceCommand),
    /// Describe a model export, the ONNX Runtime in use and its execution provider.
    Info(predict::InfoArgs),
    /// Serve every task over HTTP: uploads, predictions, embeddings, metrics (docs/API.md).
    Serve(serve::ServeArgs),
    /// Bulk-load tasks (TASK.json, JSON lines, directories) into the server's task database.
    Import(import::ImportArgs),
    /// Write every stored task as JSON lines (what `import` reads), from SQLite or PostgreSQL.
    Export(export::ExportArgs),
    /// Offline training: stage 0 (DETs in their original space) and stage 1 (the subspace).
    #[command(subcommand)]
    Train(train::TrainCommand),
    /// Stage 2: tune a new task's z (and head) in the subspace, U frozen, each DET tried and the
    /// best on dev kept.
    Tune(tune::TuneArgs),
    /// Score a task vector, a stage-0 solution, the frozen model or the linear probe on a split.
    Eval(eval::EvalArgs),
    /// Decode a task's z through every DET, zero-shot (subspace solution transfer).
    Transfer(eval::TransferArgs),
    /// Draw every DET's accuracy on a plane of the subspace, one heat map (PNG) per DET.
    Landscape(landscape::LandscapeArgs),
    /// Print the paper's tables (markdown, optionally JSON) from a results directory, or the
    /// comparison against a user's alternatives from quality.sh's lines.
    Report(report::ReportArgs),
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.global.config.as_deref())?;
    if let Some(provider) = cli.global.provider {
        config.runtime.provider = provider;
    }
    if let Some(threads) = cli.global.threads {
        config.runtime.intra_threads = threads;
    }
    match cli.command {
        Command::Predict(args) => predict::predict(&config, args),
        Command::Embed(args) => predict::embed(&config, args),
        Command::Subspace(command) => subspace::run(&config, command),
        Command::Info(args) => predict::info(&config, args),
        Command::Serve(args) => serve::serve(&config, args),
        Command::Import(args) => import::import(&config, args),
        Command::Export(args) => export::export(&config, args),
        Command::Train(command) => train::train(&config, command),
        Command::Tune(args) => tune::tune(&config, args),
        Command::Eval(args) => eval::eval(&config, args),
        Command::Transfer(args) => eval::transfer(&config, args),
        Command::Landscape(args) => landscape::landscape(&config, args),
        Command::Report(args) => report::report(args),
    }
}

/// Logs go to stderr, so JSON on stdout stays clean.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info,ort=warn",
        1 => "debug,ort=info",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Loads ONNX Runtime as configured.
fn load_runtime(config: &Config) -> anyhow::Result<Runtime> {
    Ok(Runtime::load(config.runtime_options())?)
}

/// Loads the model directory `dir` (or the configured one).
fn load_encoder(
    config: &Config,
    dir: Option<&Path>,
    options: EncoderOptions,
) -> anyhow::Result<Encoder> {
    let runtime = load_runtime(config)?;
    let dir = dir.unwrap_or(&config.model.dir);
    Encoder::load(&runtime, dir, &options)
        .with_context(|| format!("loading model {}", dir.display()))
}

/// Loads a subspace file (or the configured one) for the encoder's model.
fn load_subspace(
    config: &Config,
    path: Option<&Path>,
    encoder: &Encoder,
) -> anyhow::Result<Subspace> {
    let path = path.unwrap_or(&config.model.subspace);
    Subspace::load(path, encoder.manifest())
        .with_context(|| format!("loading subspace {}", path.display()))
}

/// Writes `value` to `path` as pretty JSON, whole or not at all (an output that fails leaves the
/// file that was there).
fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    crate::atomic_file::write(path, |out| std::io::Write::write_all(out, text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}
