"""Event representations (event_seg/data/events.py) against hand-computed cases.

The voxel grid follows the rpg convention (E2VID, ESS, DSEC):
``tn = (B-1) * (t - t0) / (tN - t0)``; every event adds ``p * (1 - |tn - b|)`` to bins
``floor(tn)`` and ``floor(tn) + 1`` with polarity -1/+1.
"""

from __future__ import annotations

import numpy as np
import pytest

from event_seg.data.events import (
    events_to_tensor,
    histogram,
    normalize_nonzero,
    representation_channels,
    signed_polarity,
    voxel_grid,
)


def ev(x, y, t, p):
    return (np.asarray(x, np.int64), np.asarray(y, np.int64), np.asarray(t, np.int64),
            np.asarray(p))


# --------------------------------------------------------------------------------------------
# Voxel grid: time interpolation
# --------------------------------------------------------------------------------------------

def test_voxel_three_events_land_in_their_own_bins():
    # t = 0, 5, 10 with 3 bins -> tn = 0, 1, 2 exactly: each event fills one cell with weight 1.
    x, y, t, p = ev([0, 1, 2], [0, 0, 1], [0, 5, 10], np.array([1, 0, 1], np.uint8))
    grid = voxel_grid(x, y, t, p, num_bins=3, height=2, width=3)
    expected = np.zeros((3, 2, 3), np.float32)
    expected[0, 0, 0] = 1.0    # t=0, positive
    expected[1, 0, 1] = -1.0   # t=5, negative (p=0)
    expected[2, 1, 2] = 1.0    # t=10, positive
    np.testing.assert_array_equal(grid, expected)


def test_voxel_event_halfway_between_bins_splits_half_half():
    # 2 bins, t = 0, 5, 10 -> tn = 0, 0.5, 1: the middle event splits 0.5 / 0.5.
    x, y, t, p = ev([0, 1, 2], [0, 0, 0], [0, 5, 10], [1, 1, 1])
    grid = voxel_grid(x, y, t, p, num_bins=2, height=1, width=3)
    expected = np.array([[[1.0, 0.5, 0.0]],
                         [[0.0, 0.5, 1.0]]], np.float32)
    np.testing.assert_array_equal(grid, expected)


def test_voxel_uneven_weights():
    # 5 bins, t = 0, 3, 10 -> tn = 0, 1.2, 4: the middle event puts 0.8 in bin 1, 0.2 in bin 2.
    x, y, t, p = ev([0, 1, 0], [0, 0, 1], [0, 3, 10], [-1, -1, 1])
    grid = voxel_grid(x, y, t, p, num_bins=5, height=2, width=2)
    expected = np.zeros((5, 2, 2), np.float32)
    expected[0, 0, 0] = -1.0
    expected[1, 0, 1] = -0.8
    expected[2, 0, 1] = -0.2
    expected[4, 1, 0] = 1.0
    np.testing.assert_allclose(grid, expected, atol=1e-6)
    # The last event sits exactly on the last bin: nothing may spill past it.
    assert grid.shape == (5, 2, 2)


def test_voxel_quarter_weights_and_accumulation_at_one_pixel():
    # 2 bins, t = 0, 1, 4 -> tn = 0, 0.25, 1. All at one pixel, signs +, +, -:
    # bin0 = 1 + 0.75 = 1.75 ; bin1 = 0.25 - 1 = -0.75.
    x, y, t, p = ev([1, 1, 1], [0, 0, 0], [0, 1, 4], [True, True, False])
    grid = voxel_grid(x, y, t, p, num_bins=2, height=1, width=2)
    np.testing.assert_allclose(grid[:, 0, 1], [1.75, -0.75], atol=1e-6)
    assert np.all(grid[:, 0, 0] == 0)


