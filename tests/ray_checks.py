"""Helpers for the tests of Ray Train runs: kill a worker mid-run, find a run's training states."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path


def kill_a_worker_after_the_first_checkpoint(storage: Path, killed: list[int], timeout: float = 240) -> None:
    """Wait until a run under ``storage`` has registered a checkpoint, then kill one Ray Train worker process of this
    test process (its pid appended to ``killed``)."""
    import psutil  # vendored by Ray: importable once ray is imported

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not killed:
        if any(storage.glob("*/checkpoint_manager_snapshot.json")):  # written once a checkpoint is registered
            for process in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if "RayTrainWorker" in " ".join(process.cmdline()):
                        process.kill()
                        killed.append(process.pid)
                        return
        time.sleep(0.1)


def start_killer(storage: Path) -> tuple[threading.Thread, list[int]]:
    """A daemon thread running :func:`kill_a_worker_after_the_first_checkpoint`, and the list it fills."""
    killed: list[int] = []
    killer = threading.Thread(target=kill_a_worker_after_the_first_checkpoint, args=(storage, killed), daemon=True)
    killer.start()
    return killer, killed


def training_states(storage: Path) -> dict[int, Path]:
    """Ray checkpoint directories of every run under ``storage``, by the epoch they end."""
    return {json.loads((d / "training_state.json").read_text())["progress"]["epoch"]: d
            for d in storage.glob("*/checkpoint_*") if d.is_dir()}
