//! Layer 0: ONNX Runtime, and nothing above it.
//!
//! Owns finding the shared library (`ort` is built with `load-dynamic`), the one process-wide
//! [`ort::environment::Environment`], the choice of execution provider, and [`SessionPool`].
//! Must not import any other deltaspace module.

mod pool;

pub use pool::{Pool, SessionPool};

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};

/// The library file `ort` looks for, and the name the set-up script gives it.
const LIBRARY_FILE: &str = "libonnxruntime.so";
/// Where `scripts/setup-ort.sh` puts the library, relative to the repository root.
const REPO_LIBRARY_DIR: &str = "third_party/onnxruntime/lib";

/// What can go wrong below the model: a missing library, a provider that would not start, a bad graph.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found (looked in: {searched}). Run scripts/setup-ort.sh, \
         or set ORT_DYLIB_PATH to a libonnxruntime.so 1.31"
    )]
    LibraryNotFound { searched: String },
    #[error("loading ONNX Runtime from {path}")]
    LibraryLoad {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the CUDA execution provider was required (provider = \"cuda\") but failed: {0}")]
    CudaUnavailable(String),
    #[error("loading graph {path}: {source}")]
    Graph { path: PathBuf, source: ort::Error },
    #[error("ONNX Runtime: {0}")]
    Ort(#[from] ort::Error),
}

/// Which execution provider the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderChoice {
    /// CUDA when it starts, CPU otherwise (the fallback is logged).
    #[default]
    Auto,
    /// CUDA or an error.
    Cuda,
    /// CPU only.
    Cpu,
}

impl FromStr for ProviderChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cuda" => Ok(Self::Cuda),
            "cpu" => Ok(Self::Cpu),
            other => Err(format!(
                "unknown execution provider {other:?}: expected auto, cuda or cpu"
            )),
        }
    }
}

/// The execution provider sessions actually run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Provider {
    #[serde(rename = "CUDAExecutionProvider")]
    Cuda,
    #[serde(rename = "CPUExecutionProvider")]
    Cpu,
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provider::Cuda => "CUDAExecutionProvider",
            Provider::Cpu => "CPUExecutionProvider",
        })
    }
}

/// How sessions are made.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Requested execution provider.
    pub provider: ProviderChoice,
    /// ORT intra-op threads: the shared pool's size ([`RuntimeOptions::shared_threads`]), else
    /// each session's; 0 lets ORT decide (one per core).
    pub intra_threads: usize,
    /// Explicit library path (the edge fills it from `[runtime] library` or `ORT_DYLIB_PATH`);
    /// otherwise beside the binary, then the repo's copy.
    pub library: Option<PathBuf>,
    /// Every session shares one intra-op thread pool of `intra_threads` threads (ORT's global
    /// thread pool), instead of each having its own. Sessions that take turns (the one-DET
    /// graphs) then stop contending: a pool's threads spin after a run, on the cores the next
    /// session's run needs. The pool belongs to the process: the first runtime loaded decides
    /// whether there is one ([`Runtime::shares_threads`] says what a runtime got). Off by default
    /// here; the server's configuration turns it on (`[runtime] shared_threads`).
    pub shared_threads: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            provider: ProviderChoice::Auto,
            intra_threads: 0,
            library: None,
            shared_threads: false,
        }
    }
}

/// A loaded ONNX Runtime: makes sessions on the chosen provider.
#[derive(Debug, Clone)]
pub struct Runtime {
    environment: &'static Environment,
    options: RuntimeOptions,
    library: PathBuf,
    /// Sessions run on the process's shared thread pool (else each has its own).
    shared: bool,
}

