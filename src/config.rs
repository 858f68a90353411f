//! Configuration: `config/deltaspace.toml`, then `DELTASPACE_<SECTION>_<KEY>` environment
//! variables, then command-line flags. Only the edge (this module and `cli`) reads files or the
//! environment; layers below take typed options built here.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::model::ResidentChoice;
use crate::runtime::{ProviderChoice, RuntimeOptions};
use crate::secret::Secret;
use crate::server::{StoreLocation, TuneLimits, is_allowed_host};
use crate::task::TaskLimits;

/// The whole configuration file. Every key has a default, so an empty file is valid.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub runtime: RuntimeConfig,
    pub model: ModelConfig,
    pub server: ServerConfig,
    pub store: StoreConfig,
}

/// `[store]`: where tasks are stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Empty: SQLite under `[server] data_dir`; `sqlite://PATH`: that SQLite file;
    /// `postgres://…`: a PostgreSQL database that replicas share. It may hold a password, so it
    /// is a secret: never logged.
    pub url: Secret,
}

/// `[runtime]`: ONNX Runtime.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `auto` (CUDA if it starts, else CPU), `cuda` (CUDA or fail), `cpu`.
    pub provider: ProviderChoice,
    /// ORT intra-op threads: the shared pool's size (`shared_threads`), else each session's; 0 =
    /// one per core.
    pub intra_threads: usize,
    /// One intra-op thread pool of `intra_threads` threads shared by every session
    /// (`runtime::RuntimeOptions::shared_threads`).
    pub shared_threads: bool,
    /// Sessions of the serving graph (concurrent runs). On the shared pool they split its
    /// threads; with pools per session keep sessions × threads ≈ cores.
    pub sessions: usize,
    /// `auto` (U and base resident in the sessions' memory on CUDA, sent with each run on the
    /// CPU), `always`, `never`.
    pub resident: ResidentChoice,
    /// With a resident model on CUDA, capture a CUDA graph per batch shape.
    pub cuda_graphs: bool,
    /// Serve batches of one DET through that DET's own graph (`model::EncoderOptions`).
    pub one_det_graphs: bool,
    /// MiB of decoded deltas U z kept for recent tasks (`model::DeltaCache`); 0 = none.
    pub delta_cache_mb: usize,
    /// libonnxruntime.so to load; empty = ORT_DYLIB_PATH, beside the binary, third_party/.
    pub library: String,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            provider: ProviderChoice::Auto,
            intra_threads: 0,
            shared_threads: true,
            sessions: 1,
            resident: ResidentChoice::Auto,
            cuda_graphs: false,
            one_det_graphs: false,
            delta_cache_mb: 64,
            library: String::new(),
        }
    }
}

/// `[model]`: what to load.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// The exported model directory (manifest.json, graphs, tokenizer).
    pub dir: PathBuf,
    /// The subspace artifact (safetensors).
    pub subspace: PathBuf,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("models/all-MiniLM-L6-v2"),
            subspace: PathBuf::from("models/all-MiniLM-L6-v2/subspaces/default.safetensors"),
        }
    }
}

