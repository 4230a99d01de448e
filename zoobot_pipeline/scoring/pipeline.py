"""Score a data release with a model package into a Parquet catalogue (layout: :mod:`.catalogue`).

Before any output is written, :func:`score_release` checks the options' ranges (``mc_samples`` at most
:data:`MAX_MC_SAMPLES`, batch and chunk sizes, threads, seed) and that one chunk's arrays fit in half of this machine's
memory, opens the package (checking every ONNX file's sha256), checks its bands and decision tree against the release
and the requested device, and reads the metadata of any part files already in the output directory: parts written
with another model or other settings are refused (``overwrite`` replaces them). Then it scores tile by tile, in
chunks of ``chunk_size`` sources (:mod:`.chunks`), in this process or on Ray Data (:mod:`.ray_data`), and writes each
tile's part file atomically as soon as its last chunk is in. Memory holds one tile's catalogue rows (and, in this
process, the images of the few chunks in flight between the stages of :mod:`.local`), whatever the number of tiles.

Planning (:func:`plan_jobs`) holds per-tile summaries: for a partitioned source catalogue (a directory, see
:mod:`zoobot_pipeline.data.release`) each job names the files that hold its tile and the tile's row count in each,
and a chunk's rows are read when the chunk is prepared (in this process, or in the Ray task that prepares it), so
neither planning nor the driver ever holds the whole source table; memory is then bounded by the largest file of the
catalogue and the number of tiles, not the number of sources. A single-file catalogue is read whole when the release
is opened, as before (fine to ~10^7 sources; partition beyond).

Resuming: a tile whose part file has the same settings and the same source ids (``sources_digest``, checked by
reading that tile's ids) is skipped; a tile that failed (its
part file records ``tile_failed``) is tried again. A run killed at any point leaves only complete part files (and
``.tmp-*`` files that readers ignore and the next run removes). One run at a time may write a catalogue (a lock on
``CATALOGUE/.lock``, released when the process ends, however it ends).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from zoobot_pipeline._version import __version__
from zoobot_pipeline.catalogue import (
    CATALOGUE_JSON,
    FAILURES_FILE,
    TILES_DIR,
    RunSettings,
    flag_counts,
    part_files,
    part_metadata,
    part_path,
    sources_digest,
    write_failures,
    write_part,
    write_summary_json,
)
from zoobot_pipeline.data.release import Release, TileRows, check_tile_ids
from zoobot_pipeline.errors import ScoringError
from zoobot_pipeline.io import exclusive_lock
from zoobot_pipeline.progress import progress_bar
from zoobot_pipeline.runtime.package import MAX_MC_SAMPLES, ModelPackage
from zoobot_pipeline.runtime.session import check_device, make_session
from zoobot_pipeline.scoring.chunks import ChunkConfig, ChunkScorer, ScoredChunk, TileJob
from zoobot_pipeline.scoring.local import MAX_PREP_WORKERS, Timeline, scored_chunks

__all__ = ["ScoringError", "ScoringResult", "default_prep_workers", "kernel_threads", "plan_jobs", "score_release"]


@dataclass
class ScoringResult:
    """What a run did: totals over the whole catalogue, and the tiles this run scored, skipped or failed."""

    out_dir: Path
    executor: str
    n_sources: int
    n_scored: int
    flagged: dict[str, int]
    n_tiles: int
    tiles_scored: int
    tiles_skipped: int
    failures: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    chunks_by_node: dict[str, int] = field(default_factory=dict)


"""Most MC-dropout samples per galaxy (the package default is a handful; hundreds already resolve the spread)."""
MAX_BATCH_SIZE = 4096
MAX_CHUNK_SIZE = 65536
MAX_THREADS = 1024
MAX_WORKERS = 10000


def _check_range(option: str, value: int | None, low: int, high: int, note: str = "") -> None:
    """Refuse ``value`` outside ``[low, high]``, naming the option as the CLI spells it and as the library does."""
    if value is not None and not low <= value <= high:
        raise ScoringError(f"--{option.replace('_', '-')} ({option}) must be between {low} and {high}, got "
                           f"{value}{note}")


def _check_options(batch_size: int, chunk_size: int, mc_samples: int | None, use_ray: bool, workers: int | None,
                   gpus_per_worker: float, device: str, ray_address: str | None, seed: int = 0,
                   threads: int | None = None, prep_workers: int | None = None) -> None:
    _check_range("batch_size", batch_size, 1, MAX_BATCH_SIZE)
    _check_range("chunk_size", chunk_size, 1, MAX_CHUNK_SIZE)
    _check_range("mc_samples", mc_samples, 0, MAX_MC_SAMPLES, " (0: one pass with dropout off)")
    _check_range("threads", threads, 1, MAX_THREADS)
    _check_range("seed", seed, 0, 2**128 - 1)
    _check_range("workers", workers, 1, MAX_WORKERS)
    _check_range("prep_workers", prep_workers, 0, MAX_PREP_WORKERS)
    if not 0 <= gpus_per_worker <= 64:
        raise ScoringError(f"--gpus-per-worker (gpus_per_worker) must be between 0 and 64, got {gpus_per_worker}")
    if not use_ray and (workers is not None or gpus_per_worker):
        raise ScoringError("workers and gpus_per_worker size the Ray actor pool: use Ray (--ray or --ray-address)")
    if gpus_per_worker > 0 and device == "cpu":
        raise ScoringError("gpus_per_worker > 0 needs device 'cuda' or 'tensorrt'")
    if use_ray and device != "cpu" and gpus_per_worker == 0:
        raise ScoringError(f"device {device!r} on Ray needs gpus_per_worker > 0 (Ray hides GPUs from actors "
                           "that reserve none)")
    if ray_address is not None:
        return  # the device is checked on the cluster's GPU nodes, where the actors run (ray_data.ray_chunks)
    try:
        check_device(device)
    except RuntimeError as err:
        raise ScoringError(str(err)) from None


def default_prep_workers(device: str, cores: int | None = None) -> int:
    """Preparing threads for the in-process path: none on a CPU device, where onnxruntime's threads already use every
    core and a preparing thread beside them slows the model more than it saves (0.81 against 0.99 of the model's rate
    on 2 cores, ``benchmarks/README.md``); on a GPU, all but two of the ``cores`` (at most 16), which the model leaves
    to the CPU work."""
    if device == "cpu":
        return 0
    return max(1, min(16, (cores or os.cpu_count() or 1) - 2))


def kernel_threads(threads: int | None, prep_workers: int) -> int:
    """Threads sharing each chunk's preprocessing in the in-process path: with no preparing threads the stages take
    turns, so preprocessing gets what the model uses (``threads``, else every core this process may run on); with
    preparing threads each prepares alone."""
    if prep_workers:
        return 1
    if threads:
        return threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _arrivals(chunks: Iterator[ScoredChunk], timeline: Timeline, start: float) -> Iterator[ScoredChunk]:
    """``chunks`` as they come, each arrival recorded in ``timeline`` from the one before (the first from ``start``)."""
    for chunk in chunks:
        timeline.add("arrived", start, chunk.table.num_rows)
        start = time.perf_counter()
        yield chunk


def _physical_memory() -> int | None:
    """Bytes of memory on this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(package: ModelPackage, batch_size: int, chunk_size: int, mc_samples: int,
                  prep_workers: int = 0) -> None:
    """Refuse options whose arrays would not fit: the images and model outputs of the chunks in flight (the one being
    scored, the one whose rows are being made, and up to ``prep_workers + 1`` prepared ahead), and one batch's
    dropout masks and outputs (float32), against half of this machine's memory."""
    channels, height, width = package.input_shape
    samples, n_outputs = max(mc_samples, 1), len(package.output_names)
    chunks = prep_workers + 3 if prep_workers else 1
    need = 4 * (chunks * chunk_size * (channels * height * width + samples * n_outputs)
                + batch_size * samples * (package.n_features + n_outputs))
    memory = _physical_memory()
    if memory is not None and need > memory // 2:
        raise ScoringError(f"--chunk-size {chunk_size}, --batch-size {batch_size}, --mc-samples {mc_samples} and "
                           f"--prep-workers {prep_workers} need "
                           f"about {need / 2**30:.1f} GiB for this model ({channels}x{height}x{width} images, "
                           f"{package.n_features} features, {n_outputs} outputs), more than half of this machine's "
                           f"{memory / 2**30:.1f} GiB; lower them")


