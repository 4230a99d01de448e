"""Peak memory of ``zoobot-pipeline score`` (in process) against the number of tiles in the release, and of planning
a score run against the number of sources (partitioned source catalogues, up to 10^8 rows).

Run: .venv/bin/python benchmarks/scoring_memory.py [--tiles 2 20] [--galaxies-per-tile 100] [--tile-size 1024]
     [--architecture test_resnet] [--size 32] [--rows 1e5 1e6 1e7 [1e8]] [--single-file-rows 1e5 1e6 1e7]
     [--only score|planning]

Scoring: simulates releases of the same tiles (same size, same sources per tile) but different tile counts, exports
one model (random weights: memory does not depend on them), scores each release with the CLI in its own subprocess
and reads that process's peak RSS from ``os.wait4``'s resource usage. The catalogue is streamed tile by tile, so the
peaks should agree within 10% (the issue's bound).

Planning: writes source catalogues of ``--rows`` rows (metadata only: 20 tiles without files, Parquet files of 10^5
rows each; 10^8 rows take ~3 GB of disk and a few minutes) and, each in its own process, opens the release and plans
the score run (``Release.open`` + ``plan_jobs``: every file checked, per-tile summaries kept). Printed per size: peak
of Python (tracemalloc) plus Arrow (memory pool) allocations during planning, the process's peak RSS (imports
included) and the seconds; then the same for a single-file ``sources.parquet`` of ``--single-file-rows`` rows (read
whole, the layout before partitioned catalogues), for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.synthetic.simulate import simulate_release
from zoobot_pipeline.export import export_package
from zoobot_pipeline.models import ModelConfig
from zoobot_pipeline.models.torch.checkpoint import save_checkpoint
from zoobot_pipeline.models.torch.model import build_model

CLI = str(Path(sys.executable).parent / "zoobot-pipeline")


# Peak RSS is measured by a small launcher process: a child forked from this (large) process would count this
# process's pages in its own ru_maxrss (Linux keeps the pre-exec high-water mark).
_LAUNCHER = """
import os, subprocess, sys
with open(sys.argv[1], "w") as log:
    pid = subprocess.Popen(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT).pid
    _, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _peak_rss(command: list[str], log: Path) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of ``command`` run to completion in its own process."""
    start = time.perf_counter()
    launched = subprocess.run([sys.executable, "-c", _LAUNCHER, str(log), *command], capture_output=True, text=True)
    if launched.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({launched.returncode}):\n{log.read_text()}{launched.stderr}")
    return int(launched.stdout) / 1024, time.perf_counter() - start  # ru_maxrss is in KiB on Linux


ROWS_PER_FILE = 100_000
PLAN_TILES = 20

_PLAN = """
import json, sys, time, tracemalloc
import pyarrow as pa
from zoobot_pipeline.data.release import Release
from zoobot_pipeline.scoring.pipeline import plan_jobs
tracemalloc.start()
start = time.perf_counter()
release = Release.open(sys.argv[1], allow_missing_tiles=True, columns=["r50_arcsec"])
jobs, _ = plan_jobs(release, ["id_str", "ra", "dec", "tile_id", "r50_arcsec"], {}, in_memory=False)
seconds = time.perf_counter() - start
print(json.dumps({"peak": tracemalloc.get_traced_memory()[1] + pa.default_memory_pool().max_memory(),
                  "seconds": seconds,
                  "rows": sum(job.sources.num_rows for job in jobs)}))