def test_voxel_time_is_normalised_over_the_window_not_absolute():
    # The same relative timing with an offset and a different unit gives the same grid.
    x, y, _, p = ev([0, 1, 2], [0, 0, 0], [0, 1, 4], [1, 0, 1])
    a = voxel_grid(x, y, np.array([0, 1, 4]), p, 3, 1, 3)
    b = voxel_grid(x, y, np.array([10**12, 10**12 + 1000, 10**12 + 4000], np.int64), p, 3, 1, 3)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_voxel_epoch_nanosecond_timestamps_keep_precision():
    # Unix-epoch nanoseconds (~1.6e18) exceed float64's exact integer range (2**53): the window
    # start must be subtracted in integer arithmetic before any float conversion, or an event
    # exactly halfway through a 10 us window no longer lands exactly on the middle bin.
    T = 1_600_000_000_000_000_000
    t = np.array([T, T + 5000, T + 10000], np.int64)
    grid = voxel_grid(np.array([0, 1, 2]), np.array([0, 0, 0]), t, np.array([1, 1, 1]), 3, 1, 3)
    expected = np.zeros((3, 1, 3), np.float32)
    expected[0, 0, 0] = expected[1, 0, 1] = expected[2, 0, 2] = 1.0
    np.testing.assert_allclose(grid, expected, atol=1e-6)


def test_voxel_unsorted_events_use_min_and_max_time():
    x, y, t, p = ev([2, 0, 1], [0, 0, 0], [10, 0, 5], [1, 1, 1])
    grid = voxel_grid(x, y, t, p, num_bins=3, height=1, width=3)
    expected = np.zeros((3, 1, 3), np.float32)
    expected[0, 0, 0] = expected[1, 0, 1] = expected[2, 0, 2] = 1.0
    np.testing.assert_array_equal(grid, expected)


def test_voxel_total_weight_is_sum_of_polarities():
    rng = np.random.default_rng(1)
    n = 300
    x, y = rng.integers(0, 7, n), rng.integers(0, 5, n)
    t = rng.integers(0, 1000, n)
    p = rng.integers(0, 2, n)
    grid = voxel_grid(x, y, t, p, 4, 5, 7)
    assert grid.sum() == pytest.approx(float((2 * p - 1).sum()), abs=1e-3)


# --------------------------------------------------------------------------------------------
# Polarity encodings
# --------------------------------------------------------------------------------------------

POL01 = np.array([1, 0, 0, 1, 1, 0])


@pytest.mark.parametrize("p", [
    POL01.astype(np.uint8),
    POL01.astype(bool),
    (2 * POL01 - 1).astype(np.int8),
    (2 * POL01 - 1).astype(np.int64),
    (2 * POL01 - 1).astype(np.float32),
    POL01.astype(np.int64),
], ids=["uint8_01", "bool", "int8_pm1", "int64_pm1", "float_pm1", "int64_01"])
def test_polarity_encodings_give_identical_grids(p):
    x = np.array([0, 1, 2, 0, 1, 2])
    y = np.array([0, 0, 0, 1, 1, 1])
    t = np.array([0, 2, 4, 6, 8, 10])
    reference = voxel_grid(x, y, t, (2 * POL01 - 1).astype(np.int64), 3, 2, 3)
    np.testing.assert_array_equal(voxel_grid(x, y, t, p, 3, 2, 3), reference)
    np.testing.assert_array_equal(histogram(x, y, p, 2, 3),
                                  histogram(x, y, POL01.astype(bool), 2, 3))
    # And the reference itself has the negatives negative.
    assert reference[0, 0, 0] == 1.0 and reference[0, 0, 1] < 0


def test_signed_polarity_uint8_zero_becomes_minus_one():
    # The classic bug: 2*p-1 or p*2-1 on uint8 wraps to 255; bool stays True.
    np.testing.assert_array_equal(signed_polarity(np.array([0, 1], np.uint8)), [-1.0, 1.0])
    np.testing.assert_array_equal(signed_polarity(np.array([False, True])), [-1.0, 1.0])
    np.testing.assert_array_equal(signed_polarity(np.array([-1, 1], np.int16)), [-1.0, 1.0])
    assert signed_polarity(np.array([0, 1], np.uint8)).dtype == np.float32


# --------------------------------------------------------------------------------------------
# Degenerate windows, normalisation, empty input, errors
# --------------------------------------------------------------------------------------------