/// `[server]`: `deltaspace serve` (docs/API.md lists every key).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on, `host:port`.
    pub bind: String,
    /// HTTP worker threads; 0 = one per core.
    pub workers: usize,
    /// Directory of the task database (`tasks.sqlite3`), created if missing.
    pub data_dir: PathBuf,
    /// TASK.json files imported at start when not stored (each name once, ever); skipped if absent.
    pub seed_tasks_dir: PathBuf,
    /// Most texts in one encoder run.
    pub max_batch_rows: usize,
    /// Most padded tokens (rows × longest row) in one encoder run.
    pub max_batch_tokens: usize,
    /// Longest a request waits for others to share its batch, in milliseconds.
    pub max_wait_ms: u64,
    /// Requests that may wait for a batch; beyond it requests get 429.
    pub queue_capacity: usize,
    /// Most texts in one predict or embed request (at most `max_batch_rows`).
    pub max_inputs: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Longest text (or text_pair) in a predict or embed request, in characters.
    pub max_text_chars: usize,
    /// Most tasks served; creating one more is refused (409).
    pub max_tasks: usize,
    /// Largest ‖z‖₂ an uploaded task may have.
    pub max_z_norm: f32,
    /// Most labels per task.
    pub max_labels: usize,
    /// Longest label name or description, in characters.
    pub max_label_chars: usize,
    /// Bearer tokens, comma-separated; empty = no authorization. Never logged.
    pub tokens: Secret,
    /// Require a token for predictions, embeddings and task reads too (writes always need one
    /// when tokens are set).
    pub protect_reads: bool,
    /// `Host` names a server bound to a loopback address answers besides localhost and IP
    /// addresses, comma-separated; `*` = any (against DNS rebinding).
    pub allowed_hosts: String,
    /// Seconds shutdown waits for in-flight requests.
    pub shutdown_timeout_s: u64,
    /// Milliseconds a client may take to send a request's head before it gets 408; 0 = no limit.
    pub client_request_timeout_ms: u64,
    /// Tune jobs that run at once (`POST /v1/tasks/{name}/tune`).
    pub max_tune_jobs: usize,
    /// Tune jobs that may wait for a slot; one more answers 429.
    pub max_queued_tune_jobs: usize,
    /// Most examples in one tune request (train, dev and test together).
    pub max_tune_examples: usize,
    /// Longest budget a tune request may ask for, in seconds; also the budget of one that asks none.
    pub max_tune_seconds: u64,
    /// Rows per encoder run of a tune job: the most a prediction may wait behind.
    pub tune_run_rows: usize,
    /// Names this replica in the tune jobs it records [default: the host name].
    pub replica: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            workers: 0,
            data_dir: PathBuf::from("data"),
            seed_tasks_dir: PathBuf::from("models/all-MiniLM-L6-v2/tasks"),
            max_batch_rows: 32,
            max_batch_tokens: 16384,
            max_wait_ms: 2,
            queue_capacity: 1024,
            max_inputs: 32,
            max_body_bytes: 1 << 20,
            max_text_chars: 10_000,
            max_tasks: 100_000,
            max_z_norm: crate::task::TaskLimits::default().max_z_norm,
            max_labels: crate::task::TaskLimits::default().max_labels,
            max_label_chars: crate::task::TaskLimits::default().max_label_chars,
            tokens: Secret::default(),
            protect_reads: false,
            allowed_hosts: String::new(),
            shutdown_timeout_s: 30,
            client_request_timeout_ms: 5000,
            max_tune_jobs: TuneLimits::default().max_jobs,
            max_queued_tune_jobs: TuneLimits::default().max_queued,
            max_tune_examples: TuneLimits::default().max_examples,
            max_tune_seconds: TuneLimits::default().max_seconds,
            tune_run_rows: TuneLimits::default().run_rows,
            replica: String::new(),
        }
    }
}

/// The file read when no `--config` is given (skipped if absent).
pub const DEFAULT_PATH: &str = "config/deltaspace.toml";
/// Prefix of environment overrides: `DELTASPACE_RUNTIME_PROVIDER=cpu`.
pub const ENV_PREFIX: &str = "DELTASPACE_";

