"""Training-view augmentations of preprocessed images, of the same kind as the torch backend's.

Per image, in order: a random multiple of 90 degrees (exact), a random horizontal flip (exact), then one bilinear affine
resample combining a rotation by a uniform angle in ``[-rotation_degrees, rotation_degrees]`` with a zoom into a
random square of ``crop_scale`` of the side; pixels from outside the image are 0. The random numbers are drawn in the
torch backend's order from a numpy generator per image; the resample is ``ImageProjectiveTransformV3`` with the
transform that ``torch.nn.functional.affine_grid`` + ``grid_sample(align_corners=False)`` would apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from zoobot_pipeline.models.config import AugmentationConfig

__all__ = ["View", "augment_batch", "draw_view", "render_views"]


@dataclass(frozen=True)
class View:
    """One augmented view's parameters: quarter turns, flip, rotation angle (radians), zoom and shift (normalised)."""

    quarter_turns: int
    flip: bool
    angle: float
    scale: float
    shift: tuple[float, float]


def draw_view(config: AugmentationConfig, rng: np.random.Generator) -> View:
    """Random view parameters, drawn in the torch backend's order."""
    quarter_turns = int(rng.integers(4))
    flip = bool(rng.random() < 0.5)
    angle = math.radians(float(rng.uniform(-config.rotation_degrees, config.rotation_degrees)))
    scale = float(rng.uniform(*config.crop_scale))
    shift = rng.uniform(-(1 - scale), 1 - scale, 2)
    return View(quarter_turns if config.rot90 else 0, flip and config.flip, angle, scale,
                (float(shift[0]), float(shift[1])))


def _transform(view: View, size: int) -> list[float]:
    """The projective transform (output pixel -> input pixel, pixel centres at integers) equal to torch's
    ``affine_grid(theta)`` with ``align_corners=False`` on a square image of ``size`` pixels."""
    c, s = math.cos(view.angle) * view.scale, math.sin(view.angle) * view.scale
    tx, ty = view.shift
    a2 = (c - s) * (1 - size) / 2 + size * (tx + 1) / 2 - 0.5
    b2 = (s + c) * (1 - size) / 2 + size * (ty + 1) / 2 - 0.5
    return [c, -s, a2, s, c, b2, 0.0, 0.0]


def render_views(images: np.ndarray, views: list[View]) -> np.ndarray:
    """``images`` ``(B, C, H, W)`` float32 (square) seen as ``views``; same shape and dtype."""
    turned = np.stack([np.flip(np.rot90(image, v.quarter_turns, axes=(-2, -1)), -1) if v.flip
                       else np.rot90(image, v.quarter_turns, axes=(-2, -1)) for image, v in zip(images, views,
                                                                                                 strict=True)])
    size = images.shape[-1]
    transforms = tf.constant([_transform(v, size) for v in views], dtype=tf.float32)
    resampled = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.transpose(tf.constant(np.ascontiguousarray(turned)), (0, 2, 3, 1)), transforms=transforms,
        output_shape=tf.constant(images.shape[-2:], dtype=tf.int32), fill_value=tf.constant(0.0),
        interpolation="BILINEAR", fill_mode="CONSTANT")
    return tf.transpose(resampled, (0, 3, 1, 2)).numpy()


def augment_batch(images: np.ndarray, config: AugmentationConfig, seed: int, epoch: int,
                  indices: np.ndarray) -> np.ndarray:
    """Augmented views of ``images`` (rows ``indices`` of the training set), each seeded by ``(seed, epoch, index)``
    as in the torch backend, so a view does not depend on the batch it lands in."""
    views = [draw_view(config, np.random.default_rng(np.random.SeedSequence([seed, epoch, int(i)])))
             for i in indices]
    return render_views(images, views)
