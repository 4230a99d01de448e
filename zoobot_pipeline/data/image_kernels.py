"""Compiled kernels of cutting (:mod:`zoobot_pipeline.data.cutouts`) and preprocessing
(:func:`zoobot_pipeline.data.preprocessing.preprocess`): a few passes over each cutout, without temporaries per step
and with the GIL released, so that cutting and preprocessing scale over threads.

Cutting copies float32 pixels as bit patterns (byte-swapping big-endian FITS data on the way), so a cutout holds
exactly the tile's values, and counts NaN and zero pixels from the same bits.

The resize is Pillow's bilinear resampling of float ('F') images, step for step: the same coefficients (a triangle
filter widened by the reduction factor when shrinking, normalised per output pixel, computed in double precision),
the horizontal pass first over the rows the vertical pass needs, float32 intermediate rows, then the vertical pass,
each output pixel a double-precision sum in Pillow's order. Outputs equal Pillow's to float32 rounding (tests compare
them with Pillow itself). Computing it here avoids one Pillow image per channel and the copies in and out of it,
which cost more than the arithmetic; figures are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types

from zoobot_pipeline._numba_cache import cached_njit

_F4, _F8, _I8, _U4 = types.float32, types.float64, types.int64, types.uint32
_BOOLS = types.boolean[::1]

__all__ = ["cut_band", "nan_or_zero_fractions", "normalise_resize", "preprocess_windows", "resample_coefficients",
           "stretch_mix"]


@njit(nogil=True)
def resample_coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` for the bilinear filter over the whole input: ``(bounds, weights)`` with
    ``bounds[i] = (first input pixel, number of taps)`` and ``weights[i, :taps]`` summing to 1."""
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = filter_scale
    ksize = int(math.ceil(support)) * 2 + 1
    bounds = np.zeros((out_size, 2), dtype=np.int64)
    weights = np.zeros((out_size, ksize), dtype=np.float64)
    inverse = 1.0 / filter_scale
    for i in range(out_size):
        centre = (i + 0.5) * scale
        low = max(int(centre - support + 0.5), 0)
        high = min(int(centre + support + 0.5), in_size) - low
        total = 0.0
        for k in range(high):
            distance = abs((k + low - centre + 0.5) * inverse)
            weight = 1.0 - distance if distance < 1.0 else 0.0
            weights[i, k] = weight
            total += weight
        if total != 0.0:
            for k in range(high):
                weights[i, k] /= total
        bounds[i, 0] = low
        bounds[i, 1] = high
    return bounds, weights


@cached_njit([(_F4[:, :, ::1], _I8[::1], _F4[::1], _F4[:, ::1], _F8, types.boolean, _I8, _I8, _I8, _I8)],
             nogil=True)
def stretch_mix(data: np.ndarray, band_index: np.ndarray, scales: np.ndarray, mixing: np.ndarray, q: float,
                arcsinh: bool, top: int, left: int, height: int, width: int) -> np.ndarray:
    """``(channels, height, width)`` float32 of the window at (``top``, ``left``) of ``data`` (bands, H, W): bands
    ``band_index`` divided by ``scales``, mixed by ``mixing`` (channels, bands), then ``arcsinh(q * x)`` or not.

    ``arcsinh`` is ``log(|x| + sqrt(x**2 + 1))`` in double precision with the sign of ``x``, rounded to float32: twice
    as fast as numpy's float32 ``arcsinh`` and within one unit in the last place of it.
    """
    n_channels, n_bands = mixing.shape
    out = np.zeros((n_channels, height, width), dtype=np.float32)
    q32 = np.float32(q)
    for c in range(n_channels):
        for b in range(n_bands):
            weight, scale, band = mixing[c, b], scales[b], band_index[b]
            for y in range(height):
                for x in range(width):
                    out[c, y, x] += weight * (data[band, top + y, left + x] / scale)
        if arcsinh:
            for y in range(height):
                for x in range(width):
                    value = np.float64(np.float32(out[c, y, x] * q32))
                    magnitude = abs(value)
                    out[c, y, x] = math.copysign(math.log(magnitude + math.sqrt(magnitude * magnitude + 1.0)), value)
    return out


