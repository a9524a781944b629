"""Joint augmentation keeps RGB, mask and events aligned: an event at a marked pixel lands on
the same mask pixel after flips, pad/crop and the affine; dense event tensors move with them."""

from __future__ import annotations

import numpy as np

from event_seg.data.transforms import JointTransform


def _marked_sample(h=40, w=70, y=7, x=11, block=0):
    """A frame, a mask and one event per marked pixel (a single pixel or a square block)."""
    rgb = np.zeros((h, w, 3), np.uint8)
    mask = np.zeros((h, w), np.uint8)
    ys, xs = np.mgrid[y - block:y + block + 1, x - block:x + block + 1]
    rgb[ys, xs] = 255
    mask[ys, xs] = 3
    events = {"x": xs.ravel().astype(np.int16), "y": ys.ravel().astype(np.int16),
              "t": np.arange(xs.size, dtype=np.int32), "p": np.ones(xs.size, np.int8)}
    return rgb, mask, events


def test_flip_pad_and_random_crop_move_events_with_the_mask():
    moved = 0
    for seed in range(20):
        t = JointTransform(train=True, hflip=0.5, seed=seed, size=(32, 64))
        rgb, mask, events = _marked_sample(y=20, x=35)
        t.reseed(seed)
        out_rgb, out_mask, out_events, _ = t(rgb, mask, events)
        assert out_rgb.shape == (32, 64, 3) and out_mask.shape == (32, 64)
        (y, x), = np.argwhere(out_mask == 3)
        assert out_events["x"].tolist() == [x] and out_events["y"].tolist() == [y], seed
        assert out_rgb[y, x, 0] == 255
        moved += (y, x) != (20, 35)
    assert moved >= 10  # the crops and flips really moved the marker


def test_events_cropped_away_are_dropped():
    t = JointTransform(train=False, size=(20, 30))  # centre crop of a 40x70 frame
    rgb, mask, events = _marked_sample(y=2, x=3)     # far outside the centre
    _, _, out, _ = t(rgb, mask, events)
    assert len(out["x"]) == len(out["t"]) == len(out["p"]) == 0


def test_evaluation_transform_is_deterministic_and_centred():
    a = JointTransform(train=False, size=(64, 96))(*_marked_sample())
    b = JointTransform(train=False, size=(64, 96))(*_marked_sample())
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[2]["x"], b[2]["x"])
    assert (a[2]["y"][0], a[2]["x"][0]) == (7 + 12, 11 + 13)  # centred: (64-40)/2, (96-70)/2
    assert a[1][0, 0] == 255  # padding is ignore


def test_affine_moves_each_event_onto_its_marked_mask_pixel():
    for seed in range(10):
        t = JointTransform(train=True, hflip=0.5, seed=seed, size=(40, 70), affine_p=1.0,
                           scale=(0.8, 1.25), rotate_deg=5, translate=0.05)
        t.reseed(seed)
        rgb, mask, events = _marked_sample(y=18, x=33, block=3)
        _, out_mask, out_events, _ = t(rgb, mask, events)
        assert len(out_events["x"]) > 0
        # The centre of the block lands inside the warped block, and nearly every event does
        # (nearest-neighbour rounding may put a border event one pixel off the block's edge).
        landed = out_mask[out_events["y"], out_events["x"]]
        assert (landed == 3).mean() >= 0.8, seed
        centre = len(events["x"]) // 2
        assert landed[centre] == 3, seed


def test_dense_event_tensors_move_like_the_image():
    for seed in range(10):
        t = JointTransform(train=True, hflip=0.5, seed=seed, size=(32, 64))
        t.reseed(seed)
        rgb, mask, _ = _marked_sample(y=20, x=35)
        dense = np.zeros((6, 40, 70), np.float16)
        dense[:, 20, 35] = 1
        _, out_mask, _, out_dense = t(rgb, mask, None, dense)
        assert out_dense.shape == (6, 32, 64) and out_dense.dtype == np.float16
        assert np.array_equal(np.argwhere(out_dense[0] == 1), np.argwhere(out_mask == 3))


