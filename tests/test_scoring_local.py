"""The in-process scoring engine (:mod:`zoobot_pipeline.scoring.local`): prepare threads, the model in the calling
thread and a columns thread give exactly the rows of scoring each chunk one after another, in order, and the timeline
shows the stages overlapping."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
from test_scoring_support import make_package, make_release

from zoobot_pipeline.data.release import Release
from zoobot_pipeline.export import ModelPackage
from zoobot_pipeline.scoring import chunks, local
from zoobot_pipeline.scoring.chunks import (
    ChunkConfig,
    ChunkScorer,
    KernelThreads,
    TileJob,
    image_buffer,
    open_tile,
    prepare_chunk,
)
from zoobot_pipeline.scoring.local import Timeline, prepared_chunks, scored_chunks
from zoobot_pipeline.scoring.pipeline import default_prep_workers, kernel_threads

CHUNK = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[list[TileJob], ChunkScorer, ChunkConfig]:
    package = ModelPackage.open(make_package(tmp_path_factory.mktemp("model")))
    release = Release.open(make_release(tmp_path_factory.mktemp("sim") / "release", 64, 3, seed=4))
    jobs = [TileJob(t, release.tile_paths[t], release.tile_sources(t)) for t in release.tile_ids]
    config = ChunkConfig(release.bands, release.info.pixel_scale_arcsec, package.preprocessing)
    return jobs, ChunkScorer(package, batch_size=3), config


def _serial(jobs: list[TileJob], scorer: ChunkScorer, config: ChunkConfig) -> list[tuple[str, int, pa.Table]]:
    """Each chunk cut, preprocessed and scored in turn with the chunk module's own functions."""
    rows = []
    for job in jobs:
        tile, error = open_tile(job.tile_id, job.path, config.bands)
        for index in range(job.n_chunks(CHUNK)):
            rows.append((job.tile_id, index, scorer.score(prepare_chunk(tile, error, job.chunk(index, CHUNK), config))))
        tile.close()
    return rows


@pytest.mark.parametrize(("workers", "kernel_threads"), [(0, 1), (0, 3), (1, 1), (3, 1)])
def test_threads_give_the_serial_rows_in_order(setup, workers, kernel_threads):
    jobs, scorer, config = setup
    expected = _serial(jobs, scorer, config)
    timeline = Timeline()
    got = list(scored_chunks(jobs, scorer, config, CHUNK, workers, timeline, kernel_threads))
    assert [(c.tile_id, c.index) for c in got] == [(t, i) for t, i, _ in expected]
    assert all(c.n_chunks == jobs[0].n_chunks(CHUNK) for c in got if c.tile_id == jobs[0].tile_id)
    for chunk, (_, _, table) in zip(got, expected, strict=True):
        assert chunk.table.equals(table)
    assert sum(c.table.num_rows for c in got) == sum(j.sources.num_rows for j in jobs)
    names = {stage.name for stage in timeline.stages}
    assert names == {"prepare", "model", "columns"}
    assert len([s for s in timeline.stages if s.name == "model"]) == len(expected)
    threads = {s.name: {t.thread for t in timeline.stages if t.name == s.name} for s in timeline.stages}
    if workers:
        assert all(t.startswith("prepare") for t in threads["prepare"]) and len(threads["prepare"]) <= workers
        assert all(t.startswith("columns") for t in threads["columns"])
    else:
        assert len({t for ts in threads.values() for t in ts}) == 1


def test_kernel_threads_share_each_batch_and_give_the_same_images(setup, monkeypatch):
    jobs, _, config = setup
    job = jobs[0]
    tile, error = open_tile(job.tile_id, job.path, config.bands)
    sources = job.chunk(0, 20)
    alone = prepare_chunk(tile, error, sources, config)
    calls = []
    original = chunks.preprocess_windows

    def recording(data, offsets, *args, **kwargs):
        calls.append((threading.current_thread().name, len(offsets)))
        return original(data, offsets, *args, **kwargs)

    monkeypatch.setattr(chunks, "preprocess_windows", recording)
    with KernelThreads(3) as kernels:
        shared = prepare_chunk(tile, error, sources, config, kernels)
    tile.close()
    assert shared.rows.equals(alone.rows)
    n = len(alone.images)
    assert len(shared.images) == n > 10
    np.testing.assert_array_equal(np.stack(shared.images), np.stack(alone.images))
    parts = [size for _, size in calls]
    assert len(parts) == 3 and sum(parts) == n and max(parts) - min(parts) <= 1, "one batch split in three parts"
    names = [name for name, _ in calls]
    assert names.count(threading.current_thread().name) == 1, "the caller runs one part"
    assert all(name.startswith("kernel") for name in names if name != threading.current_thread().name), \
        "the others run on the kernel threads (which of them is up to the pool)"
    with pytest.raises(ValueError, match="kernel threads must be >= 1"):
        KernelThreads(0)


