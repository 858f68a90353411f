//! A real PostgreSQL 15 for the tests, started from the Debian packages' binaries
//! (`/usr/lib/postgresql/*/bin`, or `DELTASPACE_PG_BIN`): `initdb` into a fresh directory, a free
//! port on 127.0.0.1, TLS on with a self-signed certificate. initdb refuses root, so as root
//! every step runs as the `postgres` user. Most tests share one server ([`shared`]), each in a
//! database of its own ([`Postgres::database`]); a test that stops the server starts its own.
//!
//! A watchdog shell, started with each server, stops it and removes its directory once this test
//! process is gone, however it ended (the harness runs no code at exit).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A PostgreSQL server that this test process started.
pub struct Postgres {
    bin: PathBuf,
    /// Owned by the server's user: `data/`, the log, the certificate, the socket.
    dir: PathBuf,
    pub port: u16,
    /// Stops the server once this process is gone; it outlives the test on purpose.
    _watchdog: Option<Child>,
}

/// The server most tests share, started on first use.
pub fn shared() -> &'static Postgres {
    static SHARED: OnceLock<Postgres> = OnceLock::new();
    SHARED.get_or_init(Postgres::start)
}

impl Postgres {
    /// Initializes and starts a server; panics with its log when it does not start.
    pub fn start() -> Self {
        let bin = bin_dir();
        let dir = PathBuf::from(
            String::from_utf8(
                as_server_user("mktemp", &["-d", "/tmp/deltaspace-pg-XXXXXX"]).stdout,
            )
            .unwrap()
            .trim(),
        );
        let mut server = Self {
            port: free_port(),
            bin,
            dir,
            _watchdog: None,
        };
        server.run_ok(
            "initdb",
            &[
                "-D",
                &server.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        server.make_certificate();
        server._watchdog = Some(server.watch_this_process());
        server.start_again();
        server
    }

    /// Starts the (stopped) server again on the same port and data.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
             -c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key",
            self.port,
            self.dir.display(),
            dir = self.dir.display(),
        );
        let log = self.dir.join("server.log").display().to_string();
        let output = self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
        assert!(
            output.status.success(),
            "PostgreSQL did not start: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server (fast: open connections are closed, as in a failover or a restart).
    pub fn stop(&self) {
        self.run_ok("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    /// The URL of `database` on this server (TLS when the server offers it).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?sslmode=prefer",
            self.port
        )
    }

    /// A new, empty database for one test; its URL.
    pub fn database(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        self.sql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Runs `sql` in `database` as the superuser.
    pub fn sql(&self, database: &str, sql: &str) {
        let url = self.url(database);
        with_client(&url, |client| client.batch_execute(sql).unwrap());
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// A self-signed certificate, so `sslmode=require` has something to talk to.
    fn make_certificate(&self) {
        let (key, certificate) = (self.dir.join("server.key"), self.dir.join("server.crt"));
        let output = as_server_user(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-keyout",
                &key.display().to_string(),
                "-out",
                &certificate.display().to_string(),
            ],
        );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Stops the server and removes its directory once this process has exited.
    fn watch_this_process(&self) -> Child {
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 1; done; \
             {pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = self.data(),
            dir = self.dir.display(),
        );
        server_user_command("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn run(&self, program: &str, args: &[&str]) -> std::process::Output {
        as_server_user(&self.bin.join(program).display().to_string(), args)
    }

    fn run_ok(&self, program: &str, args: &[&str]) {
        let output = self.run(program, args);
        assert!(
            output.status.success(),
            "{program}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
        let _ = as_server_user("rm", &["-rf", &self.dir.display().to_string()]);
    }
}

/// Runs `work` on a superuser connection to the database of `url`, on a thread of its own: the
/// blocking client runs a runtime of its own, which cannot start inside an async test's.
pub fn with_client<T: Send>(url: &str, work: impl FnOnce(&mut postgres::Client) -> T + Send) -> T {
    let url = url.replace("sslmode=prefer", "sslmode=disable");
    std::thread::scope(|scope| {
        scope
            .spawn(move || work(&mut postgres::Client::connect(&url, postgres::NoTls).unwrap()))
            .join()
            .unwrap()
    })
}

/// Runs blocking `work` (a store opened on PostgreSQL, say) on a thread of its own, for the same
/// reason as [`with_client`].
pub fn off_runtime<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| scope.spawn(work).join().unwrap())
}

/// The newest PostgreSQL under /usr/lib/postgresql, or `DELTASPACE_PG_BIN`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DELTASPACE_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (Debian: apt-get install postgresql-15)")
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("postgres").is_file())
        .collect();
    versions.sort_by_key(|bin| {
        bin.parent()
            .and_then(Path::file_name)
            .and_then(|v| v.to_str()?.parse::<u32>().ok())
    });
    versions
        .pop()
        .expect("a PostgreSQL server under /usr/lib/postgresql")
}

/// `program` as the `postgres` user when this process is root (initdb refuses root).
fn server_user_command(program: &str) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0");
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", program]);
        command
    } else {
        Command::new(program)
    }
}

fn as_server_user(program: &str, args: &[&str]) -> std::process::Output {
    server_user_command(program)
        .args(args)
        .current_dir("/tmp")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