def _existing_parts(out_dir: Path, settings: RunSettings, release: Release, overwrite: bool) -> dict[str, dict]:
    """Metadata of the part files already in ``out_dir`` by tile id; refuses parts of other settings or tiles."""
    existing: dict[str, dict] = {}
    for path in [] if overwrite else part_files(out_dir):
        try:
            meta = part_metadata(path)
        except (OSError, pa.ArrowInvalid) as err:
            raise ScoringError(f"{path}: unreadable part file ({err}); delete it or use --overwrite") from None
        differences = settings.differences(meta)
        if differences:
            raise ScoringError(f"{out_dir} holds a catalogue written with other settings ({path.name}: "
                               f"{'; '.join(differences)}); write to another directory or use --overwrite to "
                               "replace it")
        if meta.get("tile_id") not in release.tile_paths:
            raise ScoringError(f"{path}: tile {meta.get('tile_id')!r} has no sources in release {release.path}; "
                               "write to another directory or use --overwrite")
        existing[meta["tile_id"]] = meta
    return existing


def _clear(out_dir: Path, overwrite: bool) -> None:
    """Remove unfinished ``.tmp-*`` part files; with ``overwrite``, the catalogue's own files too."""
    tiles = out_dir / TILES_DIR
    for path in tiles.glob(".tmp-*") if tiles.is_dir() else ():
        path.unlink()
    if overwrite:
        for path in [*part_files(out_dir), out_dir / FAILURES_FILE, out_dir / CATALOGUE_JSON]:
            path.unlink(missing_ok=True)


