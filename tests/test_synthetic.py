"""The synthetic set: deterministic per seed, keyed by its settings, hard frames where promised."""

from __future__ import annotations

import json

import numpy as np

from event_seg.data.event_scapes import read_events, read_label, read_rgb
from event_seg.data.synthetic import COMPLETE_MARKER, ensure_synthetic, settings_hash

SPLITS = {"train": "Town01-03_train", "val": "Town05_val", "test": "Town05_test"}
PARAMS = dict(height=32, width=64, seed=0, train_sequences=1, val_sequences=1, test_sequences=1,
              frames_per_sequence=3, subframes=3, frame_rate=10.0, contrast_threshold=0.25,
              threshold_sigma=0.03, noise_rate=0.05, hard_fraction=0.4)


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()
                  and p.name != COMPLETE_MARKER)


def test_same_settings_give_identical_data_in_another_folder(tmp_path):
    a = ensure_synthetic(tmp_path / "a", PARAMS, SPLITS, progress=False)
    b = ensure_synthetic(tmp_path / "b", PARAMS, SPLITS, progress=False)
    assert _files(a) == _files(b) and _files(a)
    for rel in _files(a):
        if rel.suffix == ".png":
            loader = read_label if "semantic" in rel.parts else read_rgb
            assert np.array_equal(loader(a / rel), loader(b / rel)), rel
        elif rel.suffix == ".npz":
            ea, eb = read_events(a / rel), read_events(b / rel)
            assert all(np.array_equal(ea[k], eb[k]) for k in "xytp"), rel
        else:
            assert (a / rel).read_text() == (b / rel).read_text(), rel


def test_the_cache_folder_is_keyed_by_the_settings(tmp_path):
    other = {**PARAMS, "seed": 1}
    assert settings_hash(PARAMS) != settings_hash(other)
    a = ensure_synthetic(tmp_path, PARAMS, SPLITS, progress=False)
    b = ensure_synthetic(tmp_path, other, SPLITS, progress=False)
    assert a != b
    label = "Town05_val/Town05/sequence_0/semantic/data/05_000_0001_gt_labelIds.png"
    rgb = label.replace("semantic", "rgb").replace("gt_labelIds", "image")
    assert not (np.array_equal(read_label(a / label), read_label(b / label))
                and np.array_equal(read_rgb(a / rgb), read_rgb(b / rgb)))


def test_test_split_is_all_dark_or_over_exposed_and_events_still_see_the_scene(tmp_path):
    root = ensure_synthetic(tmp_path, PARAMS, SPLITS, progress=False)
    info = json.loads((root / COMPLETE_MARKER).read_text())
    assert set(info["exposure"]["test/sequence_0"]) <= {"dark", "bright"}
    seq = root / "Town05_test" / "Town05" / "sequence_0"
    dark = read_rgb(seq / "rgb" / "data" / "05_000_0000_image.png")
    assert dark.mean() < 20  # frame 0 of the test split is the dark one
    events = read_events(seq / "events" / "data" / "05_000_0002_events.npz")
    assert len(events["t"]) > 50  # moving edges still fire events
