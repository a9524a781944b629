"""Event representations: pure, vectorised functions (numpy in, numpy out; torch tensors accepted).

Events are four equally long arrays: ``x`` (column), ``y`` (row), ``t`` (timestamp, any unit) and
``p`` (polarity as 0/1, bool or -1/+1). The time surface and the mixed-density event stack live
in recency.py; the dispatchers below (``events_to_tensor``, ``events_to_tensor_batch``) cover all.
"""

from __future__ import annotations

import numpy as np

REPRESENTATIONS = ("voxel_grid", "histogram", "time_surface", "mdes")

# Seconds per tick of each time unit a reader may report (see tau_in_ticks).
SECONDS_PER_TICK = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


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
    if representation in ("voxel_grid", "mdes"):
        return num_bins
    if representation in ("histogram", "time_surface"):  # one channel per polarity
        return 2
    raise ValueError(f"unknown event representation {representation!r}; "
                     f"choose one of {', '.join(REPRESENTATIONS)}")


def tau_in_ticks(tau_ms: float, time_unit) -> float:
    """The time surface's decay constant in the unit of the event stamps.

    Readers hand over time in their format's own tick (offsets inside the window, exact
    integers); the voxel grid, the histogram and the MDES normalise time per window and never
    need the unit. Only the time surface has an absolute time scale, so instead of rescaling
    every event the constant is converted once, where the tensor is built, from the unit the
    reader reports (``DatasetInfo.time_unit``).
    """
    from ..errors import ConfigError, DatasetError

    if tau_ms is None or not tau_ms > 0:
        raise ConfigError(f"dataset.time_surface.tau_ms={tau_ms} must be positive")
    if time_unit not in SECONDS_PER_TICK:
        raise DatasetError(f"dataset.representation=time_surface needs the unit of the event "
                           f"timestamps, and the reader reports {time_unit!r} (known: "
                           f"{', '.join(SECONDS_PER_TICK)})")
    return float(tau_ms) * 1e-3 / SECONDS_PER_TICK[time_unit]


def events_to_tensor(events: dict, representation: str, num_bins: int, height: int, width: int,
                     normalize: bool = False, tau=None) -> np.ndarray:
    """Builds the configured representation from an ``{x, y, t, p}`` mapping. ``tau`` (the
    time surface's decay constant, in the unit of ``t``: see :func:`tau_in_ticks`) is needed
    by ``time_surface`` alone."""
    if representation == "voxel_grid":
        return voxel_grid(events["x"], events["y"], events["t"], events["p"], num_bins,
                          height, width, normalize=normalize)
    if representation == "histogram":
        grid = histogram(events["x"], events["y"], events["p"], height, width)
        # Counts are unbounded; log1p keeps busy pixels from dominating the input scale.
        return np.log1p(grid) if normalize else grid
    if representation == "time_surface":
        from .recency import time_surface

        # Already in [0, 1] with 0 meaning "no event": ``normalize`` leaves it as it is
        # (standardising would make old events negative and empty pixels mid-range).
        return time_surface(events["x"], events["y"], events["t"], events["p"], tau,
                            height, width)
    if representation == "mdes":
        from .recency import mdes

        return mdes(events["x"], events["y"], events["t"], events["p"], num_bins, height,
                    width, normalize=normalize)
    representation_channels(representation, num_bins)  # raises the readable error
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# Compact window events: what a reader hands over instead of a dense tensor
# ---------------------------------------------------------------------------------------------

def compact_events(x, y, t, p, height: int, width: int, source: str) -> dict:
    """The window's events in small dtypes, checked: ``x``, ``y`` int16, ``t`` the offset from
    the window's first stamp (int32 when it fits, else int64; float32 for float stamps) and
    ``p`` int8 -1/+1.

    Raises ``DatasetError`` naming ``source`` for non-finite stamps, unequal lengths or
    coordinates outside the ``height`` x ``width`` sensor (a corrupt file, never an index error
    later). Time offsets keep the voxel grid exact: it normalises time per window, and offsets
    inside one window are small integers where the raw stamps (epoch nanoseconds) are not.
    """
    from ..errors import DatasetError

    x, y, t, p = (_as_numpy(a) for a in (x, y, t, p))
    n = x.size
    if not (y.size == t.size == p.size == n):
        raise DatasetError(f"{source}: event arrays differ in length (x {x.size}, y {y.size}, "
                           f"t {t.size}, p {p.size})")
    if height > 32767 or width > 32767:
        raise DatasetError(f"{source}: a {height}x{width} sensor is beyond 16-bit coordinates")
    if n == 0:
        return {"x": np.zeros(0, np.int16), "y": np.zeros(0, np.int16),
                "t": np.zeros(0, np.int32), "p": np.zeros(0, np.int8)}
    if t.dtype.kind == "f":
        if not np.isfinite(t).all():
            raise DatasetError(f"{source}: event timestamps hold NaN or infinity")
    elif t.dtype.kind not in "iu":
        raise DatasetError(f"{source}: event timestamps have dtype {t.dtype}, not numbers")
    for name, a in (("x", x), ("y", y)):
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise DatasetError(f"{source}: event coordinate {name} holds NaN or infinity")
    low = 0 if x.dtype.kind == "u" and y.dtype.kind == "u" else min(x.min(), y.min())
    if low < 0 or x.max() >= width or y.max() >= height:
        raise DatasetError(
            f"{source}: event coordinates outside the {height}x{width} sensor (x in "
            f"[{x.min()}, {x.max()}], y in [{y.min()}, {y.max()}])")
    t0 = t.min()
    if t.dtype.kind == "f":
        offset = (t - t0).astype(np.float32)
    else:
        offset = t - t0  # exact in the stamps' own integer type, never negative
        wide = offset.max() > np.iinfo(np.int32).max
        offset = _as_int(offset, np.int64 if wide else np.int32)
    if p.dtype == np.bool_ or p.dtype.kind == "u":
        sign = p.astype(np.int8)
        sign *= 2
        sign -= 1  # 0/1 -> -1/+1 (the signed cast first: see signed_polarity)
    else:
        sign = np.where(p > 0, 1, -1).astype(np.int8)
    return {"x": _as_int(x, np.int16), "y": _as_int(y, np.int16), "t": offset, "p": sign}