@pytest.mark.parametrize("workers", [0, 2])
def test_image_blocks_are_reused_and_give_the_same_rows(setup, monkeypatch, workers):
    jobs, scorer, config = setup
    expected = _serial(jobs, scorer, config)
    made = []

    def counting_buffer(config_, chunk_size):
        made.append(image_buffer(config_, chunk_size))
        return made[-1]

    monkeypatch.setattr(local, "image_buffer", counting_buffer)
    got = list(scored_chunks(jobs, scorer, config, CHUNK, workers))
    assert [c.table for c in got] == [table for *_, table in expected]
    n_chunks = sum(j.n_chunks(CHUNK) for j in jobs)
    assert n_chunks > workers + 2
    assert 0 < len(made) <= workers + 2, f"{len(made)} blocks for {n_chunks} chunks: one per chunk in flight"


def test_prepare_into_a_buffer_and_the_model_reads_it_in_place(setup):
    jobs, _, config = setup
    job = jobs[0]
    tile, error = open_tile(job.tile_id, job.path, config.bands)
    sources = job.chunk(0, 20)
    alone = prepare_chunk(tile, error, sources, config)
    buffer = image_buffer(config, 20)
    into = prepare_chunk(tile, error, sources, config, buffer=buffer)
    n = len(alone.images)
    assert into.buffer is buffer and isinstance(into.images, np.ndarray) and len(into.images) == n
    assert into.images.ctypes.data == buffer.ctypes.data, "the images are the block's first rows"
    np.testing.assert_array_equal(into.images, np.stack(alone.images))
    with pytest.raises(ValueError, match="cannot hold 20 images"):
        prepare_chunk(tile, error, sources, config, buffer=image_buffer(config, 19))
    tile.close()
    scorer = ChunkScorer(setup[1].session.package, batch_size=3)  # a fresh one: no stacking buffer yet
    ids = [f"g{i}" for i in range(n)]
    in_place = scorer.predict(into.images, ids)
    assert scorer._buffer is None, "an array's batches are not stacked"
    np.testing.assert_array_equal(in_place, scorer.predict(list(alone.images), ids))
    assert scorer._buffer is not None


def test_prepare_runs_ahead_of_the_model_and_tiles_are_closed(setup, monkeypatch):
    jobs, scorer, config = setup
    opened = []

    def counting_open(tile_id, path, bands):
        tile, error = open_tile(tile_id, path, bands)
        opened.append(tile)
        return tile, error

    monkeypatch.setattr(local, "open_tile", counting_open)
    timeline = Timeline()
    consumed = 0
    for _ in prepared_chunks(jobs, config, CHUNK, 2, timeline):
        consumed += 1
        if consumed == 1:
            # the first chunk is in hand: up to workers + 1 = 3 more may already be prepared, never more
            time.sleep(0.5)
            assert 2 <= len(timeline.stages) <= 4
    assert consumed == sum(j.n_chunks(CHUNK) for j in jobs)
    assert opened and all(tile.images == [] for tile in opened), "every tile opened by a worker is closed"


def test_bad_worker_count_is_refused(setup):
    jobs, _, config = setup
    with pytest.raises(ValueError, match="prep workers must be between 0 and"):
        list(prepared_chunks(jobs, config, CHUNK, -1))


def test_threads_by_default_use_every_core_in_turn():
    assert default_prep_workers("cpu") == 0, "on a CPU the stages take turns"
    assert default_prep_workers("cuda", cores=40) == 16 and default_prep_workers("cuda", cores=3) == 1
    assert kernel_threads(None, 0) == len(os.sched_getaffinity(0)), "taking turns, preprocessing gets every core"
    assert kernel_threads(3, 0) == 3, "as many as the model's threads when they are set"
    assert kernel_threads(None, 4) == 1, "preparing threads each prepare alone"
