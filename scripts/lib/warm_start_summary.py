"""The warm-start screen against quality.sh's rows of the same data (k = 16 or whole training sets), per (task,
seed), as markdown tables.

    python3 scripts/lib/warm_start_summary.py [LINES]    # from the repository root

LINES: the screen's lines [default: docs/results/screen-warm-start-train.jsonl, the code chosen on the training
examples; docs/results/screen-warm-start-labels.jsonl has the code of the upstream task whose label descriptions are
nearest, as `tune --init upstream` chooses since 2026-12-01 (fourteenth session), and
docs/results/screen-warm-start.jsonl the earlier choice on dev; docs/results/quality/minilm-d1024.jsonl takes
quality.sh's own `warm` row, the labels' choice that `tune` makes by default].
"guarded" is what `tune --init normal --init upstream` keeps: of the cold run (quality.sh's z + head line) and the
warm one (the screen's line), the warm one only where it leads on dev by more than START_MARGIN (1 point, `tune`'s
default since 2026-12-03, as `deltaspace report --quality` derives it), else the cold one. Every start of such a run trains on the
same rows it would alone, so this is the guarded run's result without running the cold start twice. Means are
over the (task, seed) pairs that have every column; the spread is the standard deviation of the per-seed means
of the tasks, over the seeds where all of them are in. Per seed, the means are also given over the tasks every
seed has (a seed still running is then compared on the same tasks). Then the paired differences of guarded and
random over the (task, seed) pairs (mean, sd, standard error); the mean the guard would give with other margins
(0, the rule until 2026-12-03, which kept the warm start wherever it led on dev; 0.5 and 2 points) and with a margin
that widens as dev sets shrink (0.5 and 1 standard error of dev accuracy, sqrt(p(1 - p) / n) with p the two starts'
mean dev accuracy and n the dev examples); and, where the
two starts tie on dev, the mean the rule of margin 0 would give if it broke ties by dev macro-F1.
On the whole training sets, whose dev set is the same at every seed, a control for the selection itself: per
task, the better on dev of two seeds' runs of one row (the earlier seed on a tie), as if that row too had been
tuned from two starts and kept the better; for random and the cold z + head, over each pair of seeds that has
every task.

A second table reads docs/results/screen-warm-start-choice.jsonl (scripts/score-upstream-codes.sh): per (task, k,
seed), the code the training examples choose and the code dev chooses, and the correlation over the 17 codes of
their macro-F1 on the two (how much of a code's score on 32 examples is the code rather than the draw).
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

RESULTS = Path("docs/results")
START_MARGIN = 0.01  # deltaspace_core::tuning::tune::START_MARGIN: tune's default
MARGINS = (0.0, 0.005, 0.02)  # the alternatives shown beside it
STANDARD_ERRORS = (0.5, 1.0)  # margins in standard errors of dev accuracy, shown beside them


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main():
    warm_starts()
    selection_alone()
    choices()


def warm_starts():
    screen = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "screen-warm-start-train.jsonl"
    rows = {}
    for name in ("quality/minilm-d1024.jsonl", "quality/baselines.jsonl"):
        for line in lines(RESULTS / name):
            rows[(line["row"], line["task"], line["shots"], line["seed"])] = line
    by_shots = defaultdict(list)
    for warm in lines(screen):
        if warm.get("row", "warm") != "warm":
            continue  # quality.sh's lines of the other rows
        key = (warm["task"], warm["shots"], warm["seed"])
        cold, random = rows.get(("z+head", *key)), rows.get(("random", *key))
        if cold is None or random is None:
            continue
        guarded, tie_by_f1 = guard(cold, warm), guard(cold, warm, margin=0.0, ties_by_macro_f1=True)
        probe = rows.get(("probe", *key))
        by_shots[warm["shots"]].append({
            "task": key[0], "seed": key[2], "source": warm.get("source", "labels"),
            "cold": cold["test"]["accuracy"], "warm": warm["test"]["accuracy"],
            "guarded": guarded["test"]["accuracy"], "random": random["test"]["accuracy"],
            "probe": probe["test"]["accuracy"] if probe else None,
            "tie_by_f1": tie_by_f1["test"]["accuracy"],
            "tie": warm["dev"]["accuracy"] == cold["dev"]["accuracy"],
            "by_margin": {m: guard(cold, warm, margin=m)["test"]["accuracy"] for m in MARGINS},
            "by_standard_errors": {
                c: guard(cold, warm, margin=c * dev_standard_error(cold, warm)) for c in STANDARD_ERRORS
            },
            "warm_line": warm,
            "picked": "warm" if guarded is warm else "cold",
        })
    for shots, table in sorted(by_shots.items()):
        print(f"\n{'k = ' + shots + ' per label' if shots != 'full' else 'Whole training sets'}:\n")
        summarize(table)


def guard(cold, warm, margin=START_MARGIN, ties_by_macro_f1=False):
    """The start the guard keeps: the warm one where its dev accuracy leads the cold one's by more than the margin,
    else the cold one. With a margin of 0 and ties_by_macro_f1, a tie on dev goes to the better by dev macro-F1."""
    lead = warm["dev"]["accuracy"] - cold["dev"]["accuracy"]
    if lead == 0 and ties_by_macro_f1:
        return warm if warm["dev"]["macro_f1"] > cold["dev"]["macro_f1"] else cold
    # As tune's `replaces`: a lead of exactly the margin is not more than it, rounding aside.
    return warm if lead > (margin + 1e-6 if margin else 0) else cold


def dev_standard_error(cold, warm):
    """The standard error of a dev accuracy near the two starts' mean, on their dev set."""
    p = (cold["dev"]["accuracy"] + warm["dev"]["accuracy"]) / 2
    return (p * (1 - p) / cold["dev"]["n"]) ** 0.5


