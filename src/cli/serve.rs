//! `deltaspace serve`: builds the server's options from the configuration and flags, binds, and
//! runs until Ctrl-C or SIGTERM, then drains in-flight requests.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::config::{Config, count};
use crate::secret::Secret;
use crate::server::{self, BatchLimits, Options, TuneLimits};

/// Arguments of `deltaspace serve`; each overrides its `[server]` or `[model]` key.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on, host:port [default: [server] bind].
    #[arg(long)]
    pub bind: Option<String>,
    /// Model directory [default: [model] dir].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Subspace file [default: [model] subspace].
    #[arg(long)]
    pub subspace: Option<PathBuf>,
    /// Directory of the SQLite task database when `[store] url` is empty [default: [server] data_dir].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

pub fn serve(config: &Config, args: ServeArgs) -> anyhow::Result<()> {
    let bind = args
        .bind
        .clone()
        .unwrap_or_else(|| config.server.bind.clone());
    let options = options(config, args)?;
    let listener = std::net::TcpListener::bind(&bind).with_context(|| format!("binding {bind}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(server::run(listener, options, shutdown_signal()))?;
    Ok(())
}

/// The server's options: `[server]`, `[model]`, `[runtime]` and `[store]`, with flags on top.
fn options(config: &Config, args: ServeArgs) -> anyhow::Result<Options> {
    let server = &config.server;
    let store = config.store_location(args.data_dir.as_deref())?;
    let seed_tasks_dir =
        (!server.seed_tasks_dir.as_os_str().is_empty()).then(|| server.seed_tasks_dir.clone());
    Ok(Options {
        runtime: config.runtime_options(),
        sessions: config.runtime.sessions,
        resident: config.runtime.resident,
        cuda_graphs: config.runtime.cuda_graphs,
        one_det_graphs: config.runtime.one_det_graphs,
        delta_cache_bytes: config.runtime.delta_cache_mb.saturating_mul(1 << 20),
        model_dir: args.model.unwrap_or_else(|| config.model.dir.clone()),
        subspace: args
            .subspace
            .unwrap_or_else(|| config.model.subspace.clone()),
        store,
        seed_tasks_dir,
        workers: server.workers,
        batch: BatchLimits {
            max_rows: count("server", "max_batch_rows", server.max_batch_rows)?,
            max_tokens: count("server", "max_batch_tokens", server.max_batch_tokens)?,
            max_wait: Duration::from_millis(server.max_wait_ms),
            queue_capacity: count("server", "queue_capacity", server.queue_capacity)?,
            concurrency: count("runtime", "sessions", config.runtime.sessions)?,
        },
        max_inputs: count("server", "max_inputs", server.max_inputs)?,
        max_body_bytes: count("server", "max_body_bytes", server.max_body_bytes)?,
        max_text_chars: count("server", "max_text_chars", server.max_text_chars)?,
        max_tasks: count("server", "max_tasks", server.max_tasks)?,
        task_limits: config.task_limits()?,
        tokens: server
            .tokens
            .expose()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(Secret::new)
            .collect(),
        protect_reads: server.protect_reads,
        allowed_hosts: config.allowed_hosts()?,
        shutdown_timeout: Duration::from_secs(server.shutdown_timeout_s),
        client_request_timeout: Duration::from_millis(server.client_request_timeout_ms),
        tune: TuneLimits {
            max_jobs: count("server", "max_tune_jobs", server.max_tune_jobs)?,
            max_queued: server.max_queued_tune_jobs,
            max_examples: count("server", "max_tune_examples", server.max_tune_examples)?,
            max_seconds: count("server", "max_tune_seconds", server.max_tune_seconds)?,
            run_rows: count("server", "tune_run_rows", server.tune_run_rows)?,
        },
        replica: match server.replica.trim() {
            "" => host_name(),
            name => name.to_string(),
        },
    })
}

/// This machine's name (a pod's name under Kubernetes), for `[server] replica`.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Completes on Ctrl-C or, on Unix, SIGTERM (what container runtimes send).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received");
}
