"""DDD17 (EV-SegNet release) read from small files written in the released layout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from event_seg.data.ddd17 import DDD17Dataset, index_split
from event_seg.data.transforms import JointTransform
from event_seg.errors import DatasetError

REPO = Path(__file__).resolve().parents[1]
H, W = 40, 70


def write_ddd17(root: Path, n_train=3, n_test=2) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for folder in ("images", "labels", "events"):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            gray = rng.integers(0, 255, (H, W), dtype=np.uint8)
            labels = rng.integers(0, 6, (H, W), dtype=np.uint8)
            labels[0, :5] = 255
            events = rng.random((H, W, 6)).astype(np.float32)
            cv2.imwrite(str(root / split / "images" / f"img_{i:05d}.png"), gray)
            cv2.imwrite(str(root / split / "labels" / f"lbl_{i:05d}.png"), labels)
            np.save(root / split / "events" / f"ev_{i:05d}.npy", events)
    return root


@pytest.fixture(scope="module")
def ddd17_root(tmp_path_factory):
    return write_ddd17(tmp_path_factory.mktemp("ddd17"))


def test_reader_pairs_by_sorted_name_and_returns_the_sample_contract(ddd17_root):
    triples, skipped = index_split(ddd17_root / "train")
    assert skipped == 0 and len(triples) == 3
    assert [t[0].stem[-5:] for t in triples] == [t[2].stem[-5:] for t in triples]
    ds = DDD17Dataset(triples, 6, None, 255)
    sample = ds[1]
    assert sample["rgb"].shape == (H, W, 3) and sample["rgb"].dtype == np.uint8
    assert np.array_equal(sample["rgb"][..., 0], sample["rgb"][..., 2])  # grayscale repeated
    assert sample["dense"].shape == (6, H, W) and sample["dense"].dtype == np.float32
    stored = np.load(triples[1][2])
    assert np.array_equal(sample["dense"], stored.transpose(2, 0, 1))  # used as they are
    assert "events" not in sample
    assert sample["mask"].dtype == np.uint8 and sample["mask"][0, 0] == 255
    assert set(np.unique(sample["mask"])) <= set(range(6)) | {255}
    assert sample["id"] == "train/img_00001"


def test_padding_to_the_model_size_is_ignored_by_the_loss(ddd17_root):
    triples, _ = index_split(ddd17_root / "test")
    ds = DDD17Dataset(triples, 6, None, 255, JointTransform(False, size=(64, 96)))
    sample = ds[0]
    assert sample["mask"].shape == (64, 96) and sample["dense"].shape == (6, 64, 96)
    assert (sample["mask"][:12] == 255).all()  # (64 - 40) / 2 rows of padding on top
    assert (sample["dense"][:, :12] == 0).all()


def test_label_ids_beyond_the_classes_are_named(tmp_path):
    import cv2

    root = write_ddd17(tmp_path)
    triples, _ = index_split(root / "train")
    labels = cv2.imread(str(triples[0][1]), cv2.IMREAD_UNCHANGED)
    labels[5, 5] = 9  # DDD17 has 6 classes (0..5) and 255 for ignore
    cv2.imwrite(str(triples[0][1]), labels)
    reader = DDD17Dataset(triples, 6, None, 255)
    reader.num_classes = 6
    with pytest.raises(DatasetError, match=r"lbl_00000\.png: label ids \[9\] are beyond the 6"):
        reader[0]


def test_a_tensor_full_of_nan_is_named_not_trained_on(tmp_path):
    root = write_ddd17(tmp_path)
    triples, _ = index_split(root / "train")
    np.save(triples[1][2], np.full((H, W, 6), np.nan, np.float32))
    with pytest.raises(DatasetError, match=r"ev_00001\.npy holds NaN"):
        DDD17Dataset(triples, 6, None, 255)[1]


def test_half_downloaded_split_names_the_counts(tmp_path):
    root = write_ddd17(tmp_path)
    os.remove(next((root / "train" / "events").iterdir()))
    with pytest.raises(DatasetError, match="incomplete.*'events': 2"):
        index_split(root / "train")


def test_missing_folder_and_wrong_tensor_shape_are_named(tmp_path):
    root = write_ddd17(tmp_path)
    with pytest.raises(DatasetError, match="labels"):
        os.rename(root / "test" / "labels", root / "test" / "lbl")
        index_split(root / "test")
    triples, _ = index_split(root / "train")
    np.save(triples[0][2], np.zeros((H, W, 4), np.float32))
    with pytest.raises(DatasetError, match=r"ev_00000\.npy.*\(H, W, 6\)"):
        DDD17Dataset(triples, 6, None, 255)[0]


def test_training_on_ddd17_from_the_command_line(ddd17_root, tmp_path, cache):
    env = {**os.environ, "EVENT_SEG_CACHE": str(cache)}
    proc = subprocess.run(
        [sys.executable, "-m", "event_seg.train", "experiment=ddd17_evsegnet", "debug=smoke",
         f"dataset.root={ddd17_root}", "dataset.height=64", "dataset.width=96", "logger=none",
         f"paths.output_root={tmp_path}", "trial_timestamp=d"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = torch.load(tmp_path / "unet_ddd17_events_d" / "checkpoints" / "last.pt",
                       weights_only=True)
    assert state["model"]["encoder.conv1.weight"].shape[1] == 6  # events only: 6 channels
    assert state["dataset_info"]["class_names"][0] == "flat"
    assert state["dataset_info"]["split_sizes"] == {"train": 3, "val": 2, "test": 2}


def test_ddd17_without_root_says_so(tmp_path, cache):
    proc = subprocess.run(
        [sys.executable, "-m", "event_seg.train", "dataset=ddd17", "debug=smoke",
         f"paths.output_root={tmp_path}"],
        cwd=REPO, env={**os.environ, "EVENT_SEG_CACHE": str(cache)}, capture_output=True,
        text=True, timeout=600)
    assert proc.returncode == 2
    assert "dataset.root is not set for dataset 'ddd17'" in proc.stdout + proc.stderr
