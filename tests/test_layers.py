"""The package's layering holds: the scoring path never loads a training framework or Prefect, the public doors
resolve, and the import contracts of `make lint` catch a forbidden import, naming it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import zoobot_pipeline

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "tensorflow", "keras", "timm", "prefect")


def _loaded_after(imports: str) -> list[str]:
    code = f"import sys\n{imports}\nprint(' '.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    return done.stdout.split()


def test_scoring_and_ranking_path_imports_no_framework_and_no_prefect():
    imports = ("import zoobot_pipeline.scoring.pipeline, zoobot_pipeline.scoring.ray_data, "
               "zoobot_pipeline.scoring.summary, zoobot_pipeline.runtime.session, zoobot_pipeline.catalogue, "
               "zoobot_pipeline.active.ranking, zoobot_pipeline.active.manifest, zoobot_pipeline.active.zooniverse, "
               "zoobot_pipeline.active.votes_merge")
    assert _loaded_after(imports) == []


def test_training_api_and_export_load_a_framework_only_when_a_backend_is_used():
    assert _loaded_after("import zoobot_pipeline.models, zoobot_pipeline.export, zoobot_pipeline.cli") == []
    assert "torch" in _loaded_after("import zoobot_pipeline.models\nzoobot_pipeline.models.get_backend('torch')")


def test_every_public_door_resolves_to_its_object():
    for name in zoobot_pipeline.__all__:
        value = getattr(zoobot_pipeline, name)
        if name != "__version__":
            assert value.__name__ == name
            assert value.__module__.startswith("zoobot_pipeline.")


def test_import_contracts_name_a_forbidden_import(tmp_path):
    for part in ("zoobot_pipeline", "flows"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    lint = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    kept = subprocess.run(lint, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert kept.returncode == 0, kept.stdout

    columns = tmp_path / "zoobot_pipeline" / "scoring" / "columns.py"
    columns.write_text(columns.read_text().replace("import numpy as np\n", "import numpy as np\nimport torch\n", 1))
    broken = subprocess.run(lint, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert broken.returncode == 1
    assert "zoobot_pipeline.scoring.columns -> torch" in broken.stdout

