"""Tune jobs end to end (issue 11), against the release `deltaspace serve` on MiniLM.

1. Time from `POST /v1/tasks/{name}/tune` to a served task, for 16, 64 and 256 training examples of one real
   task (half per label), with 16 dev examples per label and the first --test test examples; the job's test
   accuracy beside `deltaspace tune`'s on the same files with the same seed and budget (they should be equal).
2. Prediction latency (p50, p99) at half the saturation throughput, with no tune job and with one running: the
   saturation throughput comes from --clients closed-loop clients; the measured load is open-loop (a request
   every 1/rate seconds, latency counted from when it was due), so a slow server cannot slow the load down.

Prints a markdown report and writes the figures as JSON (--json). Nothing asserts a timing.
Run through scripts/bench-jobs.sh, which builds first and writes docs/performance/jobs.md.
"""

import argparse
import concurrent.futures
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchlib import Server, call, quantile


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def per_label(examples, labels, k):
    """The first k examples of each label, in file order."""
    taken, out = {name: 0 for name in labels}, []
    for example in examples:
        if taken.get(example["label"], k) < k:
            taken[example["label"]] += 1
            out.append(example)
    return out


def write_task_dir(directory, labels, train, dev, test):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "labels.json").write_text(json.dumps(labels))
    for name, rows in (("train", train), ("dev", dev), ("test", test)):
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def wait_for_job(base, job):
    while True:
        record = call(base, "GET", f"/v1/jobs/{job}")
        if record["state"] in ("succeeded", "failed", "cancelled"):
            return record
        time.sleep(0.2)


def time_to_served(args, server, labels, size, files):
    """POST to a served task; then the CLI on the same files."""
    body = {"labels": labels, "examples": files["train"], "dev_examples": files["dev"],
            "test_examples": files["test"], "budget": {"steps": args.steps}, "seed": args.seed}
    started = time.monotonic()
    job = call(server.base, "POST", f"/v1/tasks/bench-{size}/tune", body)["job"]
    record = wait_for_job(server.base, job)
    seconds = time.monotonic() - started
    if record["state"] != "succeeded":
        raise SystemExit(f"the job for {size} examples ended {record['state']}: {record.get('error')}")
    cli_started = time.monotonic()
    output = subprocess.run(
        [args.bin, "tune", "--provider", "cpu", "--threads", str(args.threads), "--model", args.model,
         "--data", str(files["dir"]), "--seed", str(args.seed), "--steps", str(args.steps), "--run-rows", "16",
         "--out", str(files["dir"] / "cli-task.json")],
        check=True, capture_output=True, text=True).stdout
    cli = json.loads(output.strip().splitlines()[-1])
    return {"examples": size, "seconds": round(seconds, 1), "steps": record["step"],
            "det": record["result"]["det"], "test_accuracy": record["result"]["test_accuracy"],
            "cli_seconds": round(time.monotonic() - cli_started, 1), "cli_det": cli["det"],
            "cli_test_accuracy": cli["test"]["accuracy"]}


def predict_once(base, task, text):
    started = time.monotonic()
    call(base, "POST", f"/v1/tasks/{task}/predict", {"inputs": [text]}, timeout=60)
    return time.monotonic() - started


def saturation(base, task, texts, clients, seconds):
    """Predictions per second with `clients` closed-loop clients."""
    stop, counts = time.monotonic() + seconds, [0] * clients

    def client(i):
        while time.monotonic() < stop:
            predict_once(base, task, texts[(counts[i] * clients + i) % len(texts)])
            counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds


