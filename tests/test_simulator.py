"""Properties of the ESIM-style EventSimulator (event_seg/data/simulator.py)."""

from __future__ import annotations

import numpy as np

from event_seg.data.simulator import EventSimulator, Events, log_intensity

H, W = 12, 16
T0, T1 = 1_000_000, 2_000_000  # ns


def flat(value, shape=(H, W)):
    return np.full(shape, value, np.uint8)


def textured(seed=0, shape=(H, W, 3)):
    return np.random.default_rng(seed).integers(20, 236, shape).astype(np.uint8)


def check_event_arrays(ev: Events):
    assert ev.x.dtype == np.uint16 and ev.y.dtype == np.uint16
    assert ev.t.dtype == np.int64 and ev.p.dtype == np.bool_
    assert ev.x.shape == ev.y.shape == ev.t.shape == ev.p.shape == (len(ev),)


def test_static_scene_gives_no_events():
    frame = textured(1)
    sim = EventSimulator(frame, noise_rate=0.0, seed=0)
    for i in range(5):
        ev = sim.step(frame, T0 + i * 1000, T0 + (i + 1) * 1000)
        check_event_arrays(ev)
        assert len(ev) == 0


def test_brightening_gives_only_positive_events():
    sim = EventSimulator(flat(60), noise_rate=0.0, seed=0)
    ev = sim.step(flat(180), T0, T1)
    check_event_arrays(ev)
    assert len(ev) >= H * W  # every pixel changes by several thresholds
    assert ev.p.all()
    # Every pixel fired.
    assert len(set(zip(ev.x.tolist(), ev.y.tolist()))) == H * W


def test_darkening_gives_only_negative_events():
    sim = EventSimulator(flat(180), noise_rate=0.0, seed=0)
    ev = sim.step(flat(60), T0, T1)
    assert len(ev) >= H * W
    assert not ev.p.any()