@cached_njit([(_F4[:, :, ::1], _F8, _F8[::1], _F8, _I8, _I8, _I8, _I8, _F4[:, :, ::1])], nogil=True)
def normalise_resize(stretched: np.ndarray, low: float, high: np.ndarray, nan_fill: float, top: int, left: int,
                     height: int, width: int, out: np.ndarray) -> None:
    """Write into ``out`` (channels, S, S): the window (``top``, ``left``, ``height``, ``width``) of ``stretched``
    mapped from [``low``, ``high[c]``] to [0, 1] and clipped (a channel whose ``high`` is not finite or not above
    ``low`` is 0), NaN replaced by ``nan_fill``, resized to S x S as Pillow's bilinear filter does, clipped again."""
    n_channels = stretched.shape[0]
    size = out.shape[1]
    low32 = np.float32(low)
    fill = np.float32(nan_fill)
    window = np.empty((height, width), dtype=np.float32)
    need_horizontal = width != size
    need_vertical = height != size
    h_bounds, h_weights = resample_coefficients(width, size)
    v_bounds, v_weights = resample_coefficients(height, size)
    # tap k of output pixel i reads input pixel h_taps[k, i] (clamped: taps past the last weigh 0)
    h_weights_t = np.ascontiguousarray(h_weights.T)
    h_taps = np.empty(h_weights_t.shape, dtype=np.int64)
    for k in range(h_taps.shape[0]):
        for i in range(size):
            h_taps[k, i] = min(h_bounds[i, 0] + k, width - 1)
    first_row = v_bounds[0, 0] if need_horizontal else 0
    last_row = v_bounds[size - 1, 0] + v_bounds[size - 1, 1] if need_horizontal else height
    rows = np.empty((last_row - first_row, size if need_horizontal else width), dtype=np.float32)
    accumulator = np.empty(rows.shape[1], dtype=np.float64)
    for c in range(n_channels):
        valid = math.isfinite(high[c]) and high[c] > low
        span = high[c] - low
        for y in range(height):
            for x in range(width):
                value = stretched[c, top + y, left + x]
                if not valid:
                    window[y, x] = 0.0
                elif math.isnan(value):
                    window[y, x] = fill
                else:
                    scaled = np.float32(np.float64(np.float32(value - low32)) / span)
                    window[y, x] = min(max(scaled, np.float32(0.0)), np.float32(1.0))
        if need_horizontal:
            for y in range(first_row, last_row):
                source = window[y]
                accumulator[:] = 0.0
                for k in range(h_taps.shape[0]):
                    taps, weights = h_taps[k], h_weights_t[k]
                    for i in range(size):
                        accumulator[i] += source[taps[i]] * weights[i]
                target = rows[y - first_row]
                for i in range(size):
                    target[i] = accumulator[i]
        else:
            rows[:, :] = window
        for i in range(size):
            if need_vertical:
                start, taps = v_bounds[i, 0] - first_row, v_bounds[i, 1]
                accumulator[:] = 0.0
                for k in range(taps):
                    weight = v_weights[i, k]
                    source = rows[start + k]
                    for x in range(accumulator.size):
                        accumulator[x] += source[x] * weight
                target = out[c, i]
                for x in range(size):
                    target[x] = min(max(np.float32(accumulator[x]), np.float32(0.0)), np.float32(1.0))
            else:
                target, source = out[c, i], rows[i]
                for x in range(size):
                    target[x] = min(max(source[x], np.float32(0.0)), np.float32(1.0))


@njit(nogil=True)
def _swap32(bits: np.uint32) -> np.uint32:
    return (((bits & np.uint32(0xFF)) << np.uint32(24)) | ((bits & np.uint32(0xFF00)) << np.uint32(8))
            | ((bits >> np.uint32(8)) & np.uint32(0xFF00)) | ((bits >> np.uint32(24)) & np.uint32(0xFF)))