"""


def _write_sources(root: Path, n_rows: int, single_file: bool) -> Path:
    """A release of ``n_rows`` sources on :data:`PLAN_TILES` tiles without files: one sources.parquet, or a directory
    of files of :data:`ROWS_PER_FILE` rows; written a file at a time."""
    rng = np.random.default_rng(0)
    tiles = pa.array([f"tile_{i:04d}" for i in range(PLAN_TILES)]).take(pa.array(np.arange(ROWS_PER_FILE) % PLAN_TILES))
    sources = root / "sources.parquet"
    if not single_file:
        sources.mkdir(parents=True)
    writer = None
    for start in range(0, n_rows, ROWS_PER_FILE):
        n = min(ROWS_PER_FILE, n_rows - start)
        table = pa.table({"id_str": pc.cast(pa.array(np.arange(start, start + n)), pa.string()),
                          "ra": rng.uniform(0, 360, n), "dec": rng.uniform(-90, 90, n), "tile_id": tiles.slice(0, n),
                          "r50_arcsec": np.full(n, 2.0)})
        if single_file:
            if writer is None:
                root.mkdir(parents=True)
                writer = pq.ParquetWriter(sources, table.schema, use_dictionary=["tile_id"], compression="none")
            writer.write_table(table)
        else:
            pq.write_table(table, sources / f"part-{start // ROWS_PER_FILE:06d}.parquet", use_dictionary=["tile_id"],
                           compression="none")
    if writer is not None:
        writer.close()
    (root / "release.json").write_text(json.dumps({"name": "plan", "survey": "synthetic", "bands": ["g", "r", "z"],
                                                   "pixel_scale_arcsec": 0.262, "created": "2025-01-01"}))
    return root


def _plan_rows(tmp: Path, sizes: list[int], single_file: bool) -> list[tuple[int, dict, float]]:
    """``(rows, measurement, seconds to write)`` of planning each size, each in its own process; the release is
    deleted after its measurement."""
    rows = []
    for n_rows in sizes:
        start = time.perf_counter()
        release = _write_sources(tmp / f"plan-{n_rows}-{single_file}", n_rows, single_file)
        written = time.perf_counter() - start
        log = tmp / f"plan-{n_rows}-{single_file}.txt"
        rss, _ = _peak_rss([sys.executable, "-c", _PLAN, str(release)], log)
        measured = {**json.loads(log.read_text().strip().splitlines()[-1]), "rss": rss * 2**20}
        assert measured["rows"] == n_rows, measured
        rows.append((n_rows, measured, written))
        subprocess.run(["rm", "-rf", str(release)], check=True)
    return rows


def _print_planning(title: str, rows: list[tuple[int, dict, float]]) -> None:
    print(title)
    print(f"{'sources':>11s} {'planning peak MiB':>18s} {'peak RSS MiB':>13s} {'plan s':>7s} {'write s':>8s}")
    for n_rows, m, written in rows:
        print(f"{n_rows:11.0e} {m['peak'] / 2**20:18.1f} {m['rss'] / 2**20:13.1f} {m['seconds']:7.1f} {written:8.1f}")
    if len(rows) > 1:
        (small, s, _), (large, b, _) = rows[0], rows[-1]
        ratio = b["peak"] / s["peak"]
        verdict = "within" if ratio <= 1.1 else "OUTSIDE"
        print(f"planning peak ratio {large:.0e} / {small:.0e} sources: {ratio:.3f} ({verdict} the 10% bound)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, nargs="+", default=[2, 20])
    parser.add_argument("--galaxies-per-tile", type=int, default=100)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--architecture", default="test_resnet")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--rows", type=float, nargs="+", default=[1e5, 1e6, 1e7],
                        help="source counts to plan from a partitioned catalogue (1e8: ~3 GB of disk)")
    parser.add_argument("--single-file-rows", type=float, nargs="*", default=[1e5, 1e6, 1e7],
                        help="source counts to plan from one sources.parquet, for comparison")
    parser.add_argument("--only", choices=["score", "planning"], default=None)
    args = parser.parse_args()

    if args.only != "score":
        with tempfile.TemporaryDirectory() as tmp_name:
            partitioned = _plan_rows(Path(tmp_name), [int(n) for n in args.rows], single_file=False)
            single = _plan_rows(Path(tmp_name), [int(n) for n in args.single_file_rows], single_file=True)
        _print_planning(f"planning a score run, partitioned sources.parquet ({ROWS_PER_FILE:.0e} rows per file, "
                        f"{PLAN_TILES} tiles)", partitioned)
        if single:
            _print_planning("planning a score run, one sources.parquet (read whole)", single)
    if args.only == "planning":
        return

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        preprocessing = PreprocessingConfig.gz_decals(input_size=args.size)
        model = build_model(ModelConfig.from_preprocessing(preprocessing, architecture=args.architecture)).eval()
        checkpoint = save_checkpoint(model, tmp / "checkpoint", preprocessing)
        package = export_package(checkpoint, tmp / "package")
        rows = []
        for n_tiles in args.tiles:
            release = simulate_release(tmp / f"release-{n_tiles}", args.galaxies_per_tile * n_tiles, n_tiles,
                                       tile_size=args.tile_size, seed=0, labelled_fraction=0.0,
                                       workers=os.cpu_count() or 1)
            command = [CLI, "score", "--release", str(release), "--model", str(package), "--out",
                       str(tmp / f"catalogue-{n_tiles}"), "--quiet"]
            rows.append((n_tiles, *_peak_rss(command, tmp / f"log-{n_tiles}.txt")))

    print(f"{args.architecture} at {args.size} px, {args.galaxies_per_tile} galaxies per {args.tile_size}^2 px tile")
    print(f"{'tiles':>6s} {'galaxies':>9s} {'peak RSS MiB':>13s} {'seconds':>8s}")
    for n_tiles, rss, seconds in rows:
        print(f"{n_tiles:6d} {n_tiles * args.galaxies_per_tile:9d} {rss:13.1f} {seconds:8.1f}")
    (small, small_rss, _), (large, large_rss, _) = rows[0], rows[-1]
    ratio = large_rss / small_rss
    verdict = "within" if ratio <= 1.1 else "OUTSIDE"
    print(f"peak RSS ratio {large} / {small} tiles: {ratio:.3f} ({verdict} the 10% bound)")


if __name__ == "__main__":
    main()
