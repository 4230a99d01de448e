"""Training-view augmentations of preprocessed images ``(C, H, W)`` that respect galaxy symmetry.

In order: a random multiple of 90 degrees (exact), a random horizontal flip (exact), then one bilinear affine
resample combining a rotation by a uniform angle in ``[-rotation_degrees, rotation_degrees]`` with a zoom into a
random square of ``crop_scale`` of the side (mild crop and resize); pixels from outside the image are 0, the
preprocessed sky level. Every random number comes from the ``generator`` passed in, so a view is reproducible.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from zoobot_pipeline.models.config import AugmentationConfig

__all__ = ["augment"]


def _uniform(generator: torch.Generator, low: float, high: float, n: int = 1) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def augment(image: torch.Tensor, config: AugmentationConfig, generator: torch.Generator) -> torch.Tensor:
    """A randomly rotated, flipped and cropped view of ``image`` ``(C, H, W)``, same shape and dtype."""
    quarter_turns = int(torch.randint(4, (1,), generator=generator))
    flip = bool(torch.rand(1, generator=generator) < 0.5)
    angle = math.radians(float(_uniform(generator, -config.rotation_degrees, config.rotation_degrees)))
    scale = float(_uniform(generator, *config.crop_scale))
    shift = _uniform(generator, -(1 - scale), 1 - scale, 2)

    out = torch.rot90(image, quarter_turns, dims=(-2, -1)) if config.rot90 else image
    if config.flip and flip:
        out = out.flip(-1)
    if angle == 0.0 and scale == 1.0:
        return out.contiguous()
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    theta = torch.tensor([[cos, -sin, float(shift[0])], [sin, cos, float(shift[1])]], dtype=image.dtype)
    grid = F.affine_grid(theta[None], [1, *out.shape], align_corners=False)
    return F.grid_sample(out[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
