"""Joint augmentation keeps RGB, events and mask aligned."""

from __future__ import annotations

import numpy as np

from event_seg.data.transforms import RGB_MEAN, RGB_STD, JointTransform


def _marked(h=40, w=70, channels=6, y=7, x=11):
    rgb = np.zeros((h, w, 3), np.uint8)
    events = np.zeros((h, w, channels), np.float32)
    mask = np.zeros((h, w), np.int64)
    rgb[y, x] = 255
    events[y, x] = 1.0
    mask[y, x] = 3
    return rgb, events, mask


def _marker(rgb, events, mask):
    rgb_pos = np.argwhere(rgb[..., 0] > (255 - RGB_MEAN[0]) / RGB_STD[0] - 0.5)
    return [tuple(p) for p in (rgb_pos[0], np.argwhere(events[..., 0] == 1)[0],
                               np.argwhere(mask == 3)[0])]


def test_flip_pad_and_random_crop_move_every_target_together():
    for seed in range(20):
        t = JointTransform(train=True, hflip=0.5, seed=seed, size=(32, 64))
        rgb, events, mask = _marked(y=20, x=35)
        out = t(rgb, events, mask)
        assert out[1].shape == (32, 64, 6) and out[2].shape == (32, 64)
        positions = _marker(*out)
        assert positions[0] == positions[1] == positions[2], (seed, positions)


def test_evaluation_transform_is_deterministic():
    a = JointTransform(train=False, size=(64, 96))(*_marked())
    b = JointTransform(train=False, size=(64, 96))(*_marked())
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert _marker(*a)[0] == (7 + 12, 11 + 13)  # centred padding: (64-40)/2, (96-70)/2


def _centroid(weights):
    ys, xs = np.nonzero(weights > 0.5 * weights.max())
    return ys.mean(), xs.mean()


def test_affine_warps_keep_a_block_marker_aligned_across_targets():
    for seed in range(10):
        t = JointTransform(train=True, hflip=0.5, seed=seed, size=(40, 70), affine_p=1.0,
                           scale=(0.8, 1.25), rotate_deg=5, translate=0.05)
        rgb = np.zeros((40, 70, 3), np.uint8)
        events = np.zeros((40, 70, 5), np.float32)
        mask = np.zeros((40, 70), np.int64)
        rgb[15:22, 30:37] = 255
        events[15:22, 30:37] = 1.0
        mask[15:22, 30:37] = 3
        out_rgb, out_events, out_mask = t(rgb, events, mask)
        c_rgb = _centroid(out_rgb[..., 0] - out_rgb[..., 0].min())
        c_ev = _centroid(out_events[..., 0])
        c_mask = _centroid((out_mask == 3).astype(float))
        assert np.allclose(c_rgb, c_ev, atol=0.6) and np.allclose(c_ev, c_mask, atol=0.6), seed


def test_photometric_jitter_touches_rgb_only():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 70, 3), dtype=np.uint8)
    events = rng.normal(size=(40, 70, 5)).astype(np.float32)
    mask = np.zeros((40, 70), np.int64)
    plain = JointTransform(train=True, hflip=0.0)(rgb, events, mask)
    changed = 0
    for seed in range(5):
        out = JointTransform(train=True, hflip=0.0, seed=seed, photometric_p=1.0)(rgb, events, mask)
        assert np.array_equal(out[1], events) and np.array_equal(out[2], mask)
        changed += not np.allclose(out[0], plain[0])
    assert changed >= 4