@cached_njit([(types.Array(_U4, 2, "C", readonly=readonly), types.boolean, _F8[::1], _F8[::1], _I8[::1], _I8[::1],
               _I8, _I8, _U4[::1], _BOOLS, _BOOLS) for readonly in (True, False)], nogil=True)
def cut_band(image_bits: np.ndarray, swap: bool, xs: np.ndarray, ys: np.ndarray, sizes: np.ndarray,
             offsets: np.ndarray, band: int, n_bands: int, out_bits: np.ndarray, overlaps: np.ndarray,
             edges: np.ndarray) -> None:
    """Cut band ``band`` of every window into ``out_bits`` (the float32 bit patterns of all cutouts, window ``g`` at
    ``offsets[g]`` as ``(n_bands, sizes[g], sizes[g])``), NaN outside the image, exactly as
    ``astropy.nddata.utils.overlap_slices(mode="partial")`` places it around ``(ys[g], xs[g])`` (lower limit
    ``ceil(position - size / 2)``). ``image_bits``: the band's float32 pixels as uint32 (byte-swapped when ``swap``,
    i.e. big-endian FITS data). Sets ``overlaps[g]`` when the window meets the image and ``edges[g]`` when it is cut by
    the image's border."""
    nan_bits = np.uint32(0x7FC00000)
    height, width = image_bits.shape
    for g in range(xs.size):
        size = sizes[g]
        base = offsets[g] + band * size * size
        for i in range(size * size):
            out_bits[base + i] = nan_bits
        x, y = xs[g], ys[g]
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        row0 = int(math.ceil(y - size / 2.0))
        col0 = int(math.ceil(x - size / 2.0))
        if row0 + size <= 0 or col0 + size <= 0 or row0 >= height or col0 >= width:
            continue
        top, bottom = max(0, row0), min(height, row0 + size)
        left, right = max(0, col0), min(width, col0 + size)
        overlaps[g] = True
        if bottom - top != size or right - left != size:
            edges[g] = True
        for r in range(top, bottom):
            target = base + (r - row0) * size - col0
            for c in range(left, right):
                bits = image_bits[r, c]
                out_bits[target + c] = _swap32(bits) if swap else bits


@cached_njit([(_U4[::1], _I8[::1], _I8[::1])], nogil=True)
def nan_or_zero_fractions(out_bits: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per window, the fraction of its float32 values that are NaN or (either-signed) zero."""
    fractions = np.empty(offsets.size)
    for g in range(offsets.size):
        count = 0
        for i in range(offsets[g], offsets[g] + lengths[g]):
            bits = out_bits[i] & np.uint32(0x7FFFFFFF)
            if bits == 0 or bits > np.uint32(0x7F800000):
                count += 1
        fractions[g] = count / lengths[g] if lengths[g] else 1.0
    return fractions


@cached_njit([(_F4[::1], _I8[::1], _I8[::1], _I8, _I8[::1], _F4[::1], _F4[:, ::1], _F8, types.boolean, _F8, _F8[::1],
               _F8, _I8[:, ::1], _F4[:, :, :, ::1])], nogil=True)
def preprocess_windows(data: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, n_bands: int, band_index: np.ndarray,
                       scales: np.ndarray, mixing: np.ndarray, q: float, arcsinh: bool, low: float, high: np.ndarray,
                       nan_fill: float, crops: np.ndarray, out: np.ndarray) -> None:
    """:func:`stretch_mix` then :func:`normalise_resize` for every window, with fixed clip limits ``[low, high]``:
    window ``g`` is ``data[offsets[g]:]`` as ``(n_bands, sizes[g], sizes[g])``, cropped to ``crops[g]`` (top, left,
    height, width), into ``out[g]``. One call, without the GIL, for a whole batch."""
    for g in range(offsets.size):
        size = sizes[g]
        window = data[offsets[g] : offsets[g] + n_bands * size * size].reshape((n_bands, size, size))
        top, left, height, width = crops[g, 0], crops[g, 1], crops[g, 2], crops[g, 3]
        stretched = stretch_mix(window, band_index, scales, mixing, q, arcsinh, top, left, height, width)
        normalise_resize(stretched, low, high, nan_fill, 0, 0, height, width, out[g])