def _write_tiles(chunks: Iterator[ScoredChunk], jobs: list[TileJob], out_dir: Path, metadata: dict[str, str],
                 advance: Callable[[int], None], nodes: Counter) -> list[dict[str, Any]]:
    """Assemble each tile from its chunks (which arrive in order) and write its part file; returns the failures and
    counts chunks by where they were scored into ``nodes``."""
    by_id = {job.tile_id: job for job in jobs}
    failures: list[dict[str, Any]] = []
    parts: list[pa.Table] = []
    errors: list[str] = []
    for chunk in chunks:
        nodes[chunk.scored_on] += 1
        if chunk.index != len(parts):
            raise RuntimeError(f"tile {chunk.tile_id}: chunk {chunk.index} arrived after {len(parts)} chunk(s)")
        parts.append(chunk.table)
        if chunk.tile_error is not None:
            errors.append(chunk.tile_error)
        advance(chunk.table.num_rows)
        if chunk.index < chunk.n_chunks - 1:
            continue
        job = by_id[chunk.tile_id]
        table = pa.concat_tables(parts)
        if table.num_rows != job.sources.num_rows:
            raise RuntimeError(f"tile {job.tile_id}: {table.num_rows} catalogue rows for {job.sources.num_rows} "
                               "sources")
        if isinstance(job.sources, TileRows) and len(job.sources.files) > 1:
            check_tile_ids(table["id_str"], job.tile_id, f"{job.sources.root} ({', '.join(job.sources.files[:3])})")
        flagged = flag_counts(table["flag"])
        counts = {"sources": table.num_rows, "scored": table.num_rows - sum(flagged.values()), "flagged": flagged}
        digest = sources_digest(table["id_str"].to_pylist())  # the tile's ids in release order, chunk by chunk
        meta = {**metadata, "tile_id": job.tile_id, "sources_digest": digest,
                "counts": json.dumps(counts), "created": datetime.now(UTC).isoformat(timespec="seconds")}
        if errors:
            meta["tile_failed"] = errors[0]
            failures.append({"tile_id": job.tile_id, "path": str(job.path), "reason": errors[0],
                             "n_sources": table.num_rows})
        write_part(table, part_path(out_dir, job.tile_id), meta)
        parts, errors = [], []
    return failures