def test_voxel_single_timestamp_window_puts_everything_in_bin_zero():
    x, y, t, p = ev([0, 1, 1, 2], [0, 1, 1, 0], [7, 7, 7, 7], [1, 0, 0, 1])
    grid = voxel_grid(x, y, t, p, num_bins=4, height=2, width=3)
    assert np.isfinite(grid).all()
    assert np.all(grid[1:] == 0)
    expected0 = np.zeros((2, 3), np.float32)
    expected0[0, 0] = 1.0
    expected0[1, 1] = -2.0
    expected0[0, 2] = 1.0
    np.testing.assert_array_equal(grid[0], expected0)
    # Normalised too: finite.
    assert np.isfinite(voxel_grid(x, y, t, p, 4, 2, 3, normalize=True)).all()


def test_voxel_single_event():
    grid = voxel_grid(np.array([1]), np.array([0]), np.array([123]), np.array([0]), 3, 1, 2)
    expected = np.zeros((3, 1, 2), np.float32)
    expected[0, 0, 1] = -1.0
    np.testing.assert_array_equal(grid, expected)


def test_voxel_normalisation_over_nonzero_cells_hand_computed():
    # H=1, W=3, 2 bins, t = 0, 1, 4 -> tn = 0, 0.25, 1.
    #   (x=0, +1, tn=0)    -> bin0[0] = 1
    #   (x=1, -1, tn=0.25) -> bin0[1] = -0.75, bin1[1] = -0.25
    #   (x=2, +1, tn=1)    -> bin1[2] = 1
    # non-zero values 1, -0.75, -0.25, 1: mean 0.25, population variance 2.375/4 = 0.59375.
    x, y, t, p = ev([0, 1, 2], [0, 0, 0], [0, 1, 4], [1, 0, 1])
    raw = voxel_grid(x, y, t, p, 2, 1, 3)
    np.testing.assert_allclose(raw, [[[1.0, -0.75, 0.0]], [[0.0, -0.25, 1.0]]], atol=1e-6)
    norm = voxel_grid(x, y, t, p, 2, 1, 3, normalize=True)
    mean, std = 0.25, np.sqrt(0.59375)
    expected = np.array([[[(1 - mean) / std, (-0.75 - mean) / std, 0.0]],
                         [[0.0, (-0.25 - mean) / std, (1 - mean) / std]]], np.float32)
    np.testing.assert_allclose(norm, expected, rtol=1e-5, atol=1e-6)
    assert norm.dtype == np.float32
    # Zero cells stay exactly zero.
    assert norm[0, 0, 2] == 0.0 and norm[1, 0, 0] == 0.0
    nz = norm[norm != 0]
    assert nz.mean() == pytest.approx(0.0, abs=1e-6)
    assert nz.std() == pytest.approx(1.0, abs=1e-5)


def test_normalize_nonzero_with_zero_std_only_subtracts_mean():
    grid = np.zeros((2, 2, 2), np.float32)
    grid[0, 0, 0] = grid[1, 1, 1] = 2.0
    out = normalize_nonzero(grid)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, np.zeros_like(grid))
    # The input is not modified in place.
    assert grid[0, 0, 0] == 2.0


def test_normalize_nonzero_hand_computed_and_input_untouched():
    grid = np.array([[[0.0, 1.0], [3.0, 0.0]]], np.float32)  # non-zero: 1, 3 -> mean 2, std 1
    out = normalize_nonzero(grid)
    np.testing.assert_allclose(out, [[[0.0, -1.0], [1.0, 0.0]]], atol=1e-6)
    np.testing.assert_array_equal(grid, [[[0.0, 1.0], [3.0, 0.0]]])


def test_normalize_nonzero_all_zero_grid():
    out = normalize_nonzero(np.zeros((3, 2, 2), np.float32))
    assert np.isfinite(out).all() and not out.any()


def test_voxel_normalize_with_single_value_is_finite():
    # Two positive events at one timestamp -> both cells 1.0, std 0 -> centred only -> zeros.
    x, y, t, p = ev([0, 1], [0, 0], [5, 5], [1, 1])
    out = voxel_grid(x, y, t, p, 2, 1, 2, normalize=True)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, np.zeros((2, 1, 2), np.float32))


