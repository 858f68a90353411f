"""Replicas sharing a PostgreSQL task store (issue 12), against the release `deltaspace serve`.

1. Propagation: replicas A and B on one PostgreSQL database; a task is written on A again and again, and
   after each acknowledged PUT the clock runs until B serves that generation (B is polled every 0.5 ms,
   so the figure includes up to that much and one GET). p50, p99 and the maximum.
2. Uploads per second through PostgreSQL (to A, while B follows) against the embedded SQLite store of a
   single server: --clients concurrent clients PUT --uploads distinct tasks that share one label set,
   so the store's commit is what is measured, not the encoder.

PostgreSQL 15 is started here (initdb into a temporary directory, as the `postgres` user when run as root,
fsync on as in production) and stopped at the end. Prints a markdown report and writes the figures as JSON
(--json). Nothing asserts a timing. Run through scripts/bench-replicas.sh, which builds first and writes
docs/performance/replicas.md.
"""

import argparse
import concurrent.futures
import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
from pathlib import Path

from benchlib import Server, call, free_port, quantile


class Postgres:
    """A PostgreSQL server in a temporary directory, as the `postgres` user when this runs as root."""

    def __init__(self):
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        if not versions:
            raise SystemExit("PostgreSQL is not installed: scripts/setup-postgres.sh")
        self.bin = Path(versions[-1]).parent
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.dir = self.run(["mktemp", "-d", "/tmp/deltaspace-bench-pg-XXXXXX"]).strip()
        self.port = free_port()
        self.run([str(self.bin / "initdb"), "-D", f"{self.dir}/data", "-U", "postgres", "--auth=trust", "-E", "UTF8"])
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir}"
        self.run([str(self.bin / "pg_ctl"), "-D", f"{self.dir}/data", "-l", f"{self.dir}/log", "-o", options,
                  "-w", "start"])
        self.version = self.run([str(self.bin / "postgres"), "--version"]).strip()

    def run(self, command):
        return subprocess.run(self.as_user + command, check=True, capture_output=True, text=True, cwd="/tmp").stdout

    def url(self):
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres?sslmode=disable"

    def stop(self):
        self.run([str(self.bin / "pg_ctl"), "-D", f"{self.dir}/data", "-m", "fast", "-w", "stop"])
        self.run(["rm", "-rf", self.dir])


def replica_env(name, store_url):
    """A replica's environment: its store (empty: SQLite in its data directory) and its name."""
    return {"DELTASPACE_STORE_URL": store_url, "DELTASPACE_SERVER_REPLICA": name}


def task_body(d, value):
    return {"det": "lora", "z": [value] + [0.0] * (d - 1),
            "labels": [{"name": "sports", "description": "The text is about sports."},
                       {"name": "music", "description": "The text is about music."}]}


def generation_on(base, name):
    try:
        return call(base, "GET", f"/v1/tasks/{name}", timeout=5)["generation"]
    except urllib.error.HTTPError:
        return None


def propagation(a, b, d, writes):
    """Seconds from each acknowledged PUT on A to B serving that generation."""
    delays = []
    for i in range(writes):
        written = call(a.base, "PUT", "/v1/tasks/propagated", task_body(d, 0.001 * i))
        acknowledged = time.perf_counter()
        while generation_on(b.base, "propagated") != written["generation"]:
            if time.perf_counter() - acknowledged > 30:
                raise SystemExit("B did not serve a write within 30 s")
            time.sleep(0.0005)
        delays.append(time.perf_counter() - acknowledged)
    return delays


def uploads_per_second(server, d, uploads, clients, prefix):
    def upload(i):
        call(server.base, "PUT", f"/v1/tasks/{prefix}-{i:06d}", task_body(d, 0.001 * i))

    call(server.base, "PUT", f"/v1/tasks/{prefix}-warm", task_body(d, 0.5))  # embeds the shared labels
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(upload, range(uploads)))
    return uploads / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", default="target/release/deltaspace")
    parser.add_argument("--model", default="models/all-MiniLM-L6-v2")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per server")
    parser.add_argument("--writes", type=int, default=300, help="PUTs timed for propagation")
    parser.add_argument("--uploads", type=int, default=2000, help="PUTs timed for throughput, per store")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--json")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="deltaspace-bench-replicas-"))
    postgres = Postgres()
    servers = []
    try:
        a = Server(args, workdir, "a", replica_env("a", postgres.url()))
        servers.append(a)
        b = Server(args, workdir, "b", replica_env("b", postgres.url()))
        servers.append(b)
        d = call(a.base, "GET", "/v1/info")["subspace"]["d"]
        delays = propagation(a, b, d, args.writes)
        through_postgres = uploads_per_second(a, d, args.uploads, args.clients, "pg")
        for server in servers:
            server.stop()
        servers.clear()
        sqlite = Server(args, workdir, "sqlite", replica_env("sqlite", ""))
        servers.append(sqlite)
        through_sqlite = uploads_per_second(sqlite, d, args.uploads, args.clients, "sqlite")
    finally:
        for server in servers:
            server.stop()
        postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    ms = [1e3 * s for s in delays]
    result = {
        "postgres": postgres.version,
        "propagation_ms": {"p50": quantile(ms, 0.5), "p99": quantile(ms, 0.99), "max": max(ms), "writes": len(ms)},
        "uploads_per_second": {"postgres": through_postgres, "sqlite": through_sqlite,
                               "uploads": args.uploads, "clients": args.clients},
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    p = result["propagation_ms"]
    print(f"Propagation from an acknowledged PUT on A to the new generation served by B ({p['writes']} writes, one at "
          f"a time; {postgres.version}):\n")
    print("| p50 | p99 | max |\n|---|---|---|")
    print(f"| {p['p50']:.1f} ms | {p['p99']:.1f} ms | {p['max']:.1f} ms |\n")
    print(f"Uploads per second, {args.uploads} PUTs of distinct tasks sharing one label set from {args.clients} "
          "concurrent clients:\n")
    print("| store | uploads/s |\n|---|---|")
    print(f"| PostgreSQL (replica A, B following) | {through_postgres:.0f} |")
    print(f"| SQLite (one server) | {through_sqlite:.0f} |")


if __name__ == "__main__":
    main()
