#!/usr/bin/env python3
"""Replays early stopping on the dev traces of scripts/screen-schedule.sh.

For each (task, DET) traced without early stopping, and each schedule (patience, at most S steps), prints where
tune would have stopped, the step whose z it would have kept (the best dev so far, as tune keeps it) and that dev
accuracy; then, per DET, the mean over the units whose traces reach every schedule's end, so that every mean is over
the same units. Dev is the examples tune's own evaluations use, and a patience also stops a unit at a perfect dev
accuracy, as tune does, so the kept step is exactly tune's.

    python3 scripts/replay_patience.py docs/results/screen-schedule-trace.jsonl [--every 25] [--horizons 500 1000]
"""

import argparse
import json
from collections import defaultdict

PATIENCES = [4, 8, 12, 0]  # 0: no early stopping


def curves(path):
    """{(task, det): {step: dev accuracy}}, later lines overriding earlier ones (a resumed run re-traces)."""
    by_unit = defaultdict(dict)
    with open(path) as lines:
        for line in lines:
            point = json.loads(line)
            if point["split"] == "dev" and point["step"] > 0:
                by_unit[(point["task"], point["det"])][point["step"]] = point["accuracy"]
    return by_unit


def schedules(horizons):
    """(patience, at most steps) for every patience at every horizon."""
    return [(patience, steps) for steps in horizons for patience in PATIENCES]


def replay(curve, every, patience, steps):
    """(stop step, kept step, kept dev) of tune's early stopping on one unit's dev curve."""
    best, kept, stale, step = -1.0, 0, 0, 0
    for step in range(every, steps + 1, every):
        if step not in curve:
            return None  # the trace does not reach this schedule
        if curve[step] > best:
            best, kept, stale = curve[step], step, 0
            if patience and best >= 1.0:
                break
        else:
            stale += 1
            if patience and stale == patience:
                break
    return step, kept, best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("--every", type=int, default=25, help="tune's --eval-every")
    parser.add_argument("--horizons", type=int, nargs="+", default=[500, 1000], help="most steps, each replayed")
    args = parser.parse_args()
    plan = schedules(args.horizons)
    by_unit = curves(args.trace)
    means = defaultdict(list)
    print("task det: (patience, steps) -> stop/kept step dev%")
    for (task, det), curve in sorted(by_unit.items()):
        results = [replay(curve, args.every, patience, steps) for patience, steps in plan]
        cells = [f"({p or '∞'},{s}) {r[0]}/{r[1]} {100 * r[2]:.1f}" for (p, s), r in zip(plan, results) if r]
        print(f"{task} {det}: " + ("; ".join(cells) or "its trace is too short for any schedule"))
        if all(results):
            for schedule, (stop, _, dev) in zip(plan, results):
                means[(det, *schedule)].append((dev, stop))
    print("\nmean kept dev % and mean steps run, per DET and schedule,")
    print("over the units whose traces reach every schedule")
    for (det, patience, steps), rows in sorted(means.items()):
        dev = 100 * sum(r[0] for r in rows) / len(rows)
        ran = sum(r[1] for r in rows) / len(rows)
        print(f"{det} patience {patience or '∞'} steps {steps}: {dev:.1f} over {len(rows)} units, {ran:.0f} steps")


if __name__ == "__main__":
    main()
