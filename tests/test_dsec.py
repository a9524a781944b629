"""DSEC-Semantic read from small files written in the released format (Blosc-compressed h5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import hdf5plugin
import h5py
import numpy as np
import pytest
import torch

from event_seg.data.dsec import DsecSemanticDataset, index_split, window_indices
from event_seg.data.events import voxel_grid
from event_seg.data.sample import sample_event_tensor
from event_seg.errors import DatasetError

REPO = Path(__file__).resolve().parents[1]
T_OFFSET = 5_000_000_000          # microseconds: the label clock is far from the event clock
LABEL_TIMES = [120_000, 170_000, 230_000]  # local microseconds of the three labels


def write_sequence(split_dir: Path, name: str, seed: int = 0, x_max: int = 640) -> Path:
    rng = np.random.default_rng(seed)
    seq = split_dir / name
    (seq / "semantic" / "11classes" / "data").mkdir(parents=True)
    (seq / "events" / "left").mkdir(parents=True)
    for i in range(len(LABEL_TIMES)):
        labels = rng.integers(0, 11, (440, 640), dtype=np.uint8)
        labels[:4] = 255
        cv2.imwrite(str(seq / "semantic" / "11classes" / "data" / f"{i:06d}.png"), labels)
    (seq / "semantic" / "timestamps.txt").write_text(
        "\n".join(str(T_OFFSET + t) for t in LABEL_TIMES) + "\n")
    n = 20_000
    t = np.sort(rng.integers(0, 250_000, n)).astype(np.uint32)
    x = rng.integers(0, x_max, n).astype(np.uint16)
    y = rng.integers(0, 480, n).astype(np.uint16)
    p = rng.integers(0, 2, n).astype(np.uint8)
    ms_to_idx = np.searchsorted(t, np.arange(0, 251) * 1000, side="left").astype(np.uint64)
    blosc = hdf5plugin.Blosc(cname="zstd", clevel=1, shuffle=hdf5plugin.Blosc.SHUFFLE)
    with h5py.File(seq / "events" / "left" / "events.h5", "w") as f:
        for key, data in (("x", x), ("y", y), ("t", t), ("p", p)):
            f.create_dataset(f"events/{key}", data=data, chunks=True, **blosc)
        f.create_dataset("t_offset", data=np.int64(T_OFFSET))
        f.create_dataset("ms_to_idx", data=ms_to_idx, **blosc)
    shift = np.stack(np.meshgrid(np.arange(640), np.arange(480)), axis=-1).astype(np.float32)
    shift[..., 0] += 1.2  # rectification moves everything ~1 px right
    with h5py.File(seq / "events" / "left" / "rectify_map.h5", "w") as f:
        f.create_dataset("rectify_map", data=shift)
    return seq


@pytest.fixture(scope="module")
def dsec_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dsec")
    write_sequence(root / "train", "zurich_city_00_a", seed=0)
    write_sequence(root / "test", "zurich_city_13_a", seed=1)
    return root


def raw_events(seq: Path):
    with h5py.File(seq / "events" / "left" / "events.h5", "r") as f:
        return {k: f[f"events/{k}"][()] for k in "xytp"}


def dataset(root, **kw):
    frames, _ = index_split(root / "train", ["zurich_city_00_a"], 11)
    args = dict(representation="voxel_grid", num_bins=5, normalize_events=False, label_map=None,
                ignore_index=255, duration_ms=50.0, num_events=None, rectify=False)
    args.update(kw)
    return DsecSemanticDataset(frames, **args)


def test_duration_window_matches_the_representation_of_the_same_events(dsec_root):
    sample = dataset(dsec_root)[1]
    ev = raw_events(dsec_root / "train" / "zurich_city_00_a")
    end = LABEL_TIMES[1]
    # The window's events in the 440 labelled rows (the 40 rows below the labels are dropped).
    keep = (ev["t"] >= end - 50_000) & (ev["t"] < end) & (ev["y"] < 440)
    expected = voxel_grid(ev["x"][keep], ev["y"][keep], ev["t"][keep], ev["p"][keep], 5, 440, 640)
    events = sample["events"]
    assert events["x"].dtype == np.int16 and events["p"].dtype == np.int8
    assert len(events["x"]) == keep.sum() and "rgb" not in sample
    assert np.allclose(sample_event_tensor(sample, "voxel_grid", 5), expected)
    assert sample["mask"].shape == (440, 640) and sample["mask"][0, 0] == 255
    assert sample["id"] == "zurich_city_00_a/000001"


def test_count_window_takes_the_last_events_before_the_label(dsec_root):
    sample = dataset(dsec_root, duration_ms=None, num_events=1000, representation="histogram")[2]
    ev = raw_events(dsec_root / "train" / "zurich_city_00_a")
    end = int(np.searchsorted(ev["t"], LABEL_TIMES[2]))
    x, y = ev["x"][end - 1000:end], ev["y"][end - 1000:end]
    counts = sample_event_tensor(sample, "histogram", 5)
    assert counts.sum() == (y < 440).sum()  # events in the 40 cropped rows are gone
    assert counts.shape == (2, 440, 640)
    assert counts[:, y[y < 440][0], x[y < 440][0]].sum() >= 1


def test_window_indices_against_a_plain_search():
    t = np.sort(np.random.default_rng(3).integers(0, 10_000, 5000))
    ms_to_idx = np.searchsorted(t, np.arange(0, 11) * 1000)
    for end in (0, 999, 1000, 4321, 9999, 12000):
        assert window_indices(t, ms_to_idx, end, 2500, None) == (
            int(np.searchsorted(t, max(end - 2500, 0))), int(np.searchsorted(t, end)))


def test_rectification_moves_events_through_the_map(dsec_root):
    plain = sample_event_tensor(dataset(dsec_root)[1], "histogram", 5).sum(0)
    rect = sample_event_tensor(dataset(dsec_root, rectify=True)[1], "histogram", 5).sum(0)
    assert np.array_equal(rect[:, 1:], plain[:, :-1])  # x + 1.2 rounds to x + 1


def test_missing_sequence_and_label_count_mismatch_are_named(dsec_root, tmp_path):
    with pytest.raises(DatasetError, match="zurich_city_99_a"):
        index_split(dsec_root / "train", ["zurich_city_99_a"], 11)
    seq = write_sequence(tmp_path / "train", "zurich_city_01_a")
    os.remove(seq / "semantic" / "11classes" / "data" / "000002.png")
    with pytest.raises(DatasetError, match="2 label images but 3 timestamps"):
        index_split(tmp_path / "train", None, 11)
    with pytest.raises(DatasetError, match="19-class label folder"):
        index_split(tmp_path / "train", None, 19)


def test_timestamps_that_are_not_numbers_are_named(tmp_path):
    seq = write_sequence(tmp_path / "train", "zurich_city_02_a")
    (seq / "semantic" / "timestamps.txt").write_text("120000\nnot-a-number\n230000\n")
    with pytest.raises(DatasetError, match=r"zurich_city_02_a/semantic/timestamps.txt does not "
                                           r"hold one integer"):
        index_split(tmp_path / "train", None, 11)


def test_coordinates_outside_the_sensor_are_named_not_an_index_error(tmp_path):
    write_sequence(tmp_path / "train", "zurich_city_03_a", x_max=700)
    frames, _ = index_split(tmp_path / "train", None, 11)
    reader = DsecSemanticDataset(frames, "voxel_grid", 5, False, None, 255, 50.0, None, False)
    with pytest.raises(DatasetError, match=r"zurich_city_03_a/events/left/events.h5 .*outside "
                                           r"the 480x640 sensor"):
        reader[1]
    rectified = DsecSemanticDataset(frames, "voxel_grid", 5, False, None, 255, 50.0, None, True)
    with pytest.raises(DatasetError, match="outside the 480x640 sensor"):
        rectified[1]


def run_cli(*overrides, out: Path, cache: Path):
    return subprocess.run(
        [sys.executable, "-m", "event_seg.train", "debug=smoke", "logger=none",
         f"paths.output_root={out}", *overrides],
        cwd=REPO, env={**os.environ, "EVENT_SEG_CACHE": str(cache)}, capture_output=True,
        text=True, timeout=600)


def test_training_on_dsec_from_the_command_line(dsec_root, tmp_path, cache):
    proc = run_cli("experiment=dsec_semantic_ess", f"dataset.root={dsec_root}",
                   "dataset.height=128", "dataset.width=128", "trial_timestamp=x",
                   "dataset.dsec.sequences.train=[zurich_city_00_a]",
                   "dataset.dsec.sequences.val=[zurich_city_13_a]",
                   "dataset.dsec.sequences.test=[zurich_city_13_a]", out=tmp_path, cache=cache)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = torch.load(tmp_path / "unet_dsec11_x" / "checkpoints" / "last.pt", weights_only=True)
    assert state["model"]["encoder.conv1.weight"].shape[1] == 5
    assert state["dataset_info"]["split_sizes"] == {"train": 3, "val": 3, "test": 3}


def test_dsec_with_rgb_explains_why_not(dsec_root, tmp_path, cache):
    proc = run_cli("dataset=dsec_semantic", f"dataset.root={dsec_root}",
                   "dataset.modality=rgb+events", out=tmp_path, cache=cache)
    assert proc.returncode == 2
    assert "ships no RGB frames aligned to the event camera" in proc.stdout + proc.stderr


def test_prepared_cache_tracks_the_label_times_that_place_each_window(dsec_root, tmp_path):
    import shutil

    from hydra import compose, initialize_config_dir

    import event_seg.config  # noqa: F401  (schemas)
    from event_seg.data import build_data
    from event_seg.prepare import main as prepare_main

    root = tmp_path / "DSEC"
    shutil.copytree(dsec_root, root)
    overrides = ["experiment=dsec_semantic_ess", f"dataset.root={root}",
                 f"paths.cache_dir={tmp_path / 'cache'}", "trainer.num_workers=0",
                 "trainer.progress_bar=false", "dataset.dsec.sequences.train=[zurich_city_00_a]",
                 "dataset.dsec.sequences.val=[zurich_city_13_a]",
                 "dataset.dsec.sequences.test=[zurich_city_13_a]"]
    assert prepare_main(overrides) == 0
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides + ["trial_timestamp=t"])

    def first_sample():
        data = build_data(cfg.dataset, cfg.trainer, cfg.paths.cache_dir, splits=("train",))
        dataset = data.loaders["train"].dataset
        return dataset[0], dataset.cache

    before, cache = first_sample()
    assert cache is not None and cache.misses == 0
    stamps = root / "train" / "zurich_city_00_a" / "semantic" / "timestamps.txt"
    stamps.write_text(stamps.read_text().replace(str(T_OFFSET + LABEL_TIMES[0]),
                                                 str(T_OFFSET + LABEL_TIMES[0] + 30_000)))
    after, cache = first_sample()
    assert cache.misses == 1  # the window moved: read raw, never the stale entry
    assert len(after["events"]["x"]) != len(before["events"]["x"])
