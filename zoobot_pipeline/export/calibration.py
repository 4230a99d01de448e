"""Preprocessed images of real galaxies from a release, for int8 calibration and accuracy checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zoobot_pipeline.data.cutouts import release_cutouts
from zoobot_pipeline.data.preprocessing import PreprocessingConfig, preprocess
from zoobot_pipeline.data.release import Release

__all__ = ["release_images"]


def release_images(release_dir: str | Path, preprocessing: PreprocessingConfig, n: int,
                   seed: int = 0) -> np.ndarray:
    """Up to ``n`` preprocessed images ``(n, C, H, W)`` of randomly chosen sources with usable cutouts."""
    release = Release.open(release_dir)
    missing = [band for band in preprocessing.bands if band not in release.bands]
    if missing:
        raise ValueError(f"{release.path}: release has bands {list(release.bands)}, the model needs {missing} too")
    ids = release.sources["id_str"].to_numpy(zero_copy_only=False)
    chosen = np.random.default_rng(seed).permutation(ids)[: 2 * n]
    images = [preprocess(cut.data, preprocessing, release.bands)
              for _, cut in release_cutouts(release, chosen.tolist(), sizing=preprocessing.cutout) if not cut.rejected]
    if not images:
        raise ValueError(f"{release.path}: no usable cutouts among {len(chosen)} sampled sources")
    return np.stack(images[:n])