def test_photometric_jitter_touches_rgb_only():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 70, 3), dtype=np.uint8)
    mask = np.zeros((40, 70), np.uint8)
    _, _, events = _marked_sample()
    plain = JointTransform(train=True, hflip=0.0)(rgb, mask, events)
    changed = 0
    for seed in range(5):
        out = JointTransform(train=True, hflip=0.0, seed=seed, photometric_p=1.0)(rgb, mask, events)
        assert np.array_equal(out[1], mask) and all(
            np.array_equal(out[2][k], events[k]) for k in "xytp")
        changed += not np.array_equal(out[0], plain[0])
    assert changed >= 4


def test_composed_moves_equal_step_by_step_moves():
    """The one-pass composition of flips, pads and crops against moving the events one
    transform at a time, on recorded parameters that chain every kind (crop, flip, pad, crop)."""
    from event_seg.data.transforms import move_events

    rng = np.random.default_rng(0)
    n = 500
    events = {"x": rng.integers(0, 70, n).astype(np.int16),
              "y": rng.integers(0, 40, n).astype(np.int16),
              "t": np.arange(n, dtype=np.int32), "p": np.ones(n, np.int8)}
    applied = [("RandomCrop", {"shape": (40, 70), "crop_coords": (5, 3, 55, 33)}),
               ("HorizontalFlip", {"shape": (30, 50)}),
               ("PadIfNeeded", {"shape": (30, 50), "pad_top": 2, "pad_bottom": 4,
                                "pad_left": 1, "pad_right": 3}),
               ("CenterCrop", {"shape": (36, 54), "crop_coords": (4, 0, 54, 36)})]
    x, y = events["x"].astype(int), events["y"].astype(int)
    keep = np.ones(n, bool)
    x, y = x - 5, y - 3
    keep &= (x >= 0) & (x < 50) & (y >= 0) & (y < 30)
    x = 49 - x
    x, y = x + 1, y + 2
    x = x - 4
    keep &= (x >= 0) & (x < 50) & (y >= 0) & (y < 36)
    out = move_events(events, applied)
    assert out["x"].tolist() == x[keep].tolist() and out["y"].tolist() == y[keep].tolist()
    assert out["t"].tolist() == events["t"][keep].tolist()


def test_moves_on_a_wide_frame_keep_every_coordinate():
    """A frame near the 16-bit limit takes the int32 path: a crop far to the right still lands
    each event on its own pixel (no wrap-around), and a flip mirrors it exactly."""
    from event_seg.data.transforms import move_events

    x = np.array([0, 19999, 20000, 25000, 29999], np.int16)
    events = {"x": x, "y": np.zeros(5, np.int16), "t": np.arange(5, dtype=np.int32),
              "p": np.ones(5, np.int8)}
    applied = [("HorizontalFlip", {"shape": (4, 30000)}),
               ("RandomCrop", {"shape": (4, 30000), "crop_coords": (0, 0, 10000, 4)})]
    out = move_events(events, applied)
    flipped = 29999 - x.astype(int)
    keep = flipped < 10000
    assert out["x"].tolist() == flipped[keep].tolist() == [9999, 4999, 0]
    assert out["t"].tolist() == [2, 3, 4]


def test_albumentations_is_not_asked_to_look_for_updates_unless_the_user_wants_it():
    """Without internet (cluster nodes) albumentations' version check warns at every import."""
    import os
    import subprocess
    import sys

    # Every HTTP request is recorded and refused, as on a node without internet.
    probe = ("import os, urllib.request as u\n"
             "calls = []\n"
             "def refuse(self, *a, **k):\n"
             "    calls.append(a)\n"
             "    raise OSError('offline')\n"
             "u.OpenerDirector.open = refuse\n"
             "import event_seg.train, albumentations\n"
             "print(os.environ['NO_ALBUMENTATIONS_UPDATE'], len(calls))\n")
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    ours = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert ours.stdout.split() == ["1", "0"], ours.stderr
    assert "Error fetching version info" not in ours.stderr
    theirs = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env={**env, "NO_ALBUMENTATIONS_UPDATE": "0"})
    assert theirs.stdout.split() == ["0", "1"], theirs.stderr  # the user's own setting wins