impl Config {
    /// Reads `path` (or the default file when it exists), then applies environment overrides.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading config {}", path.display()))?,
            None if Path::new(DEFAULT_PATH).is_file() => std::fs::read_to_string(DEFAULT_PATH)
                .with_context(|| format!("reading config {DEFAULT_PATH}"))?,
            None => String::new(),
        };
        let mut table: toml::Table = toml::from_str(&text).context("parsing the config file")?;
        apply_env(&mut table, std::env::vars())?;
        toml::Value::Table(table)
            .try_into()
            .context("invalid configuration")
    }

    /// Every setting as `(section, key, environment variable)`, for docs and error messages.
    pub fn keys() -> Vec<(String, String, String)> {
        keys_of(&defaults())
    }

    /// Bounds on tasks, from `[server]`: uploads, start-up and `deltaspace import` check them.
    /// Bounds that would let garbage through (`max_z_norm = nan` or `inf`) or refuse every task
    /// (`max_z_norm = 0`, `max_labels = 1`) are an error naming the setting.
    pub fn task_limits(&self) -> anyhow::Result<TaskLimits> {
        let server = &self.server;
        if !(server.max_z_norm.is_finite() && server.max_z_norm > 0.0) {
            let rule = "it must be a finite number above 0";
            return Err(unusable("server", "max_z_norm", server.max_z_norm, rule));
        }
        if server.max_labels < 2 {
            let rule = "a task has at least 2 labels";
            return Err(unusable("server", "max_labels", server.max_labels, rule));
        }
        Ok(TaskLimits {
            max_z_norm: server.max_z_norm,
            max_labels: server.max_labels,
            max_label_chars: count("server", "max_label_chars", server.max_label_chars)?,
            ..TaskLimits::default()
        })
    }

    /// The names `[server] allowed_hosts` lists (comma-separated; blanks dropped). Each is `*`, or
    /// a host name or address as a `Host` header carries it, with or without a port: an entry
    /// that no `Host` can match (`https://example.org`, `example.org/api`) is an error naming it,
    /// not a server that refuses every request.
    pub fn allowed_hosts(&self) -> anyhow::Result<Vec<String>> {
        let value = &self.server.allowed_hosts;
        let hosts: Vec<String> = value
            .split(',')
            .map(str::trim)
            .filter(|host| !host.is_empty())
            .map(String::from)
            .collect();
        match hosts.iter().find(|host| !is_allowed_host(host)) {
            Some(bad) => {
                let rule =
                    format!("{bad:?} is not a host name or address (with or without a port) or *");
                Err(unusable(
                    "server",
                    "allowed_hosts",
                    format!("{value:?}"),
                    &rule,
                ))
            }
            None => Ok(hosts),
        }
    }

    /// The store `[store] url` names, SQLite in `data_dir` when it is empty; a bad URL is an
    /// error that says what is accepted.
    pub fn store_location(&self, data_dir: Option<&Path>) -> anyhow::Result<StoreLocation> {
        let data_dir = data_dir.unwrap_or(&self.server.data_dir);
        Ok(StoreLocation::parse(self.store.url.expose(), data_dir)?)
    }

    /// Options for [`crate::runtime::Runtime::load`].
    pub fn runtime_options(&self) -> RuntimeOptions {
        let library = match self.runtime.library.as_str() {
            "" => ort_library_from_env(),
            path => Some(PathBuf::from(path)),
        };
        RuntimeOptions {
            provider: self.runtime.provider,
            intra_threads: self.runtime.intra_threads,
            library,
            shared_threads: self.runtime.shared_threads,
        }
    }
}

/// A setting that counts something and must not be 0 (a server with `max_batch_tokens = 0`
/// would refuse every request): the value, or why the server does not start.
pub fn count<T: Copy + Default + PartialEq + std::fmt::Display>(
    section: &str,
    key: &str,
    value: T,
) -> anyhow::Result<T> {
    if value == T::default() {
        return Err(unusable(section, key, value, "it must be at least 1"));
    }
    Ok(value)
}

/// Why the setting `[section] key = value` cannot work, naming the environment variable too.
fn unusable(section: &str, key: &str, value: impl std::fmt::Display, rule: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "[{section}] {key} = {value}: {rule} (env DELTASPACE_{}_{})",
        section.to_uppercase(),
        key.to_uppercase()
    )
}

/// `ORT_DYLIB_PATH`, ONNX Runtime's own variable for its library, when set: the library to load
/// unless `[runtime] library` names one (the benches read it here too).
pub fn ort_library_from_env() -> Option<PathBuf> {
    std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from)
}

/// Every setting of `defaults` as `(section, key, environment variable)`.
fn keys_of(defaults: &toml::Table) -> Vec<(String, String, String)> {
    let mut keys = Vec::new();
    for (section, values) in defaults {
        for key in values.as_table().into_iter().flatten().map(|(k, _)| k) {
            let env = format!(
                "{ENV_PREFIX}{}_{}",
                section.to_uppercase(),
                key.to_uppercase()
            );
            keys.push((section.clone(), key.clone(), env));
        }
    }
    keys
}

