"""The synthetic generator's EventScape layout and the EventScape reader (event_scapes.py)."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from event_seg.data.event_scapes import (  # noqa: E402
    DatasetError,
    EventScapesDataset,
    index_split,
    read_events,
    read_label,
)
from event_seg.data.events import voxel_grid  # noqa: E402
from event_seg.data.sample import sample_event_tensor  # noqa: E402
from event_seg.data.synthetic import COMPLETE_MARKER, ensure_synthetic  # noqa: E402

SPLITS = {"train": "Town01-03_train", "val": "Town05_val", "test": "Town05_test"}
H, W = 32, 64
FRAMES = 3
SEQS = {"train": 2, "val": 1, "test": 1}
PARAMS = {
    "height": H,
    "width": W,
    "seed": 0,
    "train_sequences": SEQS["train"],
    "val_sequences": SEQS["val"],
    "test_sequences": SEQS["test"],
    "frames_per_sequence": FRAMES,
    "subframes": 3,
    "frame_rate": 10.0,
    "contrast_threshold": 0.25,
    "threshold_sigma": 0.03,
    "noise_rate": 0.05,
    "hard_fraction": 0.4,
}
# conf/dataset/synthetic.yaml: 13 CARLA tags merged into 9 classes.
LABEL_MAP = [0, 1, 1, 0, 2, 3, 4, 5, 6, 7, 8, 1, 3]
NUM_CLASSES = 9
STEM_RE = re.compile(r"^(\d{2})_(\d{3})_(\d{4})$")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    root = ensure_synthetic(cache_dir=str(cache), params=dict(PARAMS), splits=dict(SPLITS),
                            progress=False)
    return root


def sequences(root: Path, split: str):
    return sorted(p for p in (root / SPLITS[split]).glob("Town*/sequence_*") if p.is_dir())


def read_two_columns(path: Path):
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    assert all(len(r) == 2 for r in rows), f"{path}: not two columns"
    idx = [int(r[0]) for r in rows]
    ts = [float(r[1]) for r in rows]
    return idx, ts


# --------------------------------------------------------------------------------------------
# On-disk layout
# --------------------------------------------------------------------------------------------

def test_generated_layout(synth):
    assert (synth / COMPLETE_MARKER).is_file()
    for split, n_seq in SEQS.items():
        seqs = sequences(synth, split)
        assert len(seqs) == n_seq, (split, seqs)
        for seq in seqs:
            assert re.fullmatch(r"Town\d{2}", seq.parent.name)
            assert re.fullmatch(r"sequence_\d+", seq.name)  # not zero-padded
            rgb = sorted((seq / "rgb" / "data").glob("*_image.png"))
            sem = sorted((seq / "semantic" / "data").glob("*_gt_labelIds.png"))
            evs = sorted((seq / "events" / "data").glob("*_events.npz"))
            assert len(rgb) == len(sem) == FRAMES
            assert len(evs) == FRAMES - 1
            stems = [p.name[: -len("_image.png")] for p in rgb]
            assert all(STEM_RE.match(s) for s in stems), stems
            assert stems == [p.name[: -len("_gt_labelIds.png")] for p in sem]
            town = int(seq.parent.name[4:])
            k = int(seq.name.split("_")[1])
            assert all(s.startswith(f"{town:02d}_{k:03d}_") for s in stems)
            # The first frame has no events file; the others do.
            assert [p.name[: -len("_events.npz")] for p in evs] == stems[1:]


def test_split_towns(synth):
    towns = {split: {s.parent.name for s in sequences(synth, split)} for split in SEQS}
    assert towns["train"] <= {"Town01", "Town02", "Town03"}
    assert towns["val"] == {"Town05"} and towns["test"] == {"Town05"}


def test_timestamps_files(synth):
    for split in SEQS:
        for seq in sequences(synth, split):
            for modality, n in (("rgb", FRAMES), ("semantic", FRAMES), ("events", FRAMES - 1)):
                idx, ts = read_two_columns(seq / modality / "data" / "timestamps.txt")
                assert len(ts) == n
                assert all(b > a for a, b in zip(ts, ts[1:])), ts
                assert all(b > a for a, b in zip(idx, idx[1:])), idx
            bounds = [line.split() for line in
                      (seq / "events" / "data" / "boundary_timestamps.txt").read_text().splitlines()]
            assert len(bounds) == FRAMES - 1 and all(len(b) == 3 for b in bounds)
            for _, t_start, t_end in bounds:
                assert float(t_end) > float(t_start)


def test_events_npz_contents(synth):
    total = 0
    for split in SEQS:
        for seq in sequences(synth, split):
            bounds = {int(b[0]): (float(b[1]), float(b[2])) for b in
                      (line.split() for line in
                       (seq / "events" / "data" / "boundary_timestamps.txt").read_text().splitlines())}
            for path in sorted((seq / "events" / "data").glob("*_events.npz")):
                with np.load(path) as f:
                    assert set(f.files) == {"x", "y", "t", "p"}
                    x, y, t, p = f["x"], f["y"], f["t"], f["p"]
                assert (x.dtype, y.dtype, t.dtype, p.dtype) == (
                    np.dtype("uint16"), np.dtype("uint16"), np.dtype("int64"), np.dtype(bool))
                assert x.shape == y.shape == t.shape == p.shape and x.ndim == 1
                total += x.size
                if x.size:
                    assert x.max() < W and y.max() < H
                    assert np.all(np.diff(t) >= 0)
                    frame = int(path.name.split("_")[2])
                    t_start, t_end = bounds[frame]
                    assert t.min() >= round(t_start * 1e9) - 1
                    assert t.max() <= round(t_end * 1e9) + 1
    assert total > 0  # a moving scene produces events


def test_labels_are_single_channel_carla_tags(synth):
    seen = set()
    for seq in sequences(synth, "train"):
        for path in (seq / "semantic" / "data").glob("*_gt_labelIds.png"):
            tags = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            assert tags.shape == (H, W) and tags.dtype == np.uint8
            seen |= set(np.unique(tags).tolist())
            rgb = cv2.imread(str(path.parent.parent.parent / "rgb" / "data" /
                                 path.name.replace("_gt_labelIds.png", "_image.png")))
            assert rgb.shape == (H, W, 3)
    assert seen <= set(range(13)), seen
    assert len(seen) >= 3


# --------------------------------------------------------------------------------------------
# index_split
# --------------------------------------------------------------------------------------------

def test_index_split_skips_first_frames(synth):
    for split, n_seq in SEQS.items():
        frames, skipped = index_split(synth / SPLITS[split])
        assert skipped == n_seq  # one frame per sequence has no events window
        assert len(frames) == n_seq * (FRAMES - 1)
        ids = [f.id for f in frames]
        assert len(set(ids)) == len(ids)
        for f in frames:
            assert re.fullmatch(r"Town\d{2}/sequence_\d+/\d{2}_\d{3}_\d{4}", f.id), f.id
            assert not f.id.endswith("_0000")
            assert f.rgb.is_file() and f.events.is_file() and f.label.is_file()
            stem = f.id.split("/")[-1]
            assert f.rgb.name == f"{stem}_image.png"
            assert f.events.name == f"{stem}_events.npz"
            assert f.label.name == f"{stem}_gt_labelIds.png"


def test_missing_split_folder_raises_naming_it(synth):
    missing = synth / "Town99_nope"
    with pytest.raises(DatasetError, match="Town99_nope"):
        index_split(missing)


def test_split_folder_without_sequences_raises(tmp_path):
    (tmp_path / "Town05_val").mkdir()
    with pytest.raises(DatasetError, match="Town05_val"):
        index_split(tmp_path / "Town05_val")


def test_missing_rgb_frame_raises_naming_it(synth, tmp_path):
    seq = sequences(synth, "val")[0]
    copy = tmp_path / "Town05_val" / seq.parent.name / seq.name
    shutil.copytree(seq, copy)
    victim = sorted((copy / "rgb" / "data").glob("*_image.png"))[1]
    victim.unlink()
    with pytest.raises(DatasetError, match=re.escape(victim.name)):
        index_split(tmp_path / "Town05_val")


# --------------------------------------------------------------------------------------------
# EventScapesDataset sample contract
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("representation,num_bins,channels", [
    ("voxel_grid", 5, 5), ("voxel_grid", 3, 3), ("histogram", 5, 2)])
@pytest.mark.parametrize("normalize", [True, False])
def test_dataset_sample_contract(synth, representation, num_bins, channels, normalize):
    frames, _ = index_split(synth / SPLITS["train"])
    ds = EventScapesDataset(frames, representation, num_bins, normalize, LABEL_MAP, 255)
    assert len(ds) == len(frames)
    for i in (0, len(ds) - 1):
        s = ds[i]
        assert set(s) == {"rgb", "events", "mask", "id"}
        assert s["rgb"].dtype == np.uint8 and s["rgb"].shape == (H, W, 3)
        assert s["mask"].dtype == np.uint8 and s["mask"].shape == (H, W)
        assert [s["events"][k].dtype for k in "xytp"] == [np.int16, np.int16, np.int32, np.int8]
        assert isinstance(s["id"], str) and s["id"] == frames[i].id
        values = set(np.unique(s["mask"]).tolist())
        assert values <= set(range(NUM_CLASSES)) | {255}, values
        tensor = sample_event_tensor(s, representation, num_bins, normalize)
        assert tensor.shape == (channels, H, W) and np.isfinite(tensor).all() and tensor.any()
        assert s["rgb"].flags["C_CONTIGUOUS"]


def test_dataset_sample_matches_files(synth):
    frames, _ = index_split(synth / SPLITS["val"])
    f = frames[0]
    s = EventScapesDataset(frames, "voxel_grid", 4, False, LABEL_MAP, 255)[0]
    # RGB in R, G, B order (cv2 reads BGR).
    bgr = cv2.imread(str(f.rgb), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(s["rgb"], bgr[..., ::-1])
    # Events: the voxel grid of the raw file.
    raw = read_events(f.events)
    np.testing.assert_allclose(sample_event_tensor(s, "voxel_grid", 4),
                               voxel_grid(raw["x"], raw["y"], raw["t"], raw["p"], 4, H, W),
                               atol=1e-6)
    # Mask: the label map applied to the tags.
    tags = cv2.imread(str(f.label), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(s["mask"], np.asarray(LABEL_MAP)[tags])


def test_dataset_without_label_map_keeps_raw_tags(synth):
    frames, _ = index_split(synth / SPLITS["val"])
    s = EventScapesDataset(frames, "histogram", 5, False, None, 255)[0]
    tags = cv2.imread(str(frames[0].label), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(s["mask"], tags)
    # Histogram counts add up to the number of events in the file.
    assert sample_event_tensor(s, "histogram", 5).sum() == read_events(frames[0].events)["x"].size


# --------------------------------------------------------------------------------------------
# Cache reuse
# --------------------------------------------------------------------------------------------

def test_ensure_synthetic_twice_reuses_the_folder(synth):
    cache = synth.parent.parent
    marker = synth / COMPLETE_MARKER
    some_file = sorted(synth.rglob("*_events.npz"))[0]
    before = (marker.stat().st_mtime_ns, some_file.stat().st_mtime_ns)
    listing = sorted(str(p.relative_to(synth)) for p in synth.rglob("*"))
    again = ensure_synthetic(cache_dir=str(cache), params=dict(PARAMS), splits=dict(SPLITS),
                             progress=False)
    assert again == synth
    assert (marker.stat().st_mtime_ns, some_file.stat().st_mtime_ns) == before
    assert sorted(str(p.relative_to(synth)) for p in synth.rglob("*")) == listing
    # No temporary siblings left behind.
    assert [p.name for p in synth.parent.iterdir()] == [synth.name]


def test_different_settings_get_a_different_folder(synth, tmp_path):
    from event_seg.data.synthetic import synthetic_root

    other = dict(PARAMS, seed=1)
    assert synthetic_root(str(synth.parent.parent), other) != synth
    assert synthetic_root(str(synth.parent.parent), dict(PARAMS)) == synth


# --------------------------------------------------------------------------------------------
# Robust reading
# --------------------------------------------------------------------------------------------

def test_three_channel_label_png_uses_first_channel(synth, tmp_path):
    frames, _ = index_split(synth / SPLITS["val"])
    f = frames[0]
    tags = cv2.imread(str(f.label), cv2.IMREAD_UNCHANGED)
    tags = tags.copy()
    tags[0, :3] = [200, 13, 12]  # unknown tags -> ignore; 12 -> class 3
    three = np.stack([tags, np.full_like(tags, 7), 255 - tags], axis=-1)
    path = tmp_path / f.label.name
    assert cv2.imwrite(str(path), three)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape == (H, W, 3)
    np.testing.assert_array_equal(read_label(path), tags)
    ds = EventScapesDataset([dataclasses.replace(f, label=path)], "voxel_grid", 5, True,
                            LABEL_MAP, 255)
    mask = ds[0]["mask"]
    assert mask.shape == (H, W)
    assert mask[0, 0] == 255 and mask[0, 1] == 255 and mask[0, 2] == 3
    expected = np.full(256, 255, np.uint8)
    expected[: len(LABEL_MAP)] = LABEL_MAP
    np.testing.assert_array_equal(mask, expected[tags])


def test_truncated_events_file_raises_naming_it(synth, tmp_path):
    frames, _ = index_split(synth / SPLITS["train"])
    f = frames[0]
    data = f.events.read_bytes()
    assert len(data) > 100
    bad = tmp_path / f.events.name
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=re.escape(str(bad))):
        read_events(bad)
    ds = EventScapesDataset([dataclasses.replace(f, events=bad)], "voxel_grid", 5, True,
                            LABEL_MAP, 255)
    with pytest.raises(DatasetError, match=re.escape(str(bad))):
        ds[0]


def test_garbage_events_file_raises_naming_it(tmp_path):
    bad = tmp_path / "01_000_0001_events.npz"
    bad.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(DatasetError, match=re.escape(bad.name)):
        read_events(bad)


def test_events_file_missing_a_key_raises_naming_file_and_key(tmp_path):
    bad = tmp_path / "01_000_0001_events.npz"
    np.savez(bad, x=np.zeros(2, np.uint16), y=np.zeros(2, np.uint16), t=np.zeros(2, np.int64))
    with pytest.raises(DatasetError, match=re.escape(bad.name)) as info:
        read_events(bad)
    assert "'p'" in str(info.value) or " p" in str(info.value)


def test_events_out_of_sensor_raise_dataset_error_naming_file(synth, tmp_path):
    frames, _ = index_split(synth / SPLITS["train"])
    f = frames[0]
    bad = tmp_path / f.events.name
    np.savez(bad, x=np.array([W], np.uint16), y=np.array([0], np.uint16),
             t=np.array([0], np.int64), p=np.array([True]))
    ds = EventScapesDataset([dataclasses.replace(f, events=bad)], "voxel_grid", 5, True,
                            LABEL_MAP, 255)
    with pytest.raises(DatasetError, match=re.escape(bad.name)):
        ds[0]


def test_nan_timestamps_raise_dataset_error_naming_file(synth, tmp_path):
    # A float `t` holding NaN once ended in an IndexError traceback deep in the voxel grid.
    frames, _ = index_split(synth / SPLITS["train"])
    f = frames[0]
    raw = read_events(f.events)
    t = raw["t"].astype(np.float64)
    t[len(t) // 2] = np.nan
    bad = tmp_path / f.events.name
    np.savez(bad, x=raw["x"], y=raw["y"], t=t, p=raw["p"])
    ds = EventScapesDataset([dataclasses.replace(f, events=bad)], "voxel_grid", 5, True,
                            LABEL_MAP, 255)
    with pytest.raises(DatasetError, match=re.escape(str(bad)) + ".*NaN"):
        ds[0]


def test_corrupt_rgb_raises_naming_it(synth, tmp_path):
    frames, _ = index_split(synth / SPLITS["train"])
    f = frames[0]
    bad = tmp_path / f.rgb.name
    bad.write_bytes(f.rgb.read_bytes()[:20])
    ds = EventScapesDataset([dataclasses.replace(f, rgb=bad)], "voxel_grid", 5, True,
                            LABEL_MAP, 255)
    with pytest.raises(DatasetError, match=re.escape(bad.name)):
        ds[0]
