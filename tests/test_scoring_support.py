"""Helpers shared by the scoring tests (no tests here): a tiny model package, small releases, damaged tiles, and an
independent re-computation of catalogue values."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from astropy.io import fits

from zoobot_pipeline.data.cutouts import tile_cutouts
from zoobot_pipeline.data.preprocessing import PreprocessingConfig, preprocess
from zoobot_pipeline.data.release import Release
from zoobot_pipeline.data.synthetic.simulate import simulate_release
from zoobot_pipeline.export import ModelPackage, export_package
from zoobot_pipeline.models import FinetuneConfig, ModelConfig
from zoobot_pipeline.models.torch.checkpoint import save_checkpoint
from zoobot_pipeline.models.torch.job import build_finetune_model
from zoobot_pipeline.models.torch.model import build_model
from zoobot_pipeline.runtime.session import PackageSession

PREPROCESSING = PreprocessingConfig.gz_decals(input_size=32)
MODEL = ModelConfig.from_preprocessing(PREPROCESSING, architecture="test_resnet")
VALUE_COLUMNS_EXCLUDED = {"id_str", "tile_id", "flag", "edge", "predicted"}


def make_package(root: Path, mc_samples: int = 5, torch_seed: int = 0,
                 preprocessing: PreprocessingConfig = PREPROCESSING) -> Path:
    """A tiny test_resnet at 32 px whose head varies with the input (as after training), exported with S samples.

    Scoring needs a model whose outputs vary, not a good one: a random encoder and head export in seconds.
    """
    torch.manual_seed(torch_seed)
    model = build_model(MODEL)
    with torch.no_grad():
        model.head.linear.weight.normal_(0.0, 0.5)
    checkpoint = save_checkpoint(model.eval(), root / "checkpoint", preprocessing)
    return export_package(checkpoint, root / "package", mc_samples=mc_samples)


def make_classifier_package(root: Path, classes: tuple[str, ...] = ("disk", "elliptical", "merger")) -> Path:
    """A tiny classifier package (random encoder and head), 4 MC samples."""
    torch.manual_seed(1)
    config = FinetuneConfig(task="classification", label_columns=("kind",))
    model = build_finetune_model(MODEL, config, class_names=list(classes)).eval()
    checkpoint = save_checkpoint(model, root / "checkpoint", PREPROCESSING)
    return export_package(checkpoint, root / "package", mc_samples=4)


def make_release(root: Path, n_galaxies: int, n_tiles: int, seed: int = 0) -> Path:
    """A simulated release of small (256 px) tiles: some cutouts reach past the tile edge, some are rejected."""
    return simulate_release(root, n_galaxies, n_tiles, tile_size=256, seed=seed, labelled_fraction=0.0)


def copy_release(release: Path, dest: Path) -> Path:
    return Path(shutil.copytree(release, dest))


def truncate_tile(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def strip_wcs(path: Path) -> None:
    """Rewrite a multi-extension tile with its images but without any WCS keyword."""
    with fits.open(path) as hdul:
        hdus = [fits.PrimaryHDU()] + [fits.ImageHDU(np.asarray(h.data), name=h.name) for h in hdul[1:]]
    fits.HDUList(hdus).writeto(path, overwrite=True)


def drop_band(path: Path, band: str) -> None:
    with fits.open(path) as hdul:
        kept = [h.copy() for h in hdul if h.name != band.upper()]
    fits.HDUList(kept).writeto(path, overwrite=True)


def set_release_json(release: Path, **changes: object) -> None:
    meta = json.loads((release / "release.json").read_text())
    (release / "release.json").write_text(json.dumps({**meta, **changes}))


def independent_outputs(release_dir: Path, package_dir: Path, ids: list[str], seed: int = 0) -> np.ndarray:
    """MC outputs ``(n, S, A)`` of ``ids``, each galaxy cut, preprocessed and predicted alone (batch of one)."""
    release = Release.open(release_dir)
    package = ModelPackage.open(package_dir)
    session = PackageSession(package)
    wanted = set(ids)
    found: dict[str, np.ndarray] = {}
    for tile_id in release.tile_ids:
        sources = release.tile_sources(tile_id)
        with release.open_tile(tile_id) as tile:
            for id_str, cut in zip(sources["id_str"].to_pylist(),
                                   tile_cutouts(tile, sources, package.preprocessing.cutout,
                                                release.info.pixel_scale_arcsec),
                                   strict=True):
                if id_str in wanted:
                    image = preprocess(cut.data, package.preprocessing, release.bands)[None]
                    found[id_str] = session.predict(image, [id_str], seed=seed)[0]
    return np.stack([found[i] for i in ids])


def value_columns(table: pa.Table) -> list[str]:
    return [name for name in table.column_names if name not in VALUE_COLUMNS_EXCLUDED]


def assert_same_catalogue(actual: pa.Table, expected: pa.Table, rtol: float = 1e-5) -> None:
    """Same rows (by id), flags and edge values, and numbers equal to ``rtol`` (NaN where null)."""
    actual, expected = actual.sort_by("id_str"), expected.sort_by("id_str")
    assert actual.column_names == expected.column_names
    for name in ("id_str", "tile_id", "flag", "edge"):
        assert actual[name].to_pylist() == expected[name].to_pylist(), name
    for name in value_columns(expected):
        np.testing.assert_allclose(actual[name].to_numpy(zero_copy_only=False).astype(float),
                                   expected[name].to_numpy(zero_copy_only=False).astype(float),
                                   rtol=rtol, atol=1e-7, err_msg=name)
