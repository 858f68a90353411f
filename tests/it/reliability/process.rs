//! The real `deltaspace serve` as a child process, for what an in-process server cannot show:
//! SIGKILL, SIGTERM, the process's memory and its log. A child cannot be handed a bound listener,
//! so [`Server::start`] picks a free port (bind port 0, read it, drop it) and passes `--bind`,
//! retrying on the rare race where another test takes the port first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The `deltaspace` binary: `DELTASPACE_TEST_BIN` (for example a release build, for the load
/// soak) or the one cargo built with these tests.
pub fn binary() -> PathBuf {
    std::env::var_os("DELTASPACE_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_deltaspace")))
}

/// An environment variable as a number, or `default`.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A directory with a random d=4 subspace for the tiny model, a config file, and a data
/// directory that outlives the server processes started on it.
pub struct Setup {
    pub dir: TempDir,
    /// The model the servers and commands load: the tiny fixture unless changed.
    pub model: PathBuf,
    pub subspace: PathBuf,
    pub config: PathBuf,
    /// `DELTASPACE_*` settings given to every server started on this setup.
    pub env: Vec<(String, String)>,
}

impl Setup {
    /// Makes the subspace with `deltaspace subspace random`, as a user would.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let subspace = dir.path().join("subspace.safetensors");
        let output = Command::new(binary())
            .args([
                "--provider",
                "cpu",
                "subspace",
                "random",
                "--dim",
                "4",
                "--seed",
                "7",
            ])
            .arg("--model")
            .arg(tiny_dir())
            .arg("--out")
            .arg(&subspace)
            .env_clear()
            .envs(std::env::vars().filter(|(k, _)| !k.starts_with("DELTASPACE_")))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // An explicit config file, so config/deltaspace.toml (MiniLM, its seed tasks) is not read.
        let config = dir.path().join("deltaspace.toml");
        std::fs::write(
            &config,
            "[runtime]\nprovider = \"cpu\"\nintra_threads = 1\n\n\
             [server]\nseed_tasks_dir = \"\"\nworkers = 2\nshutdown_timeout_s = 20\n",
        )
        .unwrap();
        Self {
            dir,
            model: tiny_dir(),
            subspace,
            config,
            env: Vec::new(),
        }
    }

    /// Sets `DELTASPACE_SERVER_<KEY>` for servers started from now on.
    pub fn server(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((
            format!("DELTASPACE_SERVER_{}", key.to_uppercase()),
            value.to_string(),
        ));
        self
    }

    /// Sets `DELTASPACE_RUNTIME_<KEY>` for servers started from now on.
    pub fn runtime(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((
            format!("DELTASPACE_RUNTIME_{}", key.to_uppercase()),
            value.to_string(),
        ));
        self
    }

    /// Stores tasks at `url` (`[store] url`) in servers and commands started from now on.
    pub fn store_url(mut self, url: &str) -> Self {
        self.env
            .push(("DELTASPACE_STORE_URL".to_string(), url.to_string()));
        self
    }

    /// `deltaspace --config … ARGS… --model … --subspace … --data-dir …` on this setup (ARGS: a
    /// subcommand and its own arguments), with only this setup's `DELTASPACE_*` settings.
    pub fn command<S: AsRef<std::ffi::OsStr>>(
        &self,
        args: impl IntoIterator<Item = S>,
        rust_log: &str,
    ) -> Command {
        let mut command = Command::new(binary());
        command
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .arg("--model")
            .arg(&self.model)
            .arg("--subspace")
            .arg(&self.subspace)
            .arg("--data-dir")
            .arg(self.data_dir())
            .env_clear()
            .envs(std::env::vars().filter(|(k, _)| !k.starts_with("DELTASPACE_")))
            .envs(self.env.iter().cloned())
            .env("RUST_LOG", rust_log);
        command
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The task database the servers write.
    pub fn database(&self) -> PathBuf {
        self.data_dir().join("tasks.sqlite3")
    }
}

fn tiny_dir() -> PathBuf {
    crate::helpers::tiny_dir()
}

/// A running `deltaspace serve`; killed (SIGKILL) when dropped.
pub struct Server {
    child: Child,
    pub base: String,
    /// Its stderr: the log.
    pub log: PathBuf,
}

impl Server {
    /// Starts a server on `setup` with `RUST_LOG=rust_log` and waits until it is ready.
    pub async fn start(setup: &Setup, rust_log: &str) -> Self {
        for attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let log = setup
                .dir
                .path()
                .join(format!("server-{port}-{attempt}.log"));
            let child = setup
                .command(["serve", "--bind", &format!("127.0.0.1:{port}")], rust_log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            let mut server = Self {
                child,
                base: format!("http://127.0.0.1:{port}"),
                log,
            };
            match server.wait_ready().await {
                Ok(()) => return server,
                Err(text) if text.contains("binding") => continue,
                Err(text) => panic!("the server did not start:\n{text}"),
            }
        }
        panic!("no free port after 5 tries");
    }

    /// Polls `/health/ready` until 200; the log if the process exits first.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return Err(self.log_text());
            }
            let ready = client
                .get(format!("{}/health/ready", self.base))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("not ready in 60 s:\n{}", self.log_text()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGKILL, and reap the process.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: the graceful shutdown `deltaspace serve` does on Ctrl-C or from a supervisor.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit (at most `limit`); its exit code.
    pub async fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the server did not exit in {limit:?}:\n{}", self.log_text());
    }

    /// Resident memory of the process, in bytes (Linux `/proc`).
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_bytes(self.pid())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The `p`-quantile (0–1) of sorted values.
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}