def plan_jobs(release: Release, columns: list[str], existing: dict[str, dict],
              in_memory: bool = True) -> tuple[list[TileJob], int]:
    """``(jobs, skipped)``: a :class:`TileJob` per tile to score, and the number of tiles whose part file in
    ``existing`` (metadata by tile id) is complete with the same source ids (read now, one tile at a time, for those
    tiles only). A job holds its tile's rows (``columns``) when the release's single-file catalogue is in memory and
    ``in_memory``, else only where they are (:class:`~zoobot_pipeline.data.release.TileRows`: files and counts), so
    that planning a partitioned release holds per-tile summaries, never the rows."""
    jobs, skipped = [], 0
    for tile_id in release.tile_ids:
        done = existing.get(tile_id)
        if done is not None and "tile_failed" not in done:
            ids = (release.tile_rows(tile_id, ["id_str"]).slice() if release.partitioned
                   else release.tile_sources(tile_id))["id_str"]
            if done.get("sources_digest") == sources_digest(ids.to_pylist()):
                skipped += 1
                continue
        sources = (release.tile_sources(tile_id).select(columns) if in_memory and not release.partitioned
                   else release.tile_rows(tile_id, columns))
        jobs.append(TileJob(tile_id, release.tile_paths[tile_id], sources))
    return jobs, skipped


def _totals(out_dir: Path) -> tuple[int, int, dict[str, int]]:
    """(sources, scored, flagged rows by reason category) over every part file, from their metadata."""
    n_sources, n_scored, flagged = 0, 0, Counter()
    for path in part_files(out_dir):
        counts = json.loads(part_metadata(path)["counts"])
        n_sources += counts["sources"]
        n_scored += counts["scored"]
        flagged.update(counts["flagged"])
    return n_sources, n_scored, dict(flagged)