@pytest.mark.parametrize("normalize", [False, True])
def test_empty_events(normalize):
    e_i = np.zeros(0, np.uint16)
    e_t = np.zeros(0, np.int64)
    e_p = np.zeros(0, bool)
    grid = voxel_grid(e_i, e_i, e_t, e_p, 5, 4, 6, normalize=normalize)
    assert grid.shape == (5, 4, 6) and grid.dtype == np.float32 and not grid.any()
    hist = histogram(e_i, e_i, e_p, 4, 6)
    assert hist.shape == (2, 4, 6) and hist.dtype == np.float32 and not hist.any()
    for rep, c in (("voxel_grid", 5), ("histogram", 2)):
        out = events_to_tensor({"x": e_i, "y": e_i, "t": e_t, "p": e_p}, rep, 5, 4, 6,
                               normalize=normalize)
        assert out.shape == (c, 4, 6) and not out.any()


def test_empty_plain_python_lists():
    grid = voxel_grid([], [], [], [], 2, 3, 3)
    assert grid.shape == (2, 3, 3) and not grid.any()
    assert histogram([], [], [], 3, 3).shape == (2, 3, 3)


@pytest.mark.parametrize("x,y", [([0, 4], [0, 0]), ([0, 0], [0, 3]), ([-1, 0], [0, 0]),
                                 ([0, 0], [-1, 0]), ([100, 0], [0, 0])])
def test_out_of_range_coordinates_raise(x, y):
    x, y = np.array(x, np.int64), np.array(y, np.int64)
    t = np.array([0, 1])
    p = np.array([1, 0])
    with pytest.raises(ValueError, match="out of range"):
        voxel_grid(x, y, t, p, 2, height=3, width=4)
    with pytest.raises(ValueError, match="out of range"):
        histogram(x, y, p, height=3, width=4)


def test_num_bins_must_be_positive():
    with pytest.raises(ValueError):
        voxel_grid([0], [0], [0], [1], 0, 1, 1)


def test_num_bins_one_sums_polarities():
    x, y, t, p = ev([0, 0, 1], [0, 0, 0], [0, 5, 10], [1, 1, 0])
    grid = voxel_grid(x, y, t, p, 1, 1, 2)
    np.testing.assert_array_equal(grid, [[[2.0, -1.0]]])


# --------------------------------------------------------------------------------------------
# Histogram
# --------------------------------------------------------------------------------------------

def test_histogram_counts_negative_then_positive():
    x = np.array([0, 0, 0, 1, 2, 2])
    y = np.array([0, 0, 0, 1, 0, 0])
    p = np.array([1, 1, 0, 0, 1, 0], np.uint8)
    hist = histogram(x, y, p, height=2, width=3)
    assert hist.shape == (2, 2, 3) and hist.dtype == np.float32
    expected = np.zeros((2, 2, 3), np.float32)
    expected[0, 0, 0] = 1  # negative
    expected[1, 0, 0] = 2  # positive
    expected[0, 1, 1] = 1
    expected[0, 0, 2] = 1
    expected[1, 0, 2] = 1
    np.testing.assert_array_equal(hist, expected)


def test_events_to_tensor_histogram_normalize_is_log1p():
    x, y, t, p = ev([0, 0, 0], [0, 0, 0], [0, 1, 2], [1, 1, 1])
    d = {"x": x, "y": y, "t": t, "p": p}
    out = events_to_tensor(d, "histogram", 5, 1, 1, normalize=True)
    np.testing.assert_allclose(out, [[[0.0]], [[np.log(4.0)]]], rtol=1e-6)
    assert events_to_tensor(d, "voxel_grid", 4, 1, 1).shape == (4, 1, 1)


def test_unknown_representation():
    with pytest.raises(ValueError, match="nope"):
        representation_channels("nope", 5)
    with pytest.raises(ValueError, match="nope"):
        events_to_tensor({"x": [0], "y": [0], "t": [0], "p": [1]}, "nope", 5, 1, 1)
    assert representation_channels("voxel_grid", 7) == 7
    assert representation_channels("histogram", 7) == 2