def _as_int(a: np.ndarray, dtype) -> np.ndarray:
    """``a`` (integers already checked to fit ``dtype``, never negative when unsigned) as
    ``dtype``: a view where only the signedness differs (uint16 coordinates as int16, uint32
    offsets as int32) instead of a copy. A 10^6-event DSEC window saves a few milliseconds."""
    dtype = np.dtype(dtype)
    if a.dtype.kind in "iu" and a.dtype.itemsize == dtype.itemsize:
        return a.view(dtype)
    return a.astype(dtype)


# ---------------------------------------------------------------------------------------------
# Batched representations in torch, on the device of their inputs
# ---------------------------------------------------------------------------------------------
# A batch's events are one flat set of arrays with ``batch_index`` naming each event's sample
# (the layout of EST and OpenEB's event_to_tensor_torch). Each function equals its numpy
# reference above sample by sample. On CUDA, float index_add_ uses atomics: the order of the
# additions, and so the last bits of a cell, may change from run to run. ``deterministic=True``
# accumulates in fixed point (integers add in any order to the same sum) at a small cost.

FIXED_POINT_SCALE = 2.0 ** 24  # weights in [-1, 1] to ~6e-8; int64 holds 5e11 events per cell


def _per_sample(values, batch_index, batch_size: int, reduce: str):
    """Per-sample min or max of ``values`` (samples without events keep the opposite extreme)."""
    start = values.max() if reduce == "amin" else values.min()
    out = start.expand(batch_size).clone()
    return out.scatter_reduce_(0, batch_index, values, reduce=reduce, include_self=True)


def _signed(p):
    import torch

    if p.dtype == torch.bool:
        return p.to(torch.float32).mul_(2).sub_(1)
    return torch.where(p > 0, 1.0, -1.0).to(torch.float32)


def _scatter_add(grid, cells, weights, deterministic: bool):
    """``grid[cells] += weights`` (flat views); in fixed point when ``deterministic``."""
    if deterministic:
        import torch

        fixed = torch.round(weights.double() * FIXED_POINT_SCALE).long()
        return grid.scatter_add_(0, cells, fixed)
    # scatter_add_ rather than index_add_: the same atomics on CUDA, ~1.6x faster on a CPU.
    return grid.scatter_add_(0, cells, weights)


def _check_coordinates(x, y, batch_index, batch_size: int, height: int, width: int) -> None:
    # Only where it costs no device sync: on CUDA the readers and transforms have already
    # guaranteed the ranges (an out-of-range index there is a device-side assert).
    import torch

    if x.device.type != "cpu" or not x.numel():
        return
    (x_lo, x_hi), (y_lo, y_hi) = torch.aminmax(x), torch.aminmax(y)
    b_lo, b_hi = torch.aminmax(batch_index)
    if (int(x_lo) < 0 or int(y_lo) < 0 or int(x_hi) >= width or int(y_hi) >= height
            or int(b_lo) < 0 or int(b_hi) >= batch_size):
        raise ValueError(f"event coordinates or batch indices out of range for a batch of "
                         f"{batch_size} {height}x{width} frames")


