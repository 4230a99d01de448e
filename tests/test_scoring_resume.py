"""Kill-and-resume for real: the score CLI in a subprocess, SIGKILLed mid-run, then run again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from test_scoring_support import assert_same_catalogue, make_package, make_release

from zoobot_pipeline.catalogue import CATALOGUE_JSON, part_files, part_metadata, read_catalogue
from zoobot_pipeline.data.release import Release
from zoobot_pipeline.scoring.pipeline import score_release

N_TILES = 12
CLI = str(Path(sys.executable).parent / "zoobot-pipeline")


def test_sigkill_mid_run_then_rerun_gives_the_clean_catalogue(tmp_path):
    package = make_package(tmp_path / "model")
    release = make_release(tmp_path / "release", 16 * N_TILES, N_TILES, seed=3)
    sources = Release.open(release)
    command = [CLI, "score", "--release", str(release), "--model", str(package), "--out", str(tmp_path / "cat"),
               "--quiet"]

    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not part_files(tmp_path / "cat") and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stdout.read().decode()

    finished = part_files(tmp_path / "cat")
    assert 1 <= len(finished) < N_TILES, "the kill did not land between the first and the last tile"
    assert not (tmp_path / "cat" / CATALOGUE_JSON).exists()
    # Only whole part files are visible: each holds every source of its tile, and the readers see nothing else.
    for path in finished:
        tile = part_metadata(path)["tile_id"]
        assert pq.read_table(path)["id_str"].to_pylist() == sources.tile_sources(tile)["id_str"].to_pylist()
    visible = sum(pq.read_metadata(p).num_rows for p in finished)
    assert read_catalogue(tmp_path / "cat").num_rows == visible == 16 * len(finished)
    assert len(pd.read_parquet(tmp_path / "cat" / "tiles")) == visible
    created = {p.name: part_metadata(p)["created"] for p in finished}

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(finished)} already done" in rerun.stdout
    assert {p.name: part_metadata(p)["created"] for p in finished} == created  # finished tiles were not redone
    assert not list((tmp_path / "cat" / "tiles").glob(".tmp-*"))

    resumed = read_catalogue(tmp_path / "cat")
    ids = resumed["id_str"].to_pylist()
    assert len(ids) == len(set(ids)) == sources.sources.num_rows  # no missing, no duplicate rows
    assert set(ids) == set(sources.sources["id_str"].to_pylist())
    score_release(release, package, tmp_path / "clean", progress=False)
    assert_same_catalogue(resumed, read_catalogue(tmp_path / "clean"), rtol=1e-6)
