"""Labelled galaxies of a release, cut and preprocessed once into memory, and the validation split; framework-free.

Cutouts come from ``release_cutouts`` and go through the shared ``preprocess``, so training sees exactly what scoring
will; rejected cutouts (off the tile or mostly empty) are left out. The validation split is a seeded hash of each
``id_str``, so it is stable as a catalogue grows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoobot_pipeline.data.cutouts import release_cutouts
from zoobot_pipeline.data.preprocessing import PreprocessingConfig, preprocess
from zoobot_pipeline.data.release import Release
from zoobot_pipeline.data.votes import read_votes, vote_matrix
from zoobot_pipeline.io import blake2b64
from zoobot_pipeline.schemas import Schema

__all__ = ["LabelledImages", "load_images", "load_labelled_images", "validation_mask"]


@dataclass(frozen=True)
class LabelledImages:
    """Preprocessed images ``(n, C, S, S)`` float32 with their targets: vote counts ``(n, n_answers)`` int64 for
    pretraining, or finetuning labels (class indices ``(n,)``, regression values ``(n, k)``, vote counts)."""

    ids: list[str]
    images: np.ndarray
    targets: np.ndarray
    n_rejected: int
    n_missing: int

    def subset(self, mask: np.ndarray) -> LabelledImages:
        """The rows where ``mask`` is true."""
        ids = [i for i, keep in zip(self.ids, mask, strict=True) if keep]
        return LabelledImages(ids, self.images[mask], self.targets[mask], self.n_rejected, self.n_missing)


def load_labelled_images(release_dir: str | Path, votes_path: str | Path, schema: Schema,
                         preprocessing: PreprocessingConfig) -> LabelledImages:
    """Cut and preprocess every galaxy with votes; ``n_rejected`` counts rejected cutouts, ``n_missing`` voted ids
    absent from the release."""
    votes = read_votes(votes_path, schema)
    return load_images(release_dir, votes.column("id_str").to_pylist(), vote_matrix(votes, schema), preprocessing)


def load_images(release_dir: str | Path, ids: Sequence[str], targets: np.ndarray,
                preprocessing: PreprocessingConfig) -> LabelledImages:
    """Cut (as ``preprocessing.cutout`` says) and preprocess the galaxies ``ids`` (row ``i`` of ``targets`` belongs to
    ``ids[i]``), in release order."""
    row_of = {id_str: row for row, id_str in enumerate(ids)}
    release = Release.open(release_dir)
    kept: list[str] = []
    images: list[np.ndarray] = []
    rows: list[int] = []
    seen = 0
    for id_str, cut in release_cutouts(release, ids=list(row_of), sizing=preprocessing.cutout):
        seen += 1
        if cut.rejected:
            continue
        kept.append(id_str)
        images.append(preprocess(cut.data, preprocessing, bands=release.bands))
        rows.append(row_of[id_str])
    shape = (0, preprocessing.n_channels, preprocessing.input_size, preprocessing.input_size)
    stacked = np.stack(images) if images else np.zeros(shape, dtype=np.float32)
    return LabelledImages(kept, stacked, targets[rows], seen - len(kept), len(row_of) - seen)


def validation_mask(ids: Sequence[str], val_fraction: float, seed: int = 0) -> np.ndarray:
    """True for ids in the validation split: a seeded hash of each ``id_str``, stable as a catalogue grows."""
    return np.array([blake2b64(f"{seed}:{id_str}") / 2**64 < val_fraction for id_str in ids], dtype=bool)
