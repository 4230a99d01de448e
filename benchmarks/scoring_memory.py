"""Peak memory of ``zoobot-pipeline score`` (in process) against the number of tiles in the release.

Run: .venv/bin/python benchmarks/scoring_memory.py [--tiles 2 20] [--galaxies-per-tile 100] [--tile-size 1024]
     [--architecture test_resnet] [--size 32]

Simulates releases of the same tiles (same size, same sources per tile) but different tile counts, exports one model
(random weights: memory does not depend on them), scores each release with the CLI in its own subprocess and reads
that process's peak RSS from ``os.wait4``'s resource usage. The catalogue is streamed tile by tile, so the peaks
should agree within 10% (the issue's bound).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, nargs="+", default=[2, 20])
    parser.add_argument("--galaxies-per-tile", type=int, default=100)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--architecture", default="test_resnet")
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()

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