def score_release(release_dir: str | Path, package_dir: str | Path, out_dir: str | Path, *, batch_size: int = 32,
                  chunk_size: int = 256, mc_samples: int | None = None, seed: int = 0, device: str = "cpu",
                  variant: str = "fp32", threads: int | None = None, use_ray: bool = False,
                  ray_address: str | None = None, workers: int | None = None, gpus_per_worker: float = 0.0,
                  prep_workers: int | None = None, overwrite: bool = False, progress: bool = True,
                  timeline: Timeline | None = None) -> ScoringResult:
    """Score every source of a release with a model package into the catalogue directory ``out_dir``.

    ``mc_samples`` MC-dropout samples per galaxy (default: the package's; 0 = one pass with dropout off), masks
    seeded by ``seed`` and each galaxy's id. ``use_ray`` (implied by ``ray_address``) runs on Ray Data: reading and
    preprocessing in tasks, inference in a pool of ``workers`` actors (default: from the cluster's CPUs, or its GPUs
    over ``gpus_per_worker``). ``threads`` sets onnxruntime's intra-op threads. In this process, ``prep_workers``
    threads cut and preprocess ahead of the model and one more makes the catalogue rows (:mod:`.local`; 0: every
    stage in turn in this thread; default :func:`default_prep_workers`), and ``timeline`` records when each stage
    ran, and on both paths when each scored chunk reached the writer (``arrived`` stages, each from the previous
    arrival, the first from the start of the call: start-up shows as a first arrival later than the others' spacing).
    See the module docstring for checks, resuming and ``overwrite``.
    """
    start = time.perf_counter()
    use_ray = use_ray or ray_address is not None
    if prep_workers is None:
        prep_workers = default_prep_workers(device)
    _check_options(batch_size, chunk_size, mc_samples, use_ray, workers, gpus_per_worker, device, ray_address, seed,
                   threads, prep_workers)
    package = ModelPackage.open(package_dir)
    package.onnx_path(variant)
    if mc_samples is None and package.mc_samples > MAX_MC_SAMPLES:
        raise ScoringError(f"{package.path / 'model.json'}: mc_dropout.samples {package.mc_samples} is more than "
                           f"{MAX_MC_SAMPLES}; pass --mc-samples (mc_samples) to choose fewer")
    _check_memory(package, batch_size, chunk_size, package.mc_samples if mc_samples is None else mc_samples,
                  0 if use_ray else prep_workers)
    sizing = package.preprocessing.cutout  # cut as the model was trained
    release = Release.open(Path(release_dir).resolve(), allow_missing_tiles=True, columns=[sizing.size_column])
    package.check_release(release)
    settings = RunSettings(
        model_sha256=package.sha256, variant=variant, task=package.task,
        schema=package.schema.name if package.schema is not None else "", release=release.info.name,
        mc_samples=package.mc_samples if mc_samples is None else mc_samples, seed=seed, chunk_size=chunk_size,
        n_volunteers=package.n_volunteers, preprocessing=package.preprocessing.model_dump_json(),
        cutout_sizing=sizing.model_dump_json())
    out_dir = Path(out_dir)
    existing = _existing_parts(out_dir, settings, release, overwrite)

    source_columns = ["id_str", "ra", "dec", "tile_id"]
    if sizing.size_column in release.source_columns:
        source_columns.append(sizing.size_column)
    jobs, skipped = plan_jobs(release, source_columns, existing, in_memory=not use_ray)  # Ray tasks read the rows
    config = ChunkConfig(release.bands, release.info.pixel_scale_arcsec, package.preprocessing)
    metadata = {**settings.metadata(), "package": str(package.path.resolve()), "release_path": str(release.path),
                "code_version": __version__}
    scorer_options = {"variant": variant, "device": device, "threads": threads, "batch_size": batch_size,
                      "mc_samples": mc_samples, "seed": seed}

    # onnxruntime loads the graph before anything is cleared, so a package it cannot read never costs a catalogue
    # (on Ray the actors load it again; here it is only checked)
    scorer = None if use_ray else ChunkScorer(package, **scorer_options)
    if use_ray:
        make_session(package.onnx_path(variant))
    busy = ScoringError(f"{out_dir}: another score run is writing this catalogue")
    with exclusive_lock(out_dir / ".lock", busy):
        _clear(out_dir, overwrite)
        if use_ray:
            from zoobot_pipeline.scoring.ray_data import ray_chunks

            chunks = ray_chunks(jobs, package, config, chunk_size, scorer_options, ray_address=ray_address,
                                workers=workers, gpus_per_worker=gpus_per_worker)
        else:
            chunks = scored_chunks(jobs, scorer, config, chunk_size, prep_workers, timeline,
                                   kernel_threads(threads, prep_workers))
        if timeline is not None:
            chunks = _arrivals(chunks, timeline, start)
        with progress_bar(progress, sum(job.sources.num_rows for job in jobs), "scoring", "galaxies") as advance:
            nodes: Counter = Counter()
            failures = _write_tiles(chunks, jobs, out_dir, metadata, advance, nodes)
        write_failures(out_dir, failures)
        n_sources, n_scored, flagged = _totals(out_dir)
        if n_sources != release.n_sources:
            raise RuntimeError(f"{out_dir}: {n_sources} catalogue rows for {release.n_sources} sources")
        result = ScoringResult(out_dir, "ray" if use_ray else "in-process", n_sources, n_scored, flagged,
                               len(release.tile_ids), len(jobs), skipped, failures, time.perf_counter() - start,
                               dict(nodes))
        write_summary_json(out_dir, {
            "created": datetime.now(UTC).isoformat(timespec="seconds"), "code_version": __version__,
            "executor": result.executor, "chunks_by_node": result.chunks_by_node,
            "release": {"name": release.info.name, "path": str(release.path)},
            "model": {"package": metadata["package"], "sha256": package.sha256, "variant": variant,
                      "task": package.task, "schema": settings.schema},
            "settings": {"mc_samples": settings.mc_samples, "seed": seed, "chunk_size": chunk_size,
                         "n_volunteers": settings.n_volunteers, "batch_size": batch_size, "device": device},
            "counts": {"sources": n_sources, "scored": n_scored, "flagged": flagged, "tiles": result.n_tiles,
                       "tiles_failed": len(failures)},
            "failed_tiles": [f["tile_id"] for f in failures],
        })
    return result
