"""The release watcher: score and queue every new data release under a releases root exactly once.

A release is a directory of the releases root with a ``release.json`` (write it last, or move the finished release
in with one rename, so that the watcher never sees half a release). Outputs and the record of what was done live
next to each other under the outputs root, not only in Prefect's database::

    OUTPUTS/ledger.json                 one entry per finished release (JSON, replaced atomically)
    OUTPUTS/.claims/{release}.lock      per-release lock (fcntl.flock) held while a watcher works on it
    OUTPUTS/releases/{release}/         catalogue/, queue/ (runs, manifests, plots)

Exactly once: a watcher skips releases in the ledger, takes the release's lock without waiting (a release locked by
another watcher is skipped; that watcher finishes it), reads the ledger again under the lock (another watcher may have
finished it in between), then scores, ranks and queues, and only then adds the ledger entry (read-modify-write under
``OUTPUTS/.ledger.lock``). The OS releases a lock when its process dies, however it dies, so a crashed watcher holds
nothing: the next run takes the release over and resumes it. Scoring skips the tiles already written, ranking
reuses the queue run made under the run key (the release's name) instead of queueing more galaxies, the manifest
reuses its images and the upload its state file: nothing is done twice. ``flock`` must work across every host that
runs a watcher on the same outputs (local disks, NFSv4 and CephFS do; check other shared file systems).

A release that fails is reported, left out of the ledger (the next run tries it again), and fails the flow run after
the other releases are done.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.artifacts import markdown_table, publish_table
from flows.scoring import rank_and_queue, score_release
from zoobot_pipeline.active.zooniverse import DEFAULT_ENDPOINT
from zoobot_pipeline.data.render import ImageFormat
from zoobot_pipeline.io import file_lock, write_json_atomic

__all__ = ["CLAIMS_DIR", "LEDGER_FILE", "Ledger", "find_releases", "watch_releases"]

LEDGER_FILE = "ledger.json"
RELEASE_JSON = "release.json"
CLAIMS_DIR = ".claims"
_REPORT_COLUMNS = ("release", "status", "scored", "sources", "queued", "detail")


def find_releases(releases_root: Path) -> list[Path]:
    """Release directories directly under ``releases_root`` (those with a ``release.json``), by name."""
    return sorted(p for p in releases_root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / RELEASE_JSON).is_file())


class Ledger:
    """The record of finished releases under an outputs root, and the per-release claims (see the module docstring)."""

    def __init__(self, outputs_root: Path) -> None:
        self.root = outputs_root
        self.path = outputs_root / LEDGER_FILE

    def entries(self) -> dict[str, dict[str, Any]]:
        """Finished releases by directory name."""
        return json.loads(self.path.read_text())["releases"] if self.path.is_file() else {}

    def record(self, name: str, entry: dict[str, Any]) -> None:
        """Add ``name``'s entry (under the ledger lock, so that concurrent watchers lose no entry)."""
        with file_lock(self.root / ".ledger.lock", wait=True):
            write_json_atomic({"releases": {**self.entries(), name: entry}}, self.path)

    def claim(self, name: str) -> AbstractContextManager[bool]:
        """Hold ``name``'s lock for the block if no other process or thread holds it; yields whether it does."""
        return file_lock(self.root / CLAIMS_DIR / f"{name}.lock")


@flow(name="watch-releases")
def watch_releases(releases_root: Path, package_dir: Path, outputs_root: Path, top_k: int = 100,
                   acquisition: str = "mutual_information", exclude_votes: Path | None = None, min_votes: int = 3,
                   per_tile_quota: int | None = None, seed: int = 0, batch_size: int = 32, chunk_size: int = 256,
                   mc_samples: int | None = None, device: str = "cpu", use_ray: bool = False,
                   ray_address: str | None = None, workers: int | None = None, gpus_per_worker: float = 0.0,
                   image_format: ImageFormat = "png", project_id: int | None = None,
                   subject_set_id: int | None = None, endpoint: str = DEFAULT_ENDPOINT,
                   dry_run: bool = True, sampling: str | None = None, beta: float = 1.0, random_fraction: float = 0.0,
                   exclude_answers: list[str] | None = None, stratify_by: list[str] | None = None) -> list[str]:
    """Score each release under ``releases_root`` not yet in the ledger with ``package_dir`` and queue its ``top_k``
    most wanted galaxies (``score_release`` + ``rank_and_queue``, which describes ``sampling``, ``beta``,
    ``random_fraction``, ``exclude_answers`` and ``stratify_by``); returns the releases this run finished."""
    logger = get_run_logger()
    ledger = Ledger(outputs_root)
    report: list[dict[str, Any]] = []
    finished: list[str] = []
    failed: list[str] = []
    for release in find_releases(releases_root):
        name = release.name
        if name in ledger.entries():
            continue
        with ledger.claim(name) as claimed:
            if not claimed or name in ledger.entries():
                report.append({"release": name, "status": "skipped",
                               "detail": "another watcher is processing it" if not claimed else "done meanwhile"})
                continue
            out = outputs_root / "releases" / name
            try:
                scored = score_release(release, package_dir, out / "catalogue", batch_size=batch_size,
                                       chunk_size=chunk_size, mc_samples=mc_samples, seed=seed, device=device,
                                       use_ray=use_ray, ray_address=ray_address, workers=workers,
                                       gpus_per_worker=gpus_per_worker)
                queued = rank_and_queue(scored.out_dir, release, out / "queue", top_k, acquisition=acquisition,
                                        exclude_votes=exclude_votes, min_votes=min_votes,
                                        per_tile_quota=per_tile_quota, seed=seed, run_key=name,
                                        image_format=image_format, project_id=project_id,
                                        subject_set_id=subject_set_id, endpoint=endpoint, dry_run=dry_run,
                                        sampling=sampling, beta=beta, random_fraction=random_fraction,
                                        exclude_answers=exclude_answers, stratify_by=stratify_by)
            except Exception as err:  # one bad release must not stop the others; the run fails at the end
                logger.error("release %s failed: %r", name, err)
                report.append({"release": name, "status": "failed", "detail": f"{type(err).__name__}: {err}"})
                failed.append(name)
                continue
            ledger.record(name, {
                "path": str(release.resolve()), "catalogue": str(scored.out_dir.resolve()),
                "queue_run": str(queued.run_file.resolve()), "manifest": str(queued.manifest.resolve()),
                "sources": scored.n_sources, "scored": scored.n_scored, "tiles_scored": scored.tiles_scored,
                "tiles_skipped": scored.tiles_skipped, "queued": queued.queued, "flow_run_id": flow_run.id,
                "finished": datetime.now(UTC).isoformat(timespec="seconds")})
            report.append({"release": name, "status": "processed", "scored": scored.n_scored,
                           "sources": scored.n_sources, "queued": queued.queued,
                           "detail": str(queued.manifest.resolve())})
            finished.append(name)
    done = len(ledger.entries())
    create_markdown_artifact(
        key="watch-releases", description="watch-releases: what this run did",
        markdown=f"# Release watcher: {len(finished)} processed, {len(failed)} failed\n\n`{releases_root}` -> "
                 f"`{outputs_root}`; {done} release(s) in the ledger (`{ledger.path}`).\n\n"
                 + markdown_table(report, _REPORT_COLUMNS))
    publish_table("watch-releases-table", report, _REPORT_COLUMNS, "watch-releases: releases this run looked at")
    if failed:
        raise RuntimeError(f"release(s) {', '.join(failed)} failed (see the logs); the next run tries them again")
    return finished
