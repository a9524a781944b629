"""Event representations: pure, vectorised functions (numpy in, numpy out; torch tensors accepted).

Events are four equally long arrays: ``x`` (column), ``y`` (row), ``t`` (timestamp, any unit) and
``p`` (polarity as 0/1, bool or -1/+1).
"""

from __future__ import annotations

import numpy as np

REPRESENTATIONS = ("voxel_grid", "histogram")


def _as_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor, without importing torch here
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def signed_polarity(p) -> np.ndarray:
    """Polarity as float32 -1/+1 whatever the input encoding (0/1, bool, -1/+1).

    The cast to a signed type comes first: mapping 0 -> -1 on a uint8 or bool array wraps or stays 1.
    """
    p = _as_numpy(p)
    if p.dtype == np.bool_ or p.dtype == np.uint8 and p.size and p.max() <= 1:
        return _SIGN[p.view(np.uint8)]  # one table look-up for the common 0/1 byte encoding
    p = p.astype(np.float32)
    return np.where(p > 0, 1.0, -1.0).astype(np.float32)


_SIGN = np.array([-1.0, 1.0], dtype=np.float32)


def _flat_pixel_index(x, y, height: int, width: int) -> np.ndarray:
    x, y = _as_numpy(x), _as_numpy(y)
    if x.size:
        # Unsigned coordinates (every real format stores them so) cannot be negative: one
        # reduction each instead of two.
        low = 0 if x.dtype.kind == "u" and y.dtype.kind == "u" else min(x.min(), y.min())
        if low < 0 or x.max() >= width or y.max() >= height:
            raise ValueError(
                f"event coordinates out of range: x in [{x.min()}, {x.max()}], y in [{y.min()}, "
                f"{y.max()}] for a {height}x{width} sensor"
            )
    pix = y.astype(np.intp)
    pix *= width
    pix += x.astype(np.intp, copy=False)
    return pix


def voxel_grid(x, y, t, p, num_bins: int, height: int, width: int,
               normalize: bool = False) -> np.ndarray:
    """The rpg voxel grid (E2VID / ESS / DSEC convention), float32 ``[num_bins, height, width]``.

    Time is normalised to ``[0, num_bins - 1]`` with the first and last timestamp of the window;
    each event adds ``p * (1 - |tn - b|)`` to the two nearest bins ``b``, with polarity -1/+1.
    A window whose events share one timestamp puts them all in bin 0 (no division by zero).
    ``normalize`` standardises the non-zero cells (mean 0, std 1; only centred when std is 0).
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    t = _as_numpy(t)
    if t.size == 0:
        return np.zeros((num_bins, height, width), dtype=np.float32)
    pix = _flat_pixel_index(x, y, height, width)
    # Subtract the first stamp in integers: epoch nanoseconds (~1.6e18) are beyond float64's
    # exact integers, offsets within a window are not. float32 then holds tn in [0, B - 1] to
    # ~1e-7 relative, far below anything a network sees.
    t0 = t.min()
    span = float(t.max() - t0)
    tn = (t - t0).astype(np.float32)
    tn *= np.float32((num_bins - 1) / span) if span > 0 else np.float32(0)
    left = tn.astype(np.int32)  # tn >= 0: the cast is the floor
    right = tn
    right -= left  # frac, in place
    right *= signed_polarity(p)  # p * frac: the share of bin left + 1
    plane = height * width
    cells = left.astype(np.intp)
    cells *= plane
    cells += pix
    # Each event splits its polarity between bin `left` (p * (1 - frac)) and `left + 1`
    # (p * frac). np.add.at on float32 is numpy's fast scatter path (>= 1.25); weights that land
    # one bin past the last (frac is 0 there) go to a spare plane, cut off below.
    grid = np.zeros((num_bins + 1) * plane, dtype=np.float32)
    np.add.at(grid, cells, signed_polarity(p) - right)
    cells += plane
    np.add.at(grid, cells, right)
    grid = grid[:num_bins * plane]
    grid = grid.reshape(num_bins, height, width)
    if normalize:
        grid = normalize_nonzero(grid)
    return grid


def normalize_nonzero(grid: np.ndarray) -> np.ndarray:
    """Standardise the non-zero cells only; cells without events stay exactly 0."""
    grid = np.array(grid, dtype=np.float32, copy=True)
    mask = grid != 0
    if not mask.any():
        return grid
    values = grid[mask]
    mean, std = values.mean(), values.std()
    grid[mask] = (values - mean) / std if std > 0 else values - mean
    return grid


def histogram(x, y, p, height: int, width: int) -> np.ndarray:
    """Event counts per pixel and polarity, float32 ``[2, height, width]``: (negative, positive)."""
    pix = _flat_pixel_index(x, y, height, width)
    positive = (signed_polarity(p) > 0).astype(np.int64)
    counts = np.bincount(positive * (height * width) + pix, minlength=2 * height * width)
    return counts.astype(np.float32).reshape(2, height, width)


def representation_channels(representation: str, num_bins: int) -> int:
    if representation == "voxel_grid":
        return num_bins
    if representation == "histogram":
        return 2
    raise ValueError(f"unknown event representation {representation!r}; "
                     f"choose one of {', '.join(REPRESENTATIONS)}")


def events_to_tensor(events: dict, representation: str, num_bins: int, height: int, width: int,
                     normalize: bool = False) -> np.ndarray:
    """Builds the configured representation from an ``{x, y, t, p}`` mapping."""
    if representation == "voxel_grid":
        return voxel_grid(events["x"], events["y"], events["t"], events["p"], num_bins,
                          height, width, normalize=normalize)
    if representation == "histogram":
        grid = histogram(events["x"], events["y"], events["p"], height, width)
        # Counts are unbounded; log1p keeps busy pixels from dominating the input scale.
        return np.log1p(grid) if normalize else grid
    representation_channels(representation, num_bins)  # raises the readable error
    raise AssertionError("unreachable")
