"""Colour PNG/JPEG images of cutouts for people and Galaxy Zoo volunteers.

The composite is the shared preprocessing in ``rgb`` mode without cropping, so a rendered image shows what the
model's colour input shows. The default composite takes the bands as listed blue to red (3 bands: R, G, B = bands 3,
2, 1; 2 bands: Euclid style; 1 band: grey), ``arcsinh`` stretch, clipped at the 99.85th percentile; pass
``PreprocessingConfig.gz_decals(input_size=424, crop_fraction=1.0)`` for the GZ DECaLS look. Array row 0 (FITS y = 1)
is drawn at the bottom, so a standard sky WCS shows north up and east left, as GZ DECaLS images do. Files are at most
:data:`MAX_IMAGE_BYTES` (Zooniverse's limit) and are written atomically.

PNGs use zlib level 4, and level 9 only when level 4 is over the limit: on 50 manifest images (424 x 424) of a
simulated release, level 4 took 44 ms an image and level 9 (what Pillow's ``optimize=True`` uses) 550 ms, for files
only 6% smaller (zlib's long match search pays little on noisy sky). A 424 x 424 RGB PNG is far under 1 MiB anyway.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from PIL import Image, ImageDraw

from zoobot_pipeline.data.preprocessing import PreprocessingConfig, preprocess
from zoobot_pipeline.errors import ZoobotPipelineError
from zoobot_pipeline.io import atomic_path

__all__ = [
    "IMAGE_FORMATS", "IMAGE_SIZES", "MAX_IMAGE_BYTES", "ImageFormat", "check_image_size", "composite_config",
    "contact_sheet", "encode_image", "render_image", "render_rgb", "write_image",
]

ImageFormat = Literal["png", "jpeg"]
IMAGE_FORMATS: tuple[str, ...] = get_args(ImageFormat)
"""Image formats of rendered files (:func:`encode_image` also takes ``jpg`` for ``jpeg``)."""
MAX_IMAGE_BYTES = 1024 * 1024
IMAGE_SIZES = range(16, 4097)
"""Image sides (px) that the commands render: from 16 (smaller shows nothing) to 4096 (a 4096 x 4096 RGB image is
48 MiB in memory before encoding, and Zooniverse takes at most 1 MiB a file)."""
# Pillow save options per format, tried in order until the file fits: PNG zlib level 4 then 9, JPEG falling quality.
_PNG = ("PNG", [{"compress_level": level} for level in (4, 9)])
_JPEG = ("JPEG", [{"quality": quality} for quality in (90, 80, 70, 60, 50, 40)])
_ENCODINGS: dict[str, tuple[str, list[dict[str, int]]]] = {"png": _PNG, "jpg": _JPEG, "jpeg": _JPEG}
_CAPTION_LINE = 13  # px per caption line in Pillow's default font (size 10: ascent 10 + descent 3)
_CAPTION_PAD = 3  # px between a caption and the sides of its cell


def check_image_size(size: int, option: str = "size") -> int:
    """``size`` if it is in :data:`IMAGE_SIZES`, else a :class:`~zoobot_pipeline.errors.ZoobotPipelineError` naming
    ``option`` (e.g. ``--size``); checked before any work starts."""
    if size not in IMAGE_SIZES:
        raise ZoobotPipelineError(f"{option} {size}: the image side must be {IMAGE_SIZES.start} to "
                                  f"{IMAGE_SIZES.stop - 1} pixels (Galaxy Zoo uses 424)")
    return size


def composite_config(bands: Sequence[str], size: int = 424) -> PreprocessingConfig:
    """Default display composite for 1, 2 or 3 bands listed blue to red, at ``size`` x ``size``."""
    mode = "grey" if len(bands) == 1 else "rgb"
    return PreprocessingConfig(
        bands=tuple(bands), mode=mode, q=1.0, clip="percentile", crop_fraction=1.0, input_size=size
    )


def render_rgb(
    cutout_data: np.ndarray,
    bands: Sequence[str] | None = None,
    size: int = 424,
    config: PreprocessingConfig | None = None,
) -> np.ndarray:
    """Colour composite of a ``(n_bands, H, W)`` cutout as uint8 ``(size, size, 3)``, north up (files, plot grids).

    ``bands`` names the cutout's bands; without it bands are called ``b0, b1, ...``. ``config`` overrides the
    default :func:`composite_config` (its ``input_size`` then sets the size).
    """
    data = np.asarray(cutout_data)
    if data.ndim == 2:
        data = data[None]
    names = tuple(bands) if bands is not None else tuple(f"b{i}" for i in range(data.shape[0]))
    config = config or composite_config(names, size)
    channels = preprocess(data, config, names)
    if channels.shape[0] == 1:
        channels = np.repeat(channels, 3, axis=0)
    if channels.shape[0] != 3:
        raise ValueError(f"render needs a 1- or 3-channel config, got {channels.shape[0]} channels")
    return np.round(channels[:, ::-1].transpose(1, 2, 0) * 255.0).astype(np.uint8)


def encode_image(rgb: np.ndarray, fmt: str = "png", max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """Encode uint8 ``(H, W, 3)`` as PNG (raising the zlib level only if needed to fit ``max_bytes``) or JPEG
    (lowering quality until it fits)."""
    fmt = fmt.lower()
    if fmt not in _ENCODINGS:
        raise ValueError(f"unsupported image format {fmt!r} ({' or '.join(IMAGE_FORMATS)})")
    name, attempts = _ENCODINGS[fmt]
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    for options in attempts:
        buffer = io.BytesIO()
        image.save(buffer, format=name, **options)
        if buffer.tell() <= max_bytes:
            return buffer.getvalue()
    size = buffer.tell()
    raise ValueError(f"{name} of {rgb.shape[1]}x{rgb.shape[0]} exceeds {max_bytes} bytes even with {attempts[-1]}: "
                     f"{size} bytes, over {max_bytes} by {size - max_bytes}")


def _write(encoded: bytes, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(encoded)
    return Path(path)


def render_image(
    cutout_data: np.ndarray,
    path: str | Path,
    bands: Sequence[str] | None = None,
    size: int = 424,
    config: PreprocessingConfig | None = None,
    fmt: str = "png",
) -> Path:
    """Render a cutout to a PNG or JPEG file (``fmt``), atomically and at most 1 MiB; returns the path."""
    return _write(encode_image(render_rgb(cutout_data, bands, size, config), fmt), path)


def _wrap(draw: ImageDraw.ImageDraw, text: str, width: float) -> list[str]:
    """The lines of ``text`` broken to at most ``width`` px in ``draw``'s font: at spaces, and inside a word only
    where the word alone is wider."""
    lines: list[str] = []
    for paragraph in text.splitlines():
        line = ""
        for word in paragraph.split():
            joined = f"{line} {word}" if line else word
            if draw.textlength(joined) <= width:
                line = joined
                continue
            if line:
                lines.append(line)
            line = word
            while len(line) > 1 and draw.textlength(line) > width:
                cut = next((k for k in range(len(line) - 1, 0, -1) if draw.textlength(line[:k]) <= width), 1)
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line)
    return lines


def contact_sheet(images: Sequence[np.ndarray], captions: Sequence[str], columns: int = 6) -> np.ndarray:
    """Tile equally sized uint8 RGB images into one grid with a caption strip under each; returns uint8 RGB.

    Caption lines (``\\n`` separated) are wrapped to the image width, and the strips are as tall as the longest
    caption needs.
    """
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    if len(captions) != len(images):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    height, width = images[0].shape[:2]
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [_wrap(draw, caption, width - 2 * _CAPTION_PAD) for caption in captions]
    cell = height + 2 + _CAPTION_LINE * max(len(lines) for lines in wrapped)
    sheet = Image.new("RGB", (columns * width, -(-len(images) // columns) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (rgb, lines) in enumerate(zip(images, wrapped, strict=True)):
        x, y = (i % columns) * width, (i // columns) * cell
        sheet.paste(Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)), (x, y))
        for line_number, line in enumerate(lines):
            draw.text((x + _CAPTION_PAD, y + height + 1 + _CAPTION_LINE * line_number), line, fill="black")
    return np.asarray(sheet)


def write_image(rgb: np.ndarray, path: str | Path, fmt: str = "png", max_bytes: int = MAX_IMAGE_BYTES) -> Path:
    """Write a uint8 RGB array as PNG or JPEG, atomically."""
    return _write(encode_image(rgb, fmt, max_bytes), path)