# --------------------------------------------------------------------------------------------
# Dtypes, shapes, torch input
# --------------------------------------------------------------------------------------------

def test_dtypes_and_shapes_with_native_eventscape_dtypes():
    rng = np.random.default_rng(0)
    n = 50
    x = rng.integers(0, 9, n).astype(np.uint16)
    y = rng.integers(0, 4, n).astype(np.uint16)
    t = np.sort(rng.integers(0, 10**9, n)).astype(np.int64)
    p = rng.random(n) < 0.5
    for normalize in (False, True):
        g = voxel_grid(x, y, t, p, 6, 4, 9, normalize=normalize)
        assert g.shape == (6, 4, 9) and g.dtype == np.float32
    h = histogram(x, y, p, 4, 9)
    assert h.shape == (2, 4, 9) and h.dtype == np.float32
    assert h.sum() == n


def test_torch_tensors_accepted():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    n = 200
    x = rng.integers(0, 8, n)
    y = rng.integers(0, 6, n)
    t = np.sort(rng.integers(0, 10**6, n))
    p = rng.random(n) < 0.5
    expected_v = voxel_grid(x, y, t, p, 4, 6, 8, normalize=True)
    expected_h = histogram(x, y, p, 6, 8)
    tx, ty, tt, tp = (torch.from_numpy(a) for a in (x, y, t, p))
    got_v = voxel_grid(tx, ty, tt, tp, 4, 6, 8, normalize=True)
    got_h = histogram(tx, ty, tp, 6, 8)
    assert isinstance(got_v, np.ndarray) and got_v.dtype == np.float32
    np.testing.assert_allclose(got_v, expected_v, atol=1e-6)
    np.testing.assert_array_equal(got_h, expected_h)
    # -1/+1 int tensor polarity too.
    got_pm = voxel_grid(tx, ty, tt, torch.from_numpy(np.where(p, 1, -1)), 4, 6, 8, normalize=True)
    np.testing.assert_allclose(got_pm, expected_v, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Against a naive reference
# --------------------------------------------------------------------------------------------

def naive_voxel_grid(x, y, t, p, num_bins, height, width, normalize=False):
    grid = np.zeros((num_bins, height, width), np.float64)
    if len(t) == 0:
        return grid
    t0, t1 = min(t), max(t)
    for xi, yi, ti, pi in zip(x, y, t, p):
        pol = 1.0 if pi > 0 else -1.0
        tn = (num_bins - 1) * (ti - t0) / (t1 - t0) if t1 > t0 else 0.0
        for b in range(num_bins):
            w = 1.0 - abs(tn - b)
            if w > 0:
                grid[b, yi, xi] += pol * w
    if normalize:
        vals = [v for v in grid.ravel() if v != 0]
        if vals:
            mean = sum(vals) / len(vals)
            std = (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5
            for idx in zip(*np.nonzero(grid)):
                grid[idx] = (grid[idx] - mean) / std if std > 0 else grid[idx] - mean
    return grid


def naive_histogram(x, y, p, height, width):
    hist = np.zeros((2, height, width))
    for xi, yi, pi in zip(x, y, p):
        hist[1 if pi > 0 else 0, yi, xi] += 1
    return hist


@pytest.mark.parametrize("num_bins", [1, 3, 5])
def test_vectorised_matches_naive_loop(num_bins):
    rng = np.random.default_rng(num_bins)
    n, H, W = 2000, 11, 17
    x = rng.integers(0, W, n).astype(np.uint16)
    y = rng.integers(0, H, n).astype(np.uint16)
    # Duplicated timestamps and unsorted order on purpose.
    t = rng.integers(5_000, 50_000, n).astype(np.int64)
    p = rng.integers(0, 2, n).astype(np.uint8)
    xs, ys, ts, ps = x.tolist(), y.tolist(), t.tolist(), p.tolist()
    for normalize in (False, True):
        got = voxel_grid(x, y, t, p, num_bins, H, W, normalize=normalize)
        want = naive_voxel_grid(xs, ys, ts, ps, num_bins, H, W, normalize=normalize)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(histogram(x, y, p, H, W), naive_histogram(xs, ys, ps, H, W))
