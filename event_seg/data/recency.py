"""Representations that weigh events by how recent they are in their window: the time surface
and RVT's mixed-density event stack (MDES).

Like events.py: numpy reference functions (per window) and batched torch functions (a packed
batch with ``batch_index``, on the device of its inputs) that equal them sample by sample.
``events.events_to_tensor`` / ``events_to_tensor_batch`` dispatch to them.

Time is read in the stamps' own unit (a "tick": DSEC microseconds, EventScape and the synthetic
set nanoseconds). The MDES normalises time per window and needs no unit; the time surface's
decay constant ``tau`` is given in ticks (see ``events.tau_in_ticks``).
"""

from __future__ import annotations

import numpy as np

from .events import (_as_numpy, _check_coordinates, _flat_pixel_index, _per_sample, _signed,
                     normalize_nonzero, normalize_nonzero_batch, signed_polarity)


def _check_tau(tau) -> float:
    if tau is None or not float(tau) > 0:
        raise ValueError(f"the time surface needs a positive decay constant tau (in the unit of "
                         f"t), got {tau}")
    return float(tau)


# ---------------------------------------------------------------------------------------------
# Time surface
# ---------------------------------------------------------------------------------------------

def time_surface(x, y, t, p, tau: float, height: int, width: int) -> np.ndarray:
    """The exponentially decayed time surface at the window's end, float32 ``[2, H, W]``
    (negative, positive polarity, as :func:`events.histogram`).

    For each pixel and polarity: ``exp(-(t_end - t_last) / tau)``, with ``t_last`` that pixel's
    last event of that polarity and ``t_end`` the window's last stamp; 0 where it has no event.
    Values lie in (0, 1]: 1 for an event at the window's end. ``tau`` is in the unit of ``t``.
    Ages are taken in the stamps' own type (integers exactly, also for epoch nanoseconds) before
    the division, which runs in float64.
    """
    tau = _check_tau(tau)
    plane = height * width
    surface = np.zeros(2 * plane, dtype=np.float32)
    t = _as_numpy(t)
    if t.size:
        pix = _flat_pixel_index(x, y, height, width)
        cells = (signed_polarity(p) > 0).astype(np.intp) * plane + pix
        lowest = np.finfo(t.dtype).min if t.dtype.kind == "f" else np.iinfo(t.dtype).min
        last = np.full(2 * plane, lowest, dtype=t.dtype)
        # np.maximum.at keeps the latest stamp per cell whatever the order of the events
        # (files are sorted by time, but a reader need not rely on it).
        np.maximum.at(last, cells, t)
        hit = np.zeros(2 * plane, dtype=bool)
        hit[cells] = True
        age = t.max() - last[hit]  # >= 0, exact in the stamps' type
        surface[hit] = np.exp(-(age.astype(np.float64) / tau))
    return surface.reshape(2, height, width)


def time_surface_batch(x, y, t, p, batch_index, batch_size: int, tau: float, height: int,
                       width: int):
    """:func:`time_surface` of every sample of a packed batch: float32 ``[B, 2, H, W]``.

    ``t_end`` is each sample's own last stamp; an empty sample is all zeros. The latest stamp
    per cell is a scatter-max, whose result does not depend on the order of the updates, so the
    output is deterministic on CUDA without the fixed-point path the voxel grid needs.
    """
    import torch

    tau = _check_tau(tau)
    plane = height * width
    size = batch_size * 2 * plane
    if not x.numel():
        return torch.zeros(batch_size, 2, height, width, device=x.device)
    b = batch_index.long()
    _check_coordinates(x, y, b, batch_size, height, width)
    t = t if t.dtype.is_floating_point else t.long()
    cells = (b * 2 + (_signed(p) > 0).long()) * plane + y.long() * width + x.long()
    # The lowest value of the type marks a cell without events: offsets are never negative and
    # raw stamps never reach it.
    empty = (torch.finfo(t.dtype).min if t.dtype.is_floating_point
             else torch.iinfo(t.dtype).min)
    last = torch.full((size,), empty, dtype=t.dtype, device=t.device)
    last.scatter_reduce_(0, cells, t, reduce="amax", include_self=True)
    last = last.view(batch_size, 2 * plane)
    hit = last != empty
    t_end = _per_sample(t, b, batch_size, "amax")[:, None]
    # Empty cells take age 0 before the subtraction (t_end minus the sentinel would overflow).
    age = t_end - torch.where(hit, last, t_end)
    surface = torch.exp(age.double().div_(-tau)).float().mul_(hit)
    return surface.view(batch_size, 2, height, width)


# ---------------------------------------------------------------------------------------------
# Mixed-density event stack (MDES)
# ---------------------------------------------------------------------------------------------