def open_loop(base, task, texts, rate, seconds):
    """Latencies (s) of requests sent every 1/rate seconds, each counted from when it was due."""
    latencies, lock = [], threading.Lock()

    def send(due, text):
        time.sleep(max(0.0, due - time.monotonic()))
        predict_once(base, task, text)
        with lock:
            latencies.append(time.monotonic() - due)

    start = time.monotonic() + 0.5
    count = int(rate * seconds)
    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
        for i in range(count):
            pool.submit(send, start + i / rate, texts[i % len(texts)])
    return sorted(latencies)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a task directory: train/dev/test.jsonl and labels.json")
    parser.add_argument("--bin", default="target/release/deltaspace")
    parser.add_argument("--model", default="models/all-MiniLM-L6-v2")
    parser.add_argument("--sizes", default="16,64,256", help="training examples in total, half per label")
    parser.add_argument("--steps", type=int, default=100, help="the step budget of every job and CLI run")
    parser.add_argument("--test", type=int, default=500, help="test examples scored")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--load-seconds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    parser.add_argument("--port", type=int, default=18093)
    parser.add_argument("--out", default="bench-out/jobs")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--sizes-from", help="take part 1's figures from this earlier --json file instead of "
                        "measuring them again (its runs are minutes long); the report says so")
    args = parser.parse_args()
    workdir = Path(args.out)
    workdir.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    labels = json.loads((data / "labels.json").read_text())
    names = [label["name"] for label in labels]
    train, dev, test = (read_jsonl(data / f"{split}.jsonl") for split in ("train", "dev", "test"))
    dev, test = per_label(dev, names, 16), test[: args.test]
    server = Server(args, workdir, "jobs", port=args.port)
    try:
        sizes = json.loads(Path(args.sizes_from).read_text())["sizes"] if args.sizes_from else []
        for size in ([] if args.sizes_from else (int(s) for s in args.sizes.split(","))):
            chosen = per_label(train, names, size // len(names))
            files = {"dir": workdir / f"task-{size}", "train": chosen, "dev": dev, "test": test}
            write_task_dir(files["dir"], labels, chosen, dev, test)
            sizes.append(time_to_served(args, server, labels, size, files))
            print(json.dumps(sizes[-1]), file=sys.stderr)
        task, texts = "bench-latency", [row["text"] for row in test]
        d = call(server.base, "GET", "/v1/info")["subspace"]["d"]
        call(server.base, "PUT", f"/v1/tasks/{task}", {"det": "lora", "z": [0.0] * d, "labels": labels})
        for _ in range(20):
            predict_once(server.base, task, texts[0])
        throughput = saturation(server.base, task, texts, args.clients, args.load_seconds / 2)
        rate = throughput / 2
        quiet = open_loop(server.base, task, texts, rate, args.load_seconds)
        body = {"labels": labels, "examples": per_label(train, names, 128), "dev_examples": dev,
                "budget": {"steps": 10000, "patience": 0, "seconds": args.load_seconds + 60}}
        job = call(server.base, "POST", "/v1/tasks/bench-background/tune", body)["job"]
        while call(server.base, "GET", f"/v1/jobs/{job}")["step"] < 1:
            time.sleep(0.2)
        busy = open_loop(server.base, task, texts, rate, args.load_seconds)
        steps = call(server.base, "GET", f"/v1/jobs/{job}")["step"]
        call(server.base, "DELETE", f"/v1/jobs/{job}")
    finally:
        server.stop()
    latency = {
        "saturation_per_s": round(throughput, 1), "rate_per_s": round(rate, 1),
        "quiet": {"n": len(quiet), "p50_ms": round(1e3 * quantile(quiet, 0.5), 1), "p99_ms": round(1e3 * quantile(quiet, 0.99), 1)},
        "tuning": {"n": len(busy), "p50_ms": round(1e3 * quantile(busy, 0.5), 1), "p99_ms": round(1e3 * quantile(busy, 0.99), 1),
                   "job_steps": steps},
    }
    latency["p99_ratio"] = round(latency["tuning"]["p99_ms"] / latency["quiet"]["p99_ms"], 2)
    latency["p50_ratio"] = round(latency["tuning"]["p50_ms"] / latency["quiet"]["p50_ms"], 2)
    report(args, sizes, latency)
    if args.sizes_from:
        print(f"\nThe first table is from an earlier run of this script ({args.sizes_from}), not measured again.")
    if args.json:
        Path(args.json).write_text(json.dumps({"sizes": sizes, "latency": latency}) + "\n")


def report(args, sizes, latency):
    print(f"Task: `{Path(args.data).name}`; {args.steps} steps at most (early stopping on), seed {args.seed}, "
          f"{args.test} test examples at most, 16 dev examples per label; ONNX Runtime threads: {args.threads}.\n")
    print("| training examples | POST → served (s) | steps | DET | job test accuracy | CLI `tune` (s) | CLI DET | CLI test accuracy |")
    print("|---|---|---|---|---|---|---|---|")
    for s in sizes:
        print(f"| {s['examples']} | {s['seconds']} | {s['steps']} | {s['det']} | {100 * s['test_accuracy']:.1f} % "
              f"| {s['cli_seconds']} | {s['cli_det']} | {100 * s['cli_test_accuracy']:.1f} % |")
    q, t = latency["quiet"], latency["tuning"]
    print(f"\nPredictions (1 text each) at {latency['rate_per_s']}/s, half the saturation throughput of "
          f"{latency['saturation_per_s']}/s ({args.clients} closed-loop clients), open loop for {args.load_seconds} s:\n")
    print("| | requests | p50 (ms) | p99 (ms) |")
    print("|---|---|---|---|")
    print(f"| no tune job | {q['n']} | {q['p50_ms']} | {q['p99_ms']} |")
    print(f"| a tune job running ({t['job_steps']} steps in the window) | {t['n']} | {t['p50_ms']} | {t['p99_ms']} |")
    print(f"| ratio | | {latency['p50_ratio']}× | {latency['p99_ratio']}× |")


if __name__ == "__main__":
    main()
