"""The batched torch representations (events.voxel_grid_batch / histogram_batch) equal the numpy
reference sample by sample, on CPU and, where one is present, on CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from event_seg.data.events import (compact_events, histogram, histogram_batch, voxel_grid,
                                   voxel_grid_batch)
from event_seg.errors import DatasetError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
H, W, BINS = 12, 20, 5


def _window(rng, n, t_start=0, t_span=50_000, dtype=np.int64, polarity="bool"):
    x, y = rng.integers(0, W, n), rng.integers(0, H, n)
    t = (t_start + rng.integers(0, t_span, n)).astype(dtype)
    p = rng.integers(0, 2, n)
    p = {"bool": p.astype(bool), "01": p.astype(np.uint8), "pm1": (2 * p - 1).astype(np.int8)}[polarity]
    return x, y, t, p


def _pack(windows, device, compact=False):
    parts = {k: [] for k in "xytpb"}
    for i, (x, y, t, p) in enumerate(windows):
        if compact:
            c = compact_events(x, y, t, p, H, W, "test")
            x, y, t, p = c["x"], c["y"], c["t"].astype(np.int64), c["p"]
        for k, a in zip("xytp", (x, y, t, p)):
            parts[k].append(np.asarray(a))
        parts["b"].append(np.full(len(x), i))
    t_dtype = np.result_type(*parts["t"]) if parts["t"] else np.int64
    out = [torch.from_numpy(np.concatenate(parts[k]).astype(
        t_dtype if k == "t" else np.result_type(*parts[k]))).to(device) for k in "xytpb"]
    return out


# Windows covering the cases: random windows (epoch nanoseconds and microseconds), one
# event, all-equal timestamps, an empty sample inside the batch, polarity encodings.
def _cases():
    rng = np.random.default_rng(0)
    return [
        _window(rng, 400, t_start=1_600_000_000_000_000_000, t_span=50_000_000),  # ns
        _window(rng, 1),                                                             # one event
        _window(rng, 0),                                                             # empty
        (*_window(rng, 30)[:2], np.full(30, 123_456, np.int64), rng.integers(0, 2, 30)),
        _window(rng, 300, t_start=1_500_000_000_000, t_span=50_000, polarity="01"),  # us
        _window(rng, 200, polarity="pm1"),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("compact", [False, True], ids=["raw_stamps", "compact_offsets"])
def test_voxel_grid_batch_equals_numpy_per_sample(device, normalize, compact):
    windows = _cases()
    x, y, t, p, b = _pack(windows, device, compact)
    before = [a.clone() for a in (x, y, t, p, b)]
    grid = voxel_grid_batch(x, y, t, p, b, len(windows), BINS, H, W, normalize=normalize)
    assert all(torch.equal(a, c) for a, c in zip(before, (x, y, t, p, b)))  # inputs untouched
    assert grid.shape == (len(windows), BINS, H, W) and grid.dtype == torch.float32
    for i, (wx, wy, wt, wp) in enumerate(windows):
        expected = voxel_grid(wx, wy, wt, wp, BINS, H, W, normalize=normalize)
        np.testing.assert_allclose(grid[i].cpu().numpy(), expected, rtol=1e-5, atol=1e-5,
                                   err_msg=f"sample {i}")
    assert not grid[2].any()  # the empty sample
    assert grid[3, 1:].abs().sum() == 0 and grid[3, 0].any()  # all-equal stamps: bin 0


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_voxel_grid_matches_the_float_one(device):
    windows = _cases()
    x, y, t, p, b = _pack(windows, device)
    plain = voxel_grid_batch(x, y, t, p, b, len(windows), BINS, H, W, normalize=True)
    fixed = voxel_grid_batch(x, y, t, p, b, len(windows), BINS, H, W, normalize=True,
                             deterministic=True)
    torch.testing.assert_close(fixed, plain, rtol=1e-5, atol=1e-5)
    again = voxel_grid_batch(x, y, t, p, b, len(windows), BINS, H, W, normalize=True,
                             deterministic=True)
    assert torch.equal(fixed, again)


@pytest.mark.parametrize("device", DEVICES)
def test_histogram_batch_equals_numpy_per_sample(device):
    windows = _cases()
    x, y, t, p, b = _pack(windows, device)
    counts = histogram_batch(x, y, p, b, len(windows), H, W)
    for i, (wx, wy, _, wp) in enumerate(windows):
        np.testing.assert_array_equal(counts[i].cpu().numpy(), histogram(wx, wy, wp, H, W))


def test_batched_functions_refuse_out_of_range_coordinates_on_cpu():
    x, y, t, p, b = _pack([(np.array([W]), np.array([0]), np.array([0]), np.array([1]))], "cpu")
    with pytest.raises(ValueError, match="out of range"):
        voxel_grid_batch(x, y, t, p, b, 1, BINS, H, W)


def test_compact_events_are_small_and_checked():
    rng = np.random.default_rng(1)
    x, y, t, p = _window(rng, 100, t_start=1_600_000_000_000_000_000)
    c = compact_events(x.astype(np.uint16), y.astype(np.uint16), t, p, H, W, "f.npz")
    assert [c[k].dtype for k in "xytp"] == [np.int16, np.int16, np.int32, np.int8]
    assert c["t"].min() == 0 and set(np.unique(c["p"])) <= {-1, 1}
    bad_t = t.astype(np.float64)
    bad_t[5] = np.nan
    with pytest.raises(DatasetError, match="f.npz.*NaN"):
        compact_events(x, y, bad_t, p, H, W, "f.npz")
    with pytest.raises(DatasetError, match="f.npz.*outside the 12x20 sensor"):
        compact_events(np.full(100, W), y, t, p, H, W, "f.npz")


def test_tiny_windows_match_the_reference_across_spans_and_bin_counts():
    """Stamps whose last one rounds just above or below the last bin, float32 stamps with an
    offset start, normalised or not: the batch agrees with the reference (a review found spans
    where it did not)."""
    rng = np.random.default_rng(0)
    worst = 0.0
    for i in range(400):
        n, bins = int(rng.integers(1, 6)), int(rng.integers(1, 16))
        x, y = rng.integers(0, 3, n).astype(np.int16), np.zeros(n, np.int16)
        t = (rng.integers(0, 10**9, n) if i % 2 else
             (rng.random(n) * rng.random() * 100 + rng.random() * 1e3).astype(np.float32))
        p = rng.choice(np.array([-1, 1], np.int8), n)
        for normalize in (False, True):
            expected = voxel_grid(x, y, t, p, bins, 1, 3, normalize=normalize)
            got = voxel_grid_batch(*map(torch.from_numpy, (x, y, t, p)),
                                   torch.zeros(n, dtype=torch.long), 1, bins, 1, 3,
                                   normalize=normalize)[0].numpy()
            worst = max(worst, float(np.abs(expected - got).max()))
    assert worst < 1e-5
