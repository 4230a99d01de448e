"""Training data: labelled galaxies of a release, cut and preprocessed once into memory, served as torch views.

Cutouts come from ``release_cutouts`` and go through the shared ``preprocess``, so training sees exactly what scoring
will; rejected cutouts (off the tile or mostly empty) are left out. Augmented views are seeded per
``(seed, epoch, index)``, so they do not depend on the number of loader workers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from zoobot_pipeline.data.cutouts import release_cutouts
from zoobot_pipeline.data.preprocessing import PreprocessingConfig, preprocess
from zoobot_pipeline.data.release import Release
from zoobot_pipeline.data.votes import read_votes, vote_matrix
from zoobot_pipeline.models import AugmentationConfig
from zoobot_pipeline.models.torch.augment import augment
from zoobot_pipeline.schemas import Schema

__all__ = ["GalaxyDataset", "LabelledImages", "load_images", "load_labelled_images", "validation_mask"]


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
    def unit(id_str: str) -> float:
        digest = hashlib.blake2b(f"{seed}:{id_str}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64

    return np.array([unit(i) < val_fraction for i in ids], dtype=bool)


class GalaxyDataset(Dataset):
    """``(image, target)`` pairs as float32 tensors (class indices stay int64), with seeded augmented views when
    ``augmentation`` is given."""

    def __init__(self, data: LabelledImages, augmentation: AugmentationConfig | None = None, seed: int = 0) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(data.images, dtype=np.float32))
        targets = data.targets if data.targets.ndim == 1 else data.targets.astype(np.float32)
        self.targets = torch.from_numpy(np.ascontiguousarray(targets))
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the next epoch's views (call before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.augmentation is not None:
            state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2, dtype=np.uint32)
            generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
            image = augment(image, self.augmentation, generator)
        return image, self.targets[index]
