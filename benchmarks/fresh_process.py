"""What a fresh scoring process pays before and after the work: each phase of a fresh process on the wall clock.

Run: .venv/bin/python benchmarks/fresh_process.py --release DIR --model DIR [--runs 3] [--batch 32] [--samples 5]
     (e.g. the release and package that ``scoring_throughput.py --work DIR`` leaves in DIR)

Starts ``--runs`` fresh Python processes, one after the other. Each imports what the ``zoobot-pipeline`` executable
imports, scores the release twice with ``score_release`` (the first call pays the first-use costs: numba loading its
compiled kernels, pandas imported by pyarrow, astropy's table machinery; the second is warm), and exits the way the
executable does (:func:`zoobot_pipeline.cli.run`). Printed per run and as medians: Python's start, the imports, the
first and the warm call (with the time before the first stage and the first chunk's preparing), and the exit, timed
by this process from the child's last time stamp. "fresh - warm" is the issue's cold-start figure: the first ``score``
of a fresh process (imports included) less a warm call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import atexit, gc, json, os, sys, time
t_start = time.time()
import zoobot_pipeline.cli  # what the executable imports before a command runs
from zoobot_pipeline.scoring.local import Timeline
from zoobot_pipeline.scoring.pipeline import score_release
t_imported = time.time()
release, model, out, batch, samples = sys.argv[1:6]

def timed():
    timeline, start, clock = Timeline(), time.time(), time.perf_counter()
    score_release(release, model, out, batch_size=int(batch), mc_samples=int(samples), overwrite=True, progress=False,
                  timeline=timeline)
    stages = [s for s in timeline.stages if s.name != "arrived"]
    prepare = [s.end - s.start for s in stages if s.name == "prepare"]
    return {"call": time.time() - start, "before first stage": min(s.start for s in stages) - clock,
            "first prepare": prepare[0]}

first = timed()
warm = timed()
atexit.register(gc.freeze)  # as zoobot_pipeline.cli.run does
print(json.dumps({"python start": t_start - float(os.environ["FRESH_LAUNCH"]), "imports": t_imported - t_start,
                  "first": first, "warm": warm, "end": time.time()}), flush=True)
"""


def _one_run(args: argparse.Namespace) -> dict[str, float]:
    launch = time.time()
    done = subprocess.run([sys.executable, "-c", CHILD, str(args.release), str(args.model), str(args.work),
                           str(args.batch), str(args.samples)], check=True, capture_output=True, text=True,
                          env={**os.environ, "FRESH_LAUNCH": repr(launch)})
    exited = time.time()
    child = json.loads(done.stdout.strip().splitlines()[-1])
    first, warm = child["first"], child["warm"]
    return {"python start": child["python start"], "imports": child["imports"], "first call": first["call"],
            "warm call": warm["call"], "first: before first stage": first["before first stage"],
            "warm: before first stage": warm["before first stage"], "first: first prepare": first["first prepare"],
            "warm: first prepare": warm["first prepare"], "exit": exited - child["end"],
            "fresh - warm": child["python start"] + child["imports"] + first["call"] - warm["call"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True, help="model package directory")
    parser.add_argument("--work", type=Path, default=Path("fresh-process-catalogue"),
                        help="catalogue directory the runs write (replaced on every call)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    for path, needed in ((args.release, "release.json"), (args.model, "model.json")):
        if not (path / needed).is_file():
            parser.error(f"{path}: no {needed} here")
    runs = []
    for i in range(args.runs):
        runs.append(_one_run(args))
        print(f"run {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[-1].items()), flush=True)
    print(f"\nseconds, median of {args.runs} fresh processes (batch {args.batch}, S={args.samples}):")
    for key in runs[0]:
        print(f"  {key:28s} {statistics.median(r[key] for r in runs):6.2f}")


if __name__ == "__main__":
    main()