/// Every setting's default, as TOML: `[section] key = value`.
fn defaults() -> toml::Table {
    match toml::Value::try_from(Config::default()) {
        Ok(toml::Value::Table(table)) => table,
        _ => unreachable!("the defaults serialize to a table. This is a bug."),
    }
}

/// Applies `DELTASPACE_<SECTION>_<KEY>=value` overrides, each read by [`env_value`]; an unknown key
/// of a known section is an error, so typos surface.
fn apply_env(
    table: &mut toml::Table,
    vars: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    let defaults = defaults();
    let keys = keys_of(&defaults);
    // Only names under a config section are settings (DELTASPACE_RUNTIME_*, ...); other
    // DELTASPACE_* variables belong to scripts and tools.
    let sections: Vec<String> = keys
        .iter()
        .map(|(section, _, _)| format!("{ENV_PREFIX}{}_", section.to_uppercase()))
        .collect();
    let is_setting = |name: &str| {
        sections
            .iter()
            .any(|prefix| name.starts_with(prefix.as_str()))
    };
    for (name, raw) in vars.filter(|(name, _)| is_setting(name)) {
        let Some((section, key, _)) = keys.iter().find(|(_, _, env)| *env == name) else {
            let known: Vec<&str> = keys.iter().map(|(_, _, env)| env.as_str()).collect();
            bail!("unknown setting {name}; known: {}", known.join(", "));
        };
        let default = defaults.get(section).and_then(|values| values.get(key));
        let value = env_value(raw, default);
        let section_table = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("[{section}] in the config file is not a table"))?;
        section_table.insert(key.clone(), value);
    }
    Ok(())
}