def voxel_grid_batch(x, y, t, p, batch_index, batch_size: int, num_bins: int, height: int,
                     width: int, normalize: bool = False, deterministic: bool = False):
    """The rpg voxel grid of every sample of a packed batch: float32 ``[B, num_bins, H, W]``.

    Per sample, exactly as :func:`voxel_grid`: time normalised over the sample's own first and
    last stamp, bilinear weights in time, polarity -1/+1 (0/1 and bool accepted), all-equal
    stamps in bin 0, an empty sample all zeros, and with ``normalize`` its non-zero cells
    standardised on their own.
    """
    import torch

    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    device = x.device
    plane = height * width
    size = batch_size * num_bins * plane
    grid = torch.zeros(size, dtype=torch.int64 if deterministic else torch.float32,
                       device=device)
    if x.numel():
        b = batch_index.long()
        _check_coordinates(x, y, b, batch_size, height, width)
        # One index array, built in place: a full-size temporary per step costs more than the
        # scatter itself at 10^6 events.
        index_dtype = torch.int64
        pixel = y.to(index_dtype, copy=True).mul_(width).add_(x)  # never the caller's y
        pixel.add_(b.mul(num_bins * plane))
        sign = _signed(p)
        if num_bins == 1:  # every event in the one bin: weight p
            _scatter_add(grid, pixel, sign, deterministic)
        else:
            # Offsets and span in the stamps' own type, as the numpy reference computes them
            # (integers exactly; float32 stamps in float32).
            t = t if t.dtype.is_floating_point else t.long()
            t0 = _per_sample(t, b, batch_size, "amin")
            span = (_per_sample(t, b, batch_size, "amax") - t0).double()
            scale = torch.where(span > 0, (num_bins - 1) / span.clamp(min=1e-300),
                                torch.zeros_like(span)).float()
            tn = (t - t0[b]).float().mul_(scale[b])
            left = tn.to(index_dtype)  # tn >= 0: truncation is the floor
            frac = tn.sub_(left)
            right_weight = frac.mul_(sign)               # p * frac to bin left + 1
            left_weight = sign.sub_(right_weight)        # p * (1 - frac) to bin left
            # An event in the last bin has no bin to its right: its (zero or rounding-sized)
            # right weight is dropped, as the reference drops it.
            last = left >= num_bins - 1
            right_weight.masked_fill_(last, 0)
            cells = left.mul_(plane).add_(pixel)
            _scatter_add(grid, cells, left_weight, deterministic)
            _scatter_add(grid, cells.add_(plane).sub_(last.to(index_dtype) * plane),
                         right_weight, deterministic)
    if deterministic:
        grid = grid.double().div_(FIXED_POINT_SCALE).float()
    grid = grid.view(batch_size, num_bins, height, width)
    return normalize_nonzero_batch(grid) if normalize else grid


def normalize_nonzero_batch(grid):
    """Per sample of ``[B, C, H, W]``, in place: standardise the non-zero cells (mean 0, std 1;
    only centred when std is 0); cells without events stay exactly 0."""
    import torch

    flat = grid.view(grid.shape[0], -1)
    nonzero = flat != 0
    count = nonzero.sum(1, dtype=torch.float64).clamp_(min=1)
    mean = flat.sum(1, dtype=torch.float64).div_(count)
    # The two-pass variance (over the centred non-zero cells), as numpy computes it.
    flat.sub_(mean.float()[:, None]).mul_(nonzero)
    std = flat.square().sum(1, dtype=torch.float64).div_(count).sqrt_()
    std = torch.where(std > 0, std, torch.ones_like(std)).float()
    return flat.div_(std[:, None]).view_as(grid)


def histogram_batch(x, y, p, batch_index, batch_size: int, height: int, width: int):
    """Event counts per pixel and polarity of every sample: float32 ``[B, 2, H, W]``
    (negative, positive), as :func:`histogram`. Integer counts: exact and deterministic."""
    import torch

    plane = height * width
    if not x.numel():
        return torch.zeros(batch_size, 2, height, width, device=x.device)
    b = batch_index.long()
    _check_coordinates(x, y, b, batch_size, height, width)
    positive = (_signed(p) > 0).long()
    cells = (b * 2 + positive) * plane + y.long() * width + x.long()
    counts = torch.bincount(cells, minlength=batch_size * 2 * plane)
    return counts.float().view(batch_size, 2, height, width)


def events_to_tensor_batch(events: dict, batch_size: int, representation: str, num_bins: int,
                           height: int, width: int, normalize: bool = False,
                           deterministic: bool = False, tau=None):
    """The configured representation of a packed batch (``x``, ``y``, ``t``, ``p``,
    ``batch_index``), as :func:`events_to_tensor` builds it per sample (``tau`` likewise)."""
    import torch

    x, y, p, b = events["x"], events["y"], events["p"], events["batch_index"]
    if representation == "voxel_grid":
        return voxel_grid_batch(x, y, events["t"], p, b, batch_size, num_bins, height, width,
                                normalize=normalize, deterministic=deterministic)
    if representation == "histogram":
        grid = histogram_batch(x, y, p, b, batch_size, height, width)
        return torch.log1p(grid) if normalize else grid
    if representation == "time_surface":
        from .recency import time_surface_batch

        # In [0, 1] already: ``normalize`` leaves it as it is (see events_to_tensor).
        return time_surface_batch(x, y, events["t"], p, b, batch_size, tau, height, width)
    if representation == "mdes":
        from .recency import mdes_batch

        # Integer sums: deterministic without the fixed-point path.
        return mdes_batch(x, y, events["t"], p, b, batch_size, num_bins, height, width,
                          normalize=normalize)
    representation_channels(representation, num_bins)  # raises the readable error
    raise AssertionError("unreachable")
