from __future__ import annotations

import numpy as np
import torch

from zoobot_pipeline.models import AugmentationConfig
from zoobot_pipeline.models.images import LabelledImages, validation_mask
from zoobot_pipeline.models.torch.augment import augment
from zoobot_pipeline.models.torch.data import GalaxyDataset

torch.set_num_threads(2)


def _galaxy(size: int = 48) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    blob = torch.exp(-((xx - size / 2 + 3) ** 2 + (yy - size / 2) ** 2 / 4) / (2 * 4.0**2))
    return torch.stack([blob, 2 * blob, 3 * blob]).float()


def test_right_angle_rotations_and_flips_preserve_flux_exactly():
    image = _galaxy()
    config = AugmentationConfig(rotation_degrees=0, crop_scale=(1.0, 1.0))
    views = [augment(image, config, torch.Generator().manual_seed(s)) for s in range(12)]
    for view in views:
        assert view.shape == image.shape and view.dtype == image.dtype
        torch.testing.assert_close(view.sum(dim=(1, 2)), image.sum(dim=(1, 2)), rtol=0, atol=1e-4)
    assert len({tuple(v.flatten().tolist()) for v in views}) > 2


def test_arbitrary_rotation_keeps_shape_and_roughly_preserves_flux():
    image = _galaxy()
    config = AugmentationConfig(crop_scale=(1.0, 1.0))
    for seed in range(5):
        view = augment(image, config, torch.Generator().manual_seed(seed))
        assert view.shape == image.shape
        torch.testing.assert_close(view.sum(), image.sum(), rtol=0.03, atol=0)


def test_mild_crop_zooms_in():
    image = _galaxy()
    view = augment(image, AugmentationConfig(rotation_degrees=0, crop_scale=(0.8, 0.8)), torch.Generator())
    assert view.shape == image.shape
    assert view.sum() > image.sum()


def test_dataset_views_are_seeded_per_epoch_and_index():
    images = np.stack([_galaxy(32).numpy() for _ in range(4)])
    data = LabelledImages([f"g{i}" for i in range(4)], images, np.ones((4, 5), dtype=np.int64), 0, 0)
    a, b = GalaxyDataset(data, AugmentationConfig(), seed=3), GalaxyDataset(data, AugmentationConfig(), seed=3)
    assert torch.equal(a[1][0], b[1][0])
    first = a[1][0]
    a.set_epoch(1)
    assert not torch.equal(first, a[1][0])
    plain_image, votes = GalaxyDataset(data)[2]
    assert torch.equal(plain_image, torch.from_numpy(images[2])) and votes.dtype == torch.float32


def test_validation_mask_is_stable_and_about_the_right_size():
    ids = [f"syn_{i:06d}" for i in range(2000)]
    mask = validation_mask(ids, 0.2, seed=1)
    assert 0.17 < mask.mean() < 0.23
    np.testing.assert_array_equal(validation_mask(ids[:100], 0.2, seed=1), mask[:100])
    assert not np.array_equal(validation_mask(ids, 0.2, seed=2), mask)