/// An environment value for a setting whose default is `default`. A string setting takes the value
/// as it is (a TOML string, `"…"`, is unquoted), so that a token of digits stays a string and never
/// reaches a type error's message; any other setting reads it as TOML (`4`, `true`, `["a"]`), and
/// a value that is not TOML as a string (for the setting's own error).
fn env_value(raw: String, default: Option<&toml::Value>) -> toml::Value {
    let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut table| table.remove("v"));
    match (default, parsed) {
        (Some(toml::Value::String(_)), Some(quoted @ toml::Value::String(_))) => quoted,
        (Some(toml::Value::String(_)), _) | (_, None) => toml::Value::String(raw),
        (_, Some(value)) => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        let mut table: toml::Table = toml::from_str(text)?;
        apply_env(
            &mut table,
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )?;
        Ok(toml::Value::Table(table).try_into()?)
    }

    #[test]
    fn environment_overrides_the_file() {
        let config = load(
            "[runtime]\nprovider = \"cuda\"\nsessions = 2\n",
            &[
                ("DELTASPACE_RUNTIME_PROVIDER", "cpu"),
                ("DELTASPACE_RUNTIME_INTRA_THREADS", "3"),
            ],
        )
        .unwrap();
        assert_eq!(config.runtime.provider, ProviderChoice::Cpu);
        assert_eq!(config.runtime.intra_threads, 3);
        assert_eq!(config.runtime.sessions, 2);
    }

    #[test]
    fn where_u_and_base_live_is_a_choice_of_three() {
        assert_eq!(
            load("", &[]).unwrap().runtime.resident,
            ResidentChoice::Auto
        );
        let config = load(
            "[runtime]\nresident = \"never\"\n",
            &[("DELTASPACE_RUNTIME_RESIDENT", "always")],
        );
        assert_eq!(config.unwrap().runtime.resident, ResidentChoice::Always);
        assert!(load("[runtime]\nresident = \"gpu\"\n", &[]).is_err());
    }

    #[test]
    fn unknown_variables_and_keys_are_errors() {
        let err = load("", &[("DELTASPACE_RUNTIME_PROVIDR", "cpu")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("DELTASPACE_RUNTIME_PROVIDER"), "{err}");
        assert!(load("[runtime]\nthreads = 2\n", &[]).is_err());
        assert!(load("", &[("DELTASPACE_RUNTIME_PROVIDER", "gpu")]).is_err());
    }

    #[test]
    fn server_keys_are_overridable_and_tokens_are_not_shown() {
        let config = load(
            "[server]\nmax_wait_ms = 7\n",
            &[
                ("DELTASPACE_SERVER_TOKENS", "alpha,beta"),
                ("DELTASPACE_SERVER_BIND", "0.0.0.0:9000"),
            ],
        )
        .unwrap();
        assert_eq!(config.server.max_wait_ms, 7);
        assert_eq!(config.server.tokens.expose(), "alpha,beta");
        assert_eq!(config.server.bind, "0.0.0.0:9000");
        assert!(!format!("{config:?}").contains("alpha"));
    }

    #[test]
    fn a_string_setting_takes_a_value_that_looks_like_toml_as_it_is() {
        let config = load(
            "",
            &[
                ("DELTASPACE_SERVER_TOKENS", "12345678"),
                ("DELTASPACE_SERVER_REPLICA", "true"),
                ("DELTASPACE_SERVER_ALLOWED_HOSTS", "1e9"),
                ("DELTASPACE_SERVER_WORKERS", "3"),
            ],
        )
        .unwrap();
        assert_eq!(config.server.tokens.expose(), "12345678");
        assert_eq!(config.server.replica, "true");
        assert_eq!(config.server.allowed_hosts, "1e9");
        assert_eq!(config.server.workers, 3);
        // The quoting the docs asked for before still reads as the string inside.
        let config = load("", &[("DELTASPACE_SERVER_TOKENS", "\"12345\"")]).unwrap();
        assert_eq!(config.server.tokens.expose(), "12345");
        // A number setting given words fails, naming the setting, not echoing a secret.
        let error = load("", &[("DELTASPACE_SERVER_WORKERS", "many")]).unwrap_err();
        assert!(format!("{error:#}").contains("workers"), "{error:#}");
    }

    #[test]
    fn the_store_url_picks_the_backend_and_stays_secret() {
        let config = load("", &[]).unwrap();
        assert_eq!(
            config.store_location(None).unwrap(),
            StoreLocation::Sqlite(PathBuf::from("data/tasks.sqlite3"))
        );
        let config = load(
            "",
            &[("DELTASPACE_STORE_URL", "postgres://ds:hunter2@db/ds")],
        )
        .unwrap();
        assert_eq!(config.store_location(None).unwrap().backend(), "postgres");
        assert!(!format!("{config:?}").contains("hunter2"));
        let config = load("[store]\nurl = \"redis://cache\"\n", &[]).unwrap();
        let error = config.store_location(None).unwrap_err().to_string();
        assert!(error.contains("postgres://"), "{error}");
    }

    #[test]
    fn allowed_hosts_are_names_or_addresses_a_host_header_can_carry() {
        let hosts =
            |value: &str| load("", &[("DELTASPACE_SERVER_ALLOWED_HOSTS", value)])?.allowed_hosts();
        assert_eq!(
            hosts(" api.example.org, 10.0.0.7:8080 ,[::1]:80,,*, my_host").unwrap(),
            [
                "api.example.org",
                "10.0.0.7:8080",
                "[::1]:80",
                "*",
                "my_host"
            ]
        );
        assert!(hosts("").unwrap().is_empty());
        for bad in [
            "https://example.org",
            "example.org/api",
            "example.org:http",
            "example.org:",
            "[::1",
            "[not-ip]:80",
            "two words",
        ] {
            let error = hosts(&format!("ok.example, {bad}"))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(&format!("{bad:?} is not a host name"))
                    && error.contains("DELTASPACE_SERVER_ALLOWED_HOSTS"),
                "{error}"
            );
        }
    }

    #[test]
    fn the_shipped_config_file_parses() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/deltaspace.toml"
        ))
        .unwrap();
        load(&text, &[]).unwrap();
    }
}