/// ORT allows one environment per process, even after the first is dropped, so it lives here for
/// the life of the process, with its library and whether it has a shared thread pool. Tests that
/// build several runtimes share it.
static ENVIRONMENT: OnceLock<(Environment, PathBuf, bool)> = OnceLock::new();
static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Runtime {
    /// Loads the ONNX Runtime library (once per process) and remembers how to make sessions.
    pub fn load(options: RuntimeOptions) -> Result<Self, RuntimeError> {
        let pool_threads = options.shared_threads.then_some(options.intra_threads);
        let (environment, library, has_pool) =
            environment(options.library.as_deref(), pool_threads)?;
        if options.shared_threads && !has_pool {
            tracing::warn!(
                "ONNX Runtime was loaded earlier in this process without a shared thread pool; \
                 sessions keep their own"
            );
        }
        Ok(Self {
            environment,
            shared: options.shared_threads && has_pool,
            options,
            library: library.clone(),
        })
    }

    /// The same runtime, its sessions with thread pools of their own: for work whose threads
    /// must differ from the shared pool's (a tune job's run at the lowest CPU priority).
    pub fn independent(&self) -> Self {
        Self {
            shared: false,
            ..self.clone()
        }
    }

    /// Whether this runtime's sessions share the process's thread pool.
    pub fn shares_threads(&self) -> bool {
        self.shared
    }

    /// The library file that was loaded.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// The options sessions are made with.
    pub fn options(&self) -> &RuntimeOptions {
        &self.options
    }

    /// Opens `count` sessions of one graph, all on the same provider, and reports which one.
    pub fn open_pool(&self, graph: &Path, count: usize) -> Result<SessionPool, RuntimeError> {
        let mut sessions = Vec::with_capacity(count.max(1));
        let mut provider = Provider::Cpu;
        for _ in 0..count.max(1) {
            let (session, used) = self.open_session(graph, false)?;
            provider = used;
            sessions.push(session);
        }
        Ok(SessionPool::new(sessions, provider))
    }

    /// Opens one session of `graph` on the chosen provider and reports which one. With
    /// `cuda_graphs` the CUDA provider captures CUDA graphs (`enable_cuda_graph`): runs must then
    /// go through an IoBinding with fixed input and output addresses per shape, and name the
    /// shape's graph in the run option `gpu_graph_id` (model::ResidentEncoder does both). No effect
    /// on the CPU provider.
    pub fn open_session(
        &self,
        graph: &Path,
        cuda_graphs: bool,
    ) -> Result<(Session, Provider), RuntimeError> {
        let graph_error = |source| RuntimeError::Graph {
            path: graph.to_path_buf(),
            source,
        };
        match self.options.provider {
            ProviderChoice::Cpu => {
                Ok((self.cpu_session(graph).map_err(graph_error)?, Provider::Cpu))
            }
            ProviderChoice::Cuda | ProviderChoice::Auto => {
                match self.cuda_session(graph, cuda_graphs) {
                    Ok(session) => Ok((session, Provider::Cuda)),
                    Err(CudaFailure::Graph(e)) => Err(graph_error(e)),
                    Err(CudaFailure::Unavailable(reason))
                        if self.options.provider == ProviderChoice::Cuda =>
                    {
                        Err(RuntimeError::CudaUnavailable(reason))
                    }
                    Err(CudaFailure::Unavailable(reason)) => {
                        tracing::info!(%reason, "CUDA execution provider unavailable; using CPU");
                        Ok((self.cpu_session(graph).map_err(graph_error)?, Provider::Cpu))
                    }
                }
            }
        }
    }

    fn cpu_session(&self, graph: &Path) -> ort::Result<Session> {
        base_builder(self.environment, &self.options, self.shared)?.commit_from_file(graph)
    }

    #[cfg(feature = "cuda")]
    fn cuda_session(&self, graph: &Path, cuda_graphs: bool) -> Result<Session, CudaFailure> {
        use ort::ep;
        // Registration errors are silent by default; `error_on_failure` makes the fallback a
        // decision we log, not an accident (ort src/ep/mod.rs).
        let cuda = ep::CUDA::default()
            .with_device_id(0)
            .with_cuda_graph(cuda_graphs)
            .build()
            .error_on_failure();
        let builder = base_builder(self.environment, &self.options, self.shared)
            .map_err(CudaFailure::Graph)?;
        match builder.with_execution_providers([cuda]) {
            Ok(mut b) => b.commit_from_file(graph).map_err(CudaFailure::Graph),
            Err(e) => Err(CudaFailure::Unavailable(e.to_string())),
        }
    }

    #[cfg(not(feature = "cuda"))]
    fn cuda_session(&self, _graph: &Path, _cuda_graphs: bool) -> Result<Session, CudaFailure> {
        Err(CudaFailure::Unavailable(
            "this binary was built without the `cuda` feature".into(),
        ))
    }
}

/// Why a CUDA session was not made: the provider is missing (fall back to the CPU under "auto"),
/// or the graph failed on it (an error).
enum CudaFailure {
    Unavailable(String),
    // Made only by the `cuda` feature's `cuda_session`; a crate built without it still matches it.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Graph(ort::Error),
}

