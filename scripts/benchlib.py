"""What the HTTP benchmarks share: free ports and quantiles (all three), and for bench_jobs.py and bench_replicas.py JSON
calls, quantiles and the release `deltaspace serve` on a fresh data directory. (bench_http_peer.py runs other
servers too, so it keeps its own process handling.)"""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, method, path, body=None, timeout=60):
    """One JSON request; the response's JSON body (None when empty). HTTP errors raise."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def quantile(values, p):
    """The p-quantile of values (any order): the sorted value at index round((n - 1) p), no interpolation
    (numpy's method="nearest")."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round((len(ordered) - 1) * p))]


class Server:
    """The release server (args.bin, args.model, args.threads ONNX Runtime threads) on a fresh data directory
    workdir/data-NAME, logging to workdir/server-NAME.log, with `env` added to its environment (seed tasks off,
    none of the caller's DELTASPACE_*); ready when constructed. Call stop()."""

    def __init__(self, args, workdir, name, env=None, port=None):
        port = port or free_port()
        data_dir = workdir / f"data-{name}"
        shutil.rmtree(data_dir, ignore_errors=True)
        # None of the caller's DELTASPACE_* settings: a store URL or tokens exported for another server would
        # point this one at that database or lock the bench out.
        env = dict({k: v for k, v in os.environ.items() if not k.startswith("DELTASPACE_")},
                   DELTASPACE_SERVER_SEED_TASKS_DIR="", DELTASPACE_RUNTIME_INTRA_THREADS=str(args.threads),
                   **(env or {}))
        self.log_path = workdir / f"server-{name}.log"
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [args.bin, "serve", "--provider", "cpu", "--model", args.model, "--data-dir", str(data_dir),
             "--bind", f"127.0.0.1:{port}"],
            env=env, stdout=self.log, stderr=self.log)
        self.base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            if self.process.poll() is not None:
                break
            try:
                call(self.base, "GET", "/health/ready", timeout=2)
                return
            except (OSError, ValueError):  # refused, reset or timed out (URLError is an OSError); not JSON yet
                time.sleep(0.2)
        self.stop()
        raise SystemExit(f"server {name} did not become ready; see {self.log_path}")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)
        self.log.close()
