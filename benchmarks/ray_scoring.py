"""Ray Data scoring against in-process scoring on one machine: fixed start-up cost and per-galaxy rate, apart.

Run after ``scoring_throughput.py --work DIR`` (it trains and exports the model this benchmark scores with):
    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/ray_scoring.py --work DIR [--galaxies 2000 4000]
        [--tiles-per-1000 4] [--passes 2] [--architecture efficientnet_b0]

Simulates one release per ``--galaxies`` size (same source density: ``--tiles-per-1000`` tiles per 1,000 galaxies)
and scores each, fp32, with ``score_release`` in this process and on Ray Data (a local Ray started beforehand, so its
own start-up is excluded; then a run that starts Ray itself), ``--passes`` times each, the paths interleaved. A
run's wall time is ``fixed + n / rate``: the fixed cost (Ray: starting the read-task workers and the actor pool,
imports, the onnxruntime session in the actor; in-process: the session and warm-up) and the per-galaxy rate come
from the least-squares line through the sizes' median times. Prints the rates at each size, the Ray / in-process
ratios (start-up excluded and included) and the per-galaxy ratio with the fixed costs, and each path's start-up as
the chunks' arrivals at the writer show it (the first chunk's wait less the pace of the later ones).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

from zoobot_pipeline.data.synthetic.simulate import simulate_release
from zoobot_pipeline.scoring.local import Timeline
from zoobot_pipeline.scoring.pipeline import score_release

PATHS = ("in-process", "ray (started before)")


def _seconds(release: Path, package: Path, out: Path, use_ray: bool,
             start_ups: list[tuple[float, float]] | None = None) -> float:
    """Wall seconds of one scoring run; appends its start-up (:func:`_start_up`) to ``start_ups``."""
    timeline = Timeline()
    start = time.perf_counter()
    score_release(release, package, out, use_ray=use_ray, overwrite=True, progress=False, batch_size=8,
                  timeline=timeline)
    if start_ups is not None:
        start_ups.append(_start_up(timeline))
    return time.perf_counter() - start


def _start_up(timeline: Timeline) -> tuple[float, float]:
    """``(start-up seconds, steady galaxies/s)`` from the chunks' arrivals at the writer: the seconds before the
    first chunk arrived less what each later chunk took (per galaxy, their median), and that later pace."""
    arrivals = [s for s in timeline.stages if s.name == "arrived"]
    first, rest = arrivals[0], arrivals[1:]
    per_galaxy = statistics.median((s.end - s.start) / s.galaxies for s in rest if s.galaxies)
    return (first.end - first.start) - per_galaxy * first.galaxies, 1 / per_galaxy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="scoring_throughput.py's --work folder")
    parser.add_argument("--architecture", default="efficientnet_b0")
    parser.add_argument("--galaxies", type=int, nargs="+", default=[2000, 4000])
    parser.add_argument("--tiles-per-1000", type=float, default=4.0)
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()
    package = args.work / f"package-{args.architecture}"
    if not (package / "model.json").is_file():
        parser.error(f"{package / 'model.json'} does not exist: run scoring_throughput.py --work {args.work} first")
    if len(set(args.galaxies)) < 2 or min(args.galaxies) < 100:
        parser.error(f"--galaxies needs two or more different sizes of at least 100, got {args.galaxies}")
    if args.passes < 1 or not args.tiles_per_1000 > 0:
        parser.error("--passes must be at least 1 and --tiles-per-1000 above 0")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        releases = {}
        for n in sorted(args.galaxies):
            releases[n] = args.work / f"release-{n}"
            if not (releases[n] / "release.json").is_file():
                simulate_release(releases[n], n, max(1, round(n * args.tiles_per_1000 / 1000)), seed=n)
        times: dict[str, dict[int, list[float]]] = {path: {n: [] for n in releases} for path in PATHS}
        start_ups: dict[str, list[tuple[float, float]]] = {path: [] for path in PATHS}
        ray.init(include_dashboard=False, log_to_driver=False)
        try:
            for p in range(args.passes):
                for n, release in releases.items():
                    order = PATHS if p % 2 == 0 else PATHS[::-1]
                    for path in order:
                        seconds = _seconds(release, package, tmp / "catalogue", path != "in-process",
                                           start_ups[path])
                        times[path][n].append(seconds)
                        print(f"pass {p + 1}, {n} galaxies, {path}: {seconds:.1f} s ({n / seconds:.1f}/s)",
                              flush=True)
        finally:
            ray.shutdown()
        smallest = min(releases)
        started_by_run: list[tuple[float, float]] = []
        included = _seconds(releases[smallest], package, tmp / "catalogue", True, started_by_run)
        print(f"{smallest} galaxies, ray started by the run: {included:.1f} s ({smallest / included:.1f}/s)")

    medians = {path: {n: statistics.median(values) for n, values in by_n.items()} for path, by_n in times.items()}
    print("\ngalaxies/s (median of the passes), Ray Data / in-process:")
    for n in releases:
        rates = {path: n / medians[path][n] for path in PATHS}
        print(f"  {n:>6} galaxies: in-process {rates['in-process']:.1f}, Ray {rates[PATHS[1]]:.1f}  "
              f"ratio {rates[PATHS[1]] / rates['in-process']:.3f}")
    print(f"  {smallest:>6} galaxies, Ray started by the run: {smallest / included:.1f}  ratio "
          f"{medians['in-process'][smallest] / included:.3f}")
    sizes = np.array(list(releases), dtype=np.float64)
    fits = {path: np.polyfit(sizes, [medians[path][n] for n in releases], 1) for path in PATHS}
    print("wall time = fixed + galaxies / rate (least squares over the sizes):")
    for path, (slope, fixed) in fits.items():
        print(f"  {path:>22}: fixed {fixed:5.1f} s, rate {1 / slope:6.1f} galaxies/s")
    print(f"  per-galaxy rate, Ray Data / in-process: {fits['in-process'][0] / fits[PATHS[1]][0]:.3f}")
    print("from the chunks' arrivals at the writer (medians of the runs): start-up = the first chunk's wait less the"
          " later chunks' pace")
    for path, values in [*start_ups.items(), ("ray (started by the run)", started_by_run)]:
        print(f"  {path:>24}: start-up {statistics.median(v[0] for v in values):5.1f} s, later chunks "
              f"{statistics.median(v[1] for v in values):5.1f} galaxies/s")
    pace = {path: statistics.median(v[1] for v in values) for path, values in start_ups.items()}
    print(f"  later chunks' pace, Ray Data / in-process: {pace[PATHS[1]] / pace['in-process']:.3f}")


if __name__ == "__main__":
    main()