/// Session settings shared by every provider. Memory patterns are off: with them on, ORT's arena
/// doubles on the second run of the gradient graph and grows further as `seq` varies
/// (docs/design/z-graph.md, "Session memory"), at no measurable speed gain. A session on the
/// shared pool has no threads of its own to size; one that is not keeps its own pool even where
/// the process has a shared one.
fn base_builder(
    environment: &Environment,
    options: &RuntimeOptions,
    shared: bool,
) -> ort::Result<SessionBuilder> {
    let builder = Session::builder(environment)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(into_plain)?
        .with_memory_pattern(false)
        .map_err(into_plain)?;
    if shared {
        return Ok(builder);
    }
    let builder = builder.with_independent_thread_pool().map_err(into_plain)?;
    if options.intra_threads > 0 {
        builder
            .with_intra_threads(options.intra_threads)
            .map_err(into_plain)
    } else {
        Ok(builder)
    }
}

/// Builder steps fail with an error that hands the builder back; we only want the error.
fn into_plain(error: ort::Error<SessionBuilder>) -> ort::Error {
    error.into()
}

/// The process's environment, made on first use; with a shared pool of `pool_threads` intra-op
/// threads (0: one per core) when the first caller asks for one.
fn environment(
    explicit: Option<&Path>,
    pool_threads: Option<usize>,
) -> Result<(&'static Environment, &'static PathBuf, bool), RuntimeError> {
    if let Some((env, path, pool)) = ENVIRONMENT.get() {
        return Ok((env, path, *pool));
    }
    let _guard = INIT_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((env, path, pool)) = ENVIRONMENT.get() {
        return Ok((env, path, *pool));
    }
    let library = find_library(explicit)?;
    let load_error = |source: Box<dyn std::error::Error + Send + Sync>| RuntimeError::LibraryLoad {
        path: library.clone(),
        source,
    };
    // `init_from` returns an error where `ort::init` would panic on a missing library.
    let builder = ort::init_from(&library).map_err(|e| load_error(Box::new(e)))?;
    let mut builder = builder.with_name("deltaspace").with_telemetry(false);
    if let Some(threads) = pool_threads {
        let pool = GlobalThreadPoolOptions::default()
            .with_intra_threads(threads)
            .map_err(|e| load_error(Box::new(e)))?;
        builder = builder.with_global_thread_pool(pool);
    }
    let env = builder.build().map_err(|e| load_error(Box::new(e)))?;
    tracing::debug!(library = %library.display(), shared_pool = pool_threads.is_some(), "ONNX Runtime loaded");
    let (env, path, pool) = ENVIRONMENT.get_or_init(|| (env, library, pool_threads.is_some()));
    Ok((env, path, *pool))
}

/// An explicit path (the only place to look), else `libonnxruntime.so` beside the binary (and in
/// `lib/` beside it), then the repository's own copy (relative to the working directory, then to
/// this crate's source).
fn find_library(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(path) = explicit {
        candidates.push(path.to_path_buf());
    } else {
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
        {
            candidates.push(dir.join(LIBRARY_FILE));
            candidates.push(dir.join("lib").join(LIBRARY_FILE));
        }
        candidates.push(Path::new(REPO_LIBRARY_DIR).join(LIBRARY_FILE));
        // The repository this crate was built in (crates/core is two levels down).
        candidates.push(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(REPO_LIBRARY_DIR)
                .join(LIBRARY_FILE),
        );
    }
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or_else(|| RuntimeError::LibraryNotFound {
            searched: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// A CPU runtime on one thread: what the crate's tests run on.
#[cfg(test)]
pub(crate) fn test_runtime() -> Runtime {
    Runtime::load(RuntimeOptions {
        provider: ProviderChoice::Cpu,
        intra_threads: 1,
        library: None,
        shared_threads: false,
    })
    .expect("a CPU runtime loads")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_choice_parses_the_three_names_and_rejects_others() {
        assert_eq!("auto".parse::<ProviderChoice>(), Ok(ProviderChoice::Auto));
        assert_eq!("cuda".parse::<ProviderChoice>(), Ok(ProviderChoice::Cuda));
        assert_eq!("cpu".parse::<ProviderChoice>(), Ok(ProviderChoice::Cpu));
        assert!(
            "gpu"
                .parse::<ProviderChoice>()
                .unwrap_err()
                .contains("auto, cuda or cpu")
        );
    }

    #[test]
    fn a_missing_library_is_an_error_that_says_how_to_fix_it() {
        let err = find_library(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        assert!(err.to_string().contains("scripts/setup-ort.sh"), "{err}");
    }
}