def mdes(x, y, t, p, num_bins: int, height: int, width: int,
         normalize: bool = False) -> np.ndarray:
    """The mixed-density event stack, float32 ``[num_bins, H, W]``: channel ``k`` holds, per
    pixel, the sum of the polarities (-1/+1) of the events in the last ``1/2**k`` of the window.

    Channel 0 holds the whole window, channel 1 its second half, channel ``num_bins - 1`` its
    last ``1/2**(num_bins - 1)``: nested windows that all end at the window's last stamp, so the
    most recent events weigh in every channel (MDES, Nam et al., ECCV 2022, as RVT adapts it to
    time windows: Gehrig & Scaramuzza, CVPR 2023, ``MixedDensityEventStack`` in
    ``data/utils/representations.py`` of github.com/uzh-rpg/RVT).

    Conventions shared with RVT's code: ``num_bins`` channels, nested (cumulative) channels, each
    cell the net count of signed polarities, time normalised over the window's first and last
    stamp, and a window whose events share one stamp putting them in every channel. Where we
    differ: RVT's released code orders its intervals from the window's *start* (its channel
    ``num_bins - 1 - k`` holds the first ``1/2**k`` of the window) and lists the channels in the
    opposite order; we follow the definition above, which keeps the dense end at the most recent
    events, as MDES was introduced. RVT also stores int8 (wrapping on busy pixels) and clips to
    +-``count_cutoff``; here the counts are exact float32 and ``normalize`` standardises the
    non-zero cells as it does for the voxel grid (signed polarity sums both).

    An event of age ``a = (t_end - t) / (t_end - t_start)`` is in channel ``k`` when
    ``a < 2**-k`` (channel 0: always); ages are compared in float64 as ``age * 2**k < span``,
    exact for integer stamps.
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    plane = height * width
    t = _as_numpy(t)
    stack = np.zeros((num_bins, plane), dtype=np.float32)
    if t.size:
        pix = _flat_pixel_index(x, y, height, width)
        sign = signed_polarity(p).astype(np.float64)
        t_end = t.max()
        age = (t_end - t).astype(np.float64)  # the subtraction in the stamps' own type
        span = float(t_end - t.min())
        for k in range(num_bins):  # one pass per channel, each over every event
            # Events at the window's end are in every channel (also when the span is 0).
            inside = (age * 2.0 ** k < span) | (age == 0) if k else slice(None)
            stack[k] = np.bincount(pix[inside], weights=sign[inside], minlength=plane)
    stack = stack.reshape(num_bins, height, width)
    return normalize_nonzero(stack) if normalize else stack


def mdes_batch(x, y, t, p, batch_index, batch_size: int, num_bins: int, height: int,
               width: int, normalize: bool = False):
    """:func:`mdes` of every sample of a packed batch: float32 ``[B, num_bins, H, W]``.

    Each event goes once to the deepest channel whose interval holds it, found without a loop:
    with ``age = m_a * 2**e_a`` and ``span = m_s * 2**e_s`` (frexp, exact in float64), ``age *
    2**k < span`` holds up to ``k = e_s - e_a - (m_s <= m_a)``. Integer sums, then a reverse
    cumulative sum over the channels nests them: exact and deterministic on any device.
    """
    import torch

    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    plane = height * width
    if not x.numel():
        stack = torch.zeros(batch_size, num_bins, height, width, device=x.device)
        return stack  # all zeros: normalising leaves it as it is
    b = batch_index.long()
    _check_coordinates(x, y, b, batch_size, height, width)
    t = t if t.dtype.is_floating_point else t.long()
    t_end = _per_sample(t, b, batch_size, "amax")
    span = (t_end - _per_sample(t, b, batch_size, "amin")).double()[b]
    age = (t_end[b] - t).double()
    span_m, span_e = torch.frexp(span)
    age_m, age_e = torch.frexp(age)
    deepest = span_e.long() - age_e.long() - (span_m <= age_m).long()
    # Age 0 (an event at the window's end, every event of a zero-span window) is in every
    # channel; frexp(0) is (0, 0), so it is set apart rather than read off the exponents.
    deepest = torch.where(age == 0, num_bins - 1, deepest.clamp_(0, num_bins - 1))
    cells = (b * num_bins + deepest) * plane + y.long() * width + x.long()
    # Integer sums do not depend on the order of the additions: exact and deterministic.
    net = torch.zeros(batch_size * num_bins * plane, dtype=torch.int32, device=x.device)
    net.scatter_add_(0, cells, _signed(p).to(torch.int32))
    # Channel k sums the events whose deepest channel is k or beyond.
    net = net.view(batch_size, num_bins, height, width)
    stack = net.flip(1).cumsum(1, dtype=torch.int32).flip(1).float()
    return normalize_nonzero_batch(stack) if normalize else stack