def test_mixed_change_polarity_follows_each_pixel():
    f0 = flat(100)
    f1 = f0.copy()
    f1[:, : W // 2] = 200   # left half brighter
    f1[:, W // 2:] = 40     # right half darker
    sim = EventSimulator(f0, seed=0)
    ev = sim.step(f1, T0, T1)
    left = ev.x < W // 2
    assert left.any() and (~left).any()
    assert ev.p[left].all()
    assert not ev.p[~left].any()


def test_larger_contrast_change_gives_more_events():
    counts = []
    for target in (110, 140, 200, 255):
        sim = EventSimulator(flat(100), seed=0)
        counts.append(len(sim.step(flat(target), T0, T1)))
    assert counts == sorted(counts) and counts[0] < counts[-1]
    assert len(set(counts)) == len(counts), counts  # strictly increasing
    # A change below every threshold (min 0.05 in log space) fires nothing.
    sim = EventSimulator(flat(100), seed=0)
    assert len(sim.step(flat(101), T0, T1)) == 0


def test_timestamps_within_window_and_sorted():
    rng = np.random.default_rng(5)
    frames = [textured(0)]
    for _ in range(4):
        delta = rng.integers(-60, 61, (H, W, 1))
        frames.append(np.clip(frames[-1].astype(int) + delta, 0, 255).astype(np.uint8))
    sim = EventSimulator(frames[0], noise_rate=20.0, seed=3)
    total = 0
    for i, f in enumerate(frames[1:]):
        a, b = T0 + i * 250_000, T0 + (i + 1) * 250_000
        ev = sim.step(f, a, b)
        check_event_arrays(ev)
        total += len(ev)
        assert ev.t.min() >= a and ev.t.max() <= b
        assert np.all(np.diff(ev.t) >= 0)
        assert ev.x.max() < W and ev.y.max() < H
    assert total > 100


def test_large_change_at_one_pixel_gives_several_interpolated_events():
    f0 = flat(30)
    f1 = f0.copy()
    f1[4, 7] = 230
    sim = EventSimulator(f0, contrast_threshold=0.25, threshold_sigma=0.03, seed=2)
    c = float(sim.threshold[4, 7])
    l0 = float(log_intensity(f0)[4, 7])
    l1 = float(log_intensity(f1)[4, 7])
    n_expected = int(np.floor((l1 - l0) / c))
    assert n_expected >= 5
    ev = sim.step(f1, T0, T1)
    assert len(ev) == n_expected
    assert set(ev.x.tolist()) == {7} and set(ev.y.tolist()) == {4}
    assert ev.p.all()
    assert np.all(np.diff(ev.t) > 0)  # strictly increasing
    k = np.arange(1, n_expected + 1)
    expected_t = T0 + (k * c) / (l1 - l0) * (T1 - T0)
    np.testing.assert_allclose(ev.t, expected_t, atol=2)


def test_one_pixel_exact_timestamps_with_fixed_threshold():
    # 1x1 sensor, C = 0.25 exactly: levels L0 + 0.25 k, linearly interpolated in time.
    f0, f1 = flat(50, (1, 1)), flat(200, (1, 1))
    sim = EventSimulator(f0, contrast_threshold=0.25, threshold_sigma=0.0, seed=0)
    ev = sim.step(f1, 0, 10_000)
    l0, l1 = float(log_intensity(f0)[0, 0]), float(log_intensity(f1)[0, 0])
    n = int(np.floor((l1 - l0) / 0.25))
    assert len(ev) == n == 5
    expected = (0.25 * np.arange(1, n + 1)) / (l1 - l0) * 10_000
    np.testing.assert_allclose(ev.t, expected, atol=1)


def test_fixed_threshold_on_a_multi_pixel_sensor():
    # threshold_sigma=0 (no per-pixel spread) must work on any sensor size, not just 1x1.
    sim = EventSimulator(flat(50, (3, 4)), contrast_threshold=0.25, threshold_sigma=0.0, seed=0)
    ev = sim.step(flat(200, (3, 4)), 0, 10_000)
    assert len(ev) == 5 * 12
    assert ev.p.all()


def test_sub_threshold_steps_accumulate_against_the_reference():
    # Brightening in many small steps (each below the threshold) gives as many events in total
    # as one big step: the reference level is kept between steps, not reset to each frame.
    levels = np.linspace(40, 220, 31).round().astype(np.uint8)
    sim_small = EventSimulator(flat(levels[0]), seed=4)
    sim_big = EventSimulator(flat(levels[0]), seed=4)
    small_steps = []
    for i, v in enumerate(levels[1:]):
        a = T0 + i * 1000
        small_steps.append(sim_small.step(flat(v), a, a + 1000))
    per_step = [len(e) for e in small_steps]
    assert per_step[0] == 0  # the first small step stays below threshold everywhere
    total_small = sum(per_step)
    total_big = len(sim_big.step(flat(levels[-1]), T0, T0 + 30_000))
    assert total_small == total_big > 0
    np.testing.assert_allclose(sim_small.ref, sim_big.ref)


def test_down_then_up_returns_to_reference():
    sim = EventSimulator(flat(120), seed=0)
    down = sim.step(flat(30), T0, T1)
    up = sim.step(flat(120), T1, T1 + 1_000_000)
    assert len(down) > 0 and len(up) > 0
    assert not down.p.any() and up.p.all()
    # Crossing back over the same levels gives roughly the same number of events.
    assert abs(len(down) - len(up)) <= H * W


def test_noise_rate_on_static_scene():
    rate, dt_ns = 50.0, 100_000_000  # 50 Hz per pixel, 0.1 s
    h, w = 32, 32
    frame = flat(128, (h, w))
    sim = EventSimulator(frame, noise_rate=rate, seed=7)
    ev = sim.step(frame, T0, T0 + dt_ns)
    expected = rate * h * w * dt_ns * 1e-9  # 5120
    assert 0.8 * expected < len(ev) < 1.2 * expected
    assert ev.t.min() >= T0 and ev.t.max() <= T0 + dt_ns
    assert np.all(np.diff(ev.t) >= 0)
    assert 0.35 < ev.p.mean() < 0.65  # both polarities
    assert ev.x.max() < w and ev.y.max() < h
    # Spread over the sensor, not piled on one pixel.
    assert len(set(zip(ev.x.tolist(), ev.y.tolist()))) > 0.9 * h * w
    # Without noise, the same scene is silent.
    assert len(EventSimulator(frame, noise_rate=0.0, seed=7).step(frame, T0, T0 + dt_ns)) == 0


def _run(seed, noise_rate=30.0):
    frames = [textured(i) for i in range(3)]
    sim = EventSimulator(frames[0], noise_rate=noise_rate, seed=seed)
    return [sim.step(f, T0 + i * 10**7, T0 + (i + 1) * 10**7) for i, f in enumerate(frames[1:])]


def test_reproducible_for_same_seed():
    a, b = _run(11), _run(11)
    for ea, eb in zip(a, b):
        assert len(ea) > 0
        for k in "xytp":
            np.testing.assert_array_equal(getattr(ea, k), getattr(eb, k))
    c = _run(12)
    assert any(len(ea) != len(ec) or not np.array_equal(ea.t, ec.t) for ea, ec in zip(a, c))


def test_rgb_and_gray_frames_agree():
    gray = textured(3, (H, W))
    rgb = np.repeat(gray[..., None], 3, axis=2)
    np.testing.assert_allclose(log_intensity(rgb), log_intensity(gray), atol=1e-3)


def test_concatenate_sorts_by_time_and_handles_empty():
    empty = Events.concatenate([])
    assert len(empty) == 0
    check_event_arrays(empty)
    a = Events(np.array([1], np.uint16), np.array([0], np.uint16), np.array([50]), np.array([True]))
    b = Events(np.array([2], np.uint16), np.array([1], np.uint16), np.array([10]), np.array([False]))
    ev = Events.concatenate([a, b])
    np.testing.assert_array_equal(ev.t, [10, 50])
    np.testing.assert_array_equal(ev.x, [2, 1])
    np.testing.assert_array_equal(ev.p, [False, True])