def summarize(table):
    print("| task | seed | code | z + head cold | warm | guarded (picked) | random subspace |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(table, key=lambda r: (r["seed"], r["task"])):
        print(f"| {r['task']} | {r['seed']} | {r['source']} | {100 * r['cold']:.1f} | {100 * r['warm']:.1f} | "
              f"{100 * r['guarded']:.1f} ({r['picked']}) | {100 * r['random']:.1f} |")
    columns = ("cold", "warm", "guarded", "random")
    means = {c: 100 * statistics.mean(r[c] for r in table) for c in columns}
    print(f"| mean of {len(table)} | | | " + " | ".join(f"{means[c]:.1f}" for c in columns) + " |")
    by_seed = defaultdict(list)
    for r in table:
        by_seed[r["seed"]].append(r)
    tasks = {r["task"] for r in table}
    full = [seed_rows for seed_rows in by_seed.values() if {r["task"] for r in seed_rows} == tasks]
    if len(full) >= 2:
        spread = {c: 100 * statistics.stdev(statistics.mean(r[c] for r in s) for s in full) for c in columns}
        print(f"\nOver the {len(full)} seeds with every task: spread (sd of per-seed means) "
              + ", ".join(f"{c} {spread[c]:.1f}" for c in columns))
    if len(by_seed) >= 2:
        per_seed_on_shared_tasks(by_seed, columns)
    ties = [r for r in table if r["tie"]]
    if ties:
        by_f1 = 100 * statistics.mean(r["tie_by_f1"] for r in table)
        print(f"\nTies on dev: {len(ties)} of {len(table)}; with a margin of 0, breaking them by dev macro-F1 instead "
              f"of keeping the cold start, guarded's mean of {len(table)} would be {by_f1:.1f} "
              f"(against {means['guarded']:.1f}).")
    differences = [100 * (r["guarded"] - r["random"]) for r in table]
    if len(differences) >= 2:
        error = statistics.stdev(differences) / len(differences) ** 0.5
        print(f"\nGuarded minus random over the {len(differences)} (task, seed) pairs: mean {statistics.mean(differences):+.1f}, "
              f"sd {statistics.stdev(differences):.1f}, standard error of the mean {error:.1f} points")
    by_margin = {m: 100 * statistics.mean(r["by_margin"][m] for r in table) for m in MARGINS}
    print(f"\nWith another margin (the warm start kept only where it leads on dev by more), guarded's mean of "
          f"{len(table)} would be " + ", ".join(f"{v:.1f} ({100 * m:g} points)" for m, v in by_margin.items())
          + f" (against {means['guarded']:.1f} at {100 * START_MARGIN:g}).")
    def by_errors(c):
        kept = [r["by_standard_errors"][c] for r in table]
        mean = 100 * statistics.mean(line["test"]["accuracy"] for line in kept)
        warm = sum(line is r["warm_line"] for line, r in zip(kept, table))
        return f"{mean:.1f} at {c:g} standard errors (warm kept on {warm} of {len(table)})"
    warm_at_margin = sum(r["picked"] == "warm" for r in table)
    print("With a margin in standard errors of one dev accuracy (wider on smaller dev sets), it would be "
          + ", ".join(by_errors(c) for c in STANDARD_ERRORS)
          + f" (warm kept on {warm_at_margin} at {100 * START_MARGIN:g} point).")


def selection_alone():
    """The best of two seeds on dev, per task, against the mean of the two seeds (whole training sets)."""
    runs = defaultdict(dict)
    for line in lines(RESULTS / "quality/minilm-d1024.jsonl"):
        if line["shots"] == "full" and line["row"] in ("random", "z+head"):
            runs[(line["row"], line["seed"])][line["task"]] = line
    tasks = {task for by_task in runs.values() for task in by_task}
    print("\nWhole training sets, the selection alone: per task the better on dev of two seeds' runs of one row, "
          "against the mean of the two seeds:\n")
    print("| row | seeds | best of the two on dev | mean of the two |")
    print("|---|---|---|---|")
    for row in ("random", "z+head"):
        seeds = sorted(seed for (r, seed), by_task in runs.items() if r == row and by_task.keys() == tasks)
        for i, first in enumerate(seeds):
            for second in seeds[i + 1:]:
                a, b = runs[(row, first)], runs[(row, second)]
                kept = [b[t] if b[t]["dev"]["accuracy"] > a[t]["dev"]["accuracy"] else a[t] for t in sorted(tasks)]
                both = [line["test"]["accuracy"] for t in tasks for line in (a[t], b[t])]
                print(f"| {row} | {first}, {second} | {100 * statistics.mean(k['test']['accuracy'] for k in kept):.1f} "
                      f"| {100 * statistics.mean(both):.1f} |")


def per_seed_on_shared_tasks(by_seed, columns):
    shared = set.intersection(*({r["task"] for r in rows} for rows in by_seed.values()))
    if not shared:
        return
    with_probe = all(r["probe"] is not None for rows in by_seed.values() for r in rows if r["task"] in shared)
    shown = ("probe", *columns) if with_probe else columns
    print(f"\nPer seed, mean over the tasks every seed has ({', '.join(sorted(shared))}):\n")
    print("| seed | " + " | ".join(shown) + " |")
    print("|---|" + "---|" * len(shown))
    for seed, rows in sorted(by_seed.items()):
        kept = [r for r in rows if r["task"] in shared]
        print(f"| {seed} | " + " | ".join(f"{100 * statistics.mean(r[c] for r in kept):.1f}" for c in shown) + " |")


def best(scores):
    """The source whose scores are best (macro-F1, then accuracy), the first of equals in the subspace's order of
    the codes (by name), as screen-warm-start.sh's WARM_CHOICE=train chooses."""
    return max(sorted(scores), key=lambda source: (scores[source]["macro_f1"], scores[source]["accuracy"]))


def choices():
    by_split = defaultdict(dict)
    for line in lines(RESULTS / "screen-warm-start-choice.jsonl"):
        by_split[(line["unseen"], line["shots"], line["seed"], line["split"])][line["source"]] = line
    print("\n| task | k per label | seed | chosen on train | chosen on dev | r (train, dev) over the codes |")
    print("|---|---|---|---|---|---|")
    draws = {key[:3] for key in by_split}
    for task, shots, seed in sorted(draws, key=lambda k: (k[1] == "full", k[2], k[0])):
        train, dev = by_split.get((task, shots, seed, "train")), by_split.get((task, shots, seed, "dev"))
        if not train or not dev or train.keys() != dev.keys():
            continue
        sources = sorted(train)
        r = statistics.correlation([train[s]["macro_f1"] for s in sources], [dev[s]["macro_f1"] for s in sources])
        shown = "all (first 300)" if shots == "full" else shots
        print(f"| {task} | {shown} | {seed if shots != 'full' else ''} | {best(train)} | {best(dev)} | {r:+.2f} |")


if __name__ == "__main__":
    main()
