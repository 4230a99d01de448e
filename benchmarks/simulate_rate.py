"""How fast ``simulate_release`` writes a synthetic release (galaxies per second, everything included).

    python benchmarks/simulate_rate.py --galaxies 2000 --tiles 4 --workers 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from zoobot_pipeline.data.synthetic.simulate import simulate_release


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--galaxies", type=int, default=2000)
    parser.add_argument("--tiles", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="processes rendering tiles")
    parser.add_argument("--schema", default="decals_dr5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="keep the release here (default: a temporary folder)")
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="simulate-rate-"))
    try:
        start = time.perf_counter()
        simulate_release(out, args.galaxies, args.tiles, schema=args.schema, seed=args.seed, workers=args.workers)
        elapsed = time.perf_counter() - start
        size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    print(f"{args.galaxies} galaxies, {args.tiles} tiles, {args.workers} worker(s), {os.cpu_count()} CPUs: "
          f"{elapsed:.1f} s, {args.galaxies / elapsed:.0f} galaxies/s, {size_mb:.0f} MiB written")


if __name__ == "__main__":
    main()
