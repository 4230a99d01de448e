"""Training data as torch views: preprocessed images (:mod:`zoobot_pipeline.models.images`) served as tensors, with
augmented views seeded per ``(seed, epoch, index)`` so that they do not depend on the number of loader workers.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from zoobot_pipeline.models.config import AugmentationConfig
from zoobot_pipeline.models.images import LabelledImages
from zoobot_pipeline.models.torch.augment import augment

__all__ = ["GalaxyDataset"]


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
