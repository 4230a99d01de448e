"""No cold-start tax (issue 16): the vote-space kernels are compiled once where the package is installed, and every
later process loads them from there read-only, through the real ``stats`` path, without compiling; without any cache
they compile and give the same numbers. And starting the command line loads no numerical library.

Each test installs a copy of the package in a temporary folder and makes it read-only. We run as root here, and root
writes through permission bits, so the processes that must not write run in a user namespace (``unshare --user``, as
uid 1000 mapped to ours): without root's capabilities, permission bits bind them as they bind any other user. They
still own the files and could chmod them back; numba never does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zoobot_pipeline import _vote_space
from zoobot_pipeline._numba_cache import kernels

ROOT = Path(__file__).resolve().parents[1]
SIGNATURES = {f"{kernel.py_func.__module__}.{kernel.__name__}": len(signatures)
              for kernel, signatures in kernels() if kernel.py_func.__module__ == _vote_space.__name__}
"""The vote-space kernels, each with the number of signatures it declares."""
COMPILE = [sys.executable, "-m", "zoobot_pipeline.cli", "kernels", "compile"]

PROBE = """
import json
import numpy as np
from zoobot_pipeline import stats
from zoobot_pipeline._numba_cache import kernels
from zoobot_pipeline.schemas import get_schema

schema = get_schema("decals_dr5")
alpha = np.random.default_rng(0).uniform(0.5, 30.0, size=(12, 5, schema.n_answers))
values = [*stats.vote_information(alpha[..., :3], 40, method="exact"),
          *stats.vote_information(alpha[..., :3], 40, method="sampled", n_draws=50),
          *stats.schema_vote_information(alpha, schema)]
found = {f"{k.py_func.__module__}.{k.__name__}": k.stats for k, _ in kernels()}
print(json.dumps({"module": stats.__file__, "values": [v.tolist() for v in values],
                  "kernels": {name: {"path": s.cache_path, "hits": sum(s.cache_hits.values()),
                                     "misses": sum(s.cache_misses.values())} for name, s in found.items()}}))
"""


def _env(site: Path, **extra: str) -> dict[str, str]:
    """This interpreter's environment, importing the package from ``site``, with numba's cache settings only as
    given and no writable user-wide cache (``XDG_CACHE_HOME`` inside the read-only install)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CACHE") and k != "NUMBA_CPU_NAME"}
    return {**env, "PYTHONPATH": str(site), "XDG_CACHE_HOME": str(site / "cache"), "PYTHONDONTWRITEBYTECODE": "1",
            **extra}


def _as_user(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``args`` bound by permission bits: as is for a non-root user, in a user namespace for root."""
    prefix = []
    if os.geteuid() == 0:
        unshare = shutil.which("unshare")
        if unshare is None:
            pytest.skip("root cannot be made to respect read-only permissions here: no unshare")
        prefix = [unshare, "--user", "--map-user=1000", "--map-group=1000"]
    return subprocess.run([*prefix, *args], env=env, capture_output=True, text=True, cwd=env["PYTHONPATH"])


def _install(site: Path, compile_kernels: bool) -> Path:
    """Copy the package into ``site`` (no caches), run the compile step there if asked, then make it read-only."""
    package = site / "zoobot_pipeline"
    shutil.copytree(ROOT / "zoobot_pipeline", package, ignore=shutil.ignore_patterns("__pycache__"))
    if compile_kernels:
        for expected in ("compiled", "up to date"):  # a second run keeps what the first compiled
            done = subprocess.run(COMPILE, env=_env(site), capture_output=True, text=True, cwd=site, check=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith(f"{_vote_space.__name__}.")]
            assert lines == [f"{name}: {expected} in {package / '__pycache__'}" for name in SIGNATURES], done.stdout
    for folder, _, files in os.walk(site):
        os.chmod(folder, 0o555)
        for name in files:
            os.chmod(Path(folder, name), 0o444)
    return package


def _probe(site: Path, **env: str) -> dict:
    done = _as_user([sys.executable, "-c", PROBE], _env(site, **env))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert Path(result["module"]).is_relative_to(site)  # the copy, not the working tree
    return result


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A read-only install whose kernels the compile step compiled."""
    site = tmp_path_factory.mktemp("site")
    _install(site, compile_kernels=True)
    return site


@pytest.fixture(scope="module")
def cached_run(installed) -> dict:
    """The probe on the read-only install with nothing writable: no NUMBA_CACHE_DIR, no user-wide cache."""
    before = _files(installed / "zoobot_pipeline" / "__pycache__")
    result = _probe(installed)
    assert _files(installed / "zoobot_pipeline" / "__pycache__") == before
    return result


def test_compile_step_writes_every_kernel_beside_the_package(installed):
    names = _files(installed / "zoobot_pipeline" / "__pycache__")
    for kernel, n_signatures in SIGNATURES.items():
        prefix = f"_vote_space.{kernel.rpartition('.')[2]}-"
        assert len([n for n in names if n.startswith(prefix) and n.endswith(".nbi")]) == 1, kernel
        assert len([n for n in names if n.startswith(prefix) and n.endswith(".nbc")]) == n_signatures, kernel


def test_read_only_install_loads_the_kernels_without_compiling(installed, cached_run):
    assert set(cached_run["kernels"]) == set(SIGNATURES)
    for kernel, n_signatures in SIGNATURES.items():
        stats = cached_run["kernels"][kernel]
        assert stats == {"path": str(installed / "zoobot_pipeline" / "__pycache__"), "hits": n_signatures,
                         "misses": 0}, kernel


def test_an_explicit_numba_cache_dir_stays_where_numba_writes(installed, cached_run, tmp_path):
    cache = tmp_path / "numba"
    result = _probe(installed, NUMBA_CACHE_DIR=str(cache))
    for kernel, n_signatures in SIGNATURES.items():
        stats = result["kernels"][kernel]
        assert Path(stats["path"]).parent == cache, kernel
        assert (stats["hits"], stats["misses"]) == (n_signatures, 0), kernel
    assert not [p for p in cache.rglob("*") if p.is_file()]  # loaded from the install: nothing compiled to save
    assert result["values"] == cached_run["values"]


def test_without_any_cache_the_kernels_compile_and_give_the_same_numbers(cached_run, tmp_path):
    site = tmp_path / "site"
    package = _install(site, compile_kernels=False)
    result = _probe(site)  # read-only, nothing writable: numba alone would refuse to cache these functions at import
    for kernel, n_signatures in SIGNATURES.items():
        stats = result["kernels"][kernel]
        assert (stats["hits"], stats["misses"]) == (0, n_signatures), kernel
    assert not (package / "__pycache__").exists()
    assert result["values"] == cached_run["values"]


def test_compile_step_names_the_folder_it_cannot_write(installed, tmp_path):
    site = tmp_path / "site"
    _install(site, compile_kernels=False)
    for where, folder in ((site, "no __pycache__ yet"), (installed, "a read-only __pycache__")):
        done = _as_user(COMPILE, _env(where))
        assert done.returncode == 2, (folder, done.stderr)
        line = " ".join(done.stderr.split())
        assert line.startswith("error: ") and str(where / "zoobot_pipeline" / "__pycache__") in line, (folder, line)


def test_starting_the_command_line_loads_no_numerical_library():
    heavy = ("numpy", "pydantic", "pyarrow", "yaml", "scipy", "PIL", "numba", "astropy", "onnxruntime", "pandas")
    code = f"import sys, zoobot_pipeline.cli\nprint(' '.join(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.split() == []
