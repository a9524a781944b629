"""EventScape as released: nested Town/sequence folders, native dtypes, label maps, time unit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from event_seg.data.event_scapes import (EventScapesDataset, detect_time_unit, index_split,
                                         sniff_time_unit)
from event_seg.data.events import voxel_grid
from event_seg.data.sample import sample_event_tensor
from event_seg.data.synthetic import ensure_synthetic

REPO = Path(__file__).resolve().parents[1]
SPLITS = {"train": "Town01-03_train", "val": "Town05_val", "test": "Town05_test"}
PARAMS = dict(height=32, width=64, seed=3, train_sequences=2, val_sequences=1, test_sequences=1,
              frames_per_sequence=3, subframes=3, frame_rate=10.0, contrast_threshold=0.25,
              threshold_sigma=0.03, noise_rate=0.05, hard_fraction=0.4)
NINE_CLASS_MAP = [0, 1, 1, 0, 2, 3, 4, 5, 6, 7, 8, 1, 3]


@pytest.mark.parametrize("unit,scale", [("ns", 1e9), ("us", 1e6), ("ms", 1e3), ("s", 1.0)])
def test_time_unit_is_detected_from_the_window_span(unit, scale):
    window = 0.05  # seconds between frames
    assert detect_time_unit(0.9 * window * scale, window) == unit
    assert detect_time_unit(0, window) is None


@pytest.fixture(scope="module")
def eventscape_root(tmp_path_factory):
    """A synthetic set is written in the EventScape layout; microsecond stamps stand in for a
    release whose unit differs from ours."""
    root = ensure_synthetic(tmp_path_factory.mktemp("es"), PARAMS, SPLITS, progress=False)
    copy = tmp_path_factory.mktemp("release") / "EventScape"
    shutil.copytree(root, copy)
    for npz in copy.rglob("*_events.npz"):
        with np.load(npz) as f:
            ev = {k: f[k] for k in "xytp"}
        ev["t"] = ev["t"] // 1000  # ns -> us
        np.savez(npz, **ev)
    return copy


def test_nanoseconds_of_the_synthetic_set_and_microseconds_are_told_apart(eventscape_root, tmp_path):
    frames, _ = index_split(eventscape_root / SPLITS["train"])
    assert sniff_time_unit(frames) == "us"
    synthetic = ensure_synthetic(tmp_path, PARAMS, SPLITS, progress=False)
    assert sniff_time_unit(index_split(synthetic / SPLITS["train"])[0]) == "ns"


def test_identity_and_nine_class_maps(eventscape_root):
    frames, skipped = index_split(eventscape_root / SPLITS["train"])
    assert skipped == 2  # first frame of each of the two sequences has no events
    raw = cv2.imread(str(frames[0].label), cv2.IMREAD_UNCHANGED)
    identity = EventScapesDataset(frames, "voxel_grid", 5, False, list(range(13)), 255)[0]
    merged = EventScapesDataset(frames, "voxel_grid", 5, False, NINE_CLASS_MAP, 255)[0]
    assert np.array_equal(identity["mask"], raw)
    assert np.array_equal(merged["mask"], np.asarray(NINE_CLASS_MAP)[raw])
    with np.load(frames[0].events) as f:
        assert f["x"].dtype == np.uint16 and f["t"].dtype == np.int64 and f["p"].dtype == bool
        expected = voxel_grid(f["x"], f["y"], f["t"], f["p"], 5, 32, 64)
    assert np.allclose(sample_event_tensor(identity, "voxel_grid", 5), expected)


def run_cli(*overrides, out, cache):
    return subprocess.run(
        [sys.executable, "-m", "event_seg.train", "debug=smoke", "logger=none",
         f"paths.output_root={out}", *overrides],
        cwd=REPO, env={**os.environ, "EVENT_SEG_CACHE": str(cache)}, capture_output=True,
        text=True, timeout=600)


def test_training_on_eventscape_with_13_classes_and_strong_augmentation(eventscape_root,
                                                                        tmp_path, cache):
    proc = run_cli("experiment=event_scapes_13", f"dataset.root={eventscape_root}",
                   "dataset.height=32", "dataset.width=64", "augment=strong", "trial_timestamp=e",
                   out=tmp_path, cache=cache)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Event timestamps are in us" in proc.stdout + proc.stderr
    state = torch.load(tmp_path / "unet_eventscape13_e" / "checkpoints" / "last.pt",
                       weights_only=True)
    assert len(state["dataset_info"]["class_names"]) == 13
    assert state["dataset_info"]["time_unit"] == "us"
    assert state["config"]["dataset"]["augment"]["affine_p"] == 0.5


def test_augment_none_turns_everything_off(tmp_path, cache):
    proc = run_cli("augment=none", "trainer.epochs=1", "trial_timestamp=n", out=tmp_path,
                   cache=cache)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = torch.load(tmp_path / "unet_n" / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["dataset"]["augment"] == {
        "hflip": 0.0, "affine_p": 0.0, "scale": [0.9, 1.1], "rotate_deg": 5.0,
        "translate": 0.05, "photometric_p": 0.0}


def test_corrupt_file_stops_by_name_or_is_skipped_when_asked(eventscape_root, tmp_path, caplog,
                                                              capsys):
    from omegaconf import OmegaConf

    from event_seg.config import DatasetConfig, TrainerConfig
    from event_seg.data import build_data
    from event_seg.errors import DatasetError

    root = tmp_path / "EventScape"
    shutil.copytree(eventscape_root, root)
    victim = sorted((root / SPLITS["train"]).rglob("*_events.npz"))[0]
    victim.write_bytes(victim.read_bytes()[:50])
    cfg = OmegaConf.merge(OmegaConf.structured(DatasetConfig), OmegaConf.load(
        REPO / "conf" / "dataset" / "event_scapes.yaml"), {"root": str(root), "height": 32,
                                                            "width": 64})
    trainer = OmegaConf.merge(OmegaConf.structured(TrainerConfig),
                              {"num_workers": 0, "batch_size": 1, "progress_bar": False})
    loader = build_data(cfg, trainer, str(tmp_path / "cache"), splits=("train",)).loaders["train"]
    with pytest.raises(DatasetError, match=victim.name):
        list(loader)
    cfg.skip_corrupt = True
    loader = build_data(cfg, trainer, str(tmp_path / "cache"), splits=("train",)).loaders["train"]
    batches = list(loader)
    assert len(batches) == len(loader.dataset)
    assert any(victim.name in r.message and "1 skipped" in r.message for r in caplog.records)

    # event-seg-prepare: one line naming the file (from a worker too), or with skip_corrupt the
    # readable samples packed and the unreadable one left out.
    from event_seg.prepare import main as prepare_main

    args = ["dataset=event_scapes", f"dataset.root={root}", "dataset.height=32",
            "dataset.width=64", f"paths.cache_dir={tmp_path / 'cache'}", "trainer.num_workers=1",
            "trainer.progress_bar=false"]
    capsys.readouterr()
    assert prepare_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and victim.name in err[0] and "Traceback" not in err[0]
    assert prepare_main(args + ["dataset.skip_corrupt=true"]) == 0
    assert "train: 3 samples" in capsys.readouterr().out


def _dataset_cfg(root, **extra):
    from omegaconf import OmegaConf

    from event_seg.config import DatasetConfig

    return OmegaConf.merge(OmegaConf.structured(DatasetConfig),
                           OmegaConf.load(REPO / "conf" / "dataset" / "event_scapes.yaml"),
                           {"root": str(root), "height": 32, "width": 64, **extra})


def _split(cfg, cache_dir, split="val"):
    from omegaconf import OmegaConf

    from event_seg.config import TrainerConfig
    from event_seg.data import build_data

    trainer = OmegaConf.merge(OmegaConf.structured(TrainerConfig), {"num_workers": 0})
    return build_data(cfg, trainer, str(cache_dir), splits=(split,)).loaders[split].dataset


def _model_inputs(dataset, info_cfg):
    """The model input the trainer builds for every sample of ``dataset`` (one per batch)."""
    from types import SimpleNamespace

    from event_seg.data.collate import collate_compact
    from event_seg.data.device_input import ModelInputBuilder

    info = SimpleNamespace(modality="rgb+events", representation=info_cfg.representation,
                           num_bins=info_cfg.num_bins, event_channels=info_cfg.num_bins,
                           ignore_index=255)
    builder = ModelInputBuilder(info, "cpu", normalize_events=info_cfg.normalize_events)
    # (index, epoch) keys reseed the augmentation per sample, as training does.
    return [builder(collate_compact([dataset[(i, 1)]])).inputs for i in range(len(dataset))]


def test_prepared_cache_is_read_without_raw_reads_and_never_stale(eventscape_root, tmp_path,
                                                                   monkeypatch, capsys):
    from event_seg.data import event_scapes
    from event_seg.prepare import main as prepare_main

    root = tmp_path / "EventScape"
    shutil.copytree(eventscape_root, root)
    cache = tmp_path / "cache"
    args = ["dataset=event_scapes", f"dataset.root={root}", "dataset.height=32",
            "dataset.width=64", f"paths.cache_dir={cache}", "trainer.num_workers=0",
            "trainer.progress_bar=false"]
    assert prepare_main(args) == 0
    assert "train: 4 samples (4 with raw events" in capsys.readouterr().out
    splits = sorted(p.name for p in (cache / "packed").glob("*/*") if p.is_dir())
    assert splits == sorted(SPLITS.values())
    for split in splits:  # a few large files per split, not one per sample
        files = sorted(p.name for p in next((cache / "packed").glob(f"*/{split}")).iterdir())
        assert files == ["data-00000.bin", "index.json"]

    cfg = _dataset_cfg(root)
    fresh = _model_inputs(_split(_dataset_cfg(root, representation_cache=False), cache), cfg)

    def no_raw_reads(*args):
        raise AssertionError("a raw file was read although the prepared cache holds it")

    monkeypatch.setattr(event_scapes, "read_events", no_raw_reads)
    monkeypatch.setattr(event_scapes, "read_rgb", no_raw_reads)
    monkeypatch.setattr(event_scapes, "read_label", no_raw_reads)
    cached = _model_inputs(_split(cfg, cache), cfg)
    assert len(cached) == len(fresh) == 2
    assert all(torch.equal(a, b) for a, b in zip(fresh, cached))
    # The same folder named another way (a symlink) finds the same cache and every entry.
    (tmp_path / "link").symlink_to(root)
    linked = _split(_dataset_cfg(tmp_path / "link"), cache)
    assert all(torch.equal(a, b) for a, b in zip(fresh, _model_inputs(linked, cfg)))
    assert linked.cache.misses == 0
    monkeypatch.undo()

    # A changed source file is read raw again: the new events, never the stale entry.
    victim = sorted((root / SPLITS["val"]).rglob("*_events.npz"))[0]
    with np.load(victim) as f:
        ev = {k: f[k] for k in "xytp"}
    ev["p"] = ~ev["p"]
    np.savez(victim, **ev)
    after = _model_inputs(_split(cfg, cache), cfg)[0]
    assert torch.allclose(after[:, 3:], -fresh[0][:, 3:], atol=1e-5)  # events flipped sign
    assert torch.equal(after[:, :3], fresh[0][:, :3])                  # RGB as before

    # Other representation settings use another folder.
    assert prepare_main(args + ["dataset.num_bins=3"]) == 0
    assert len(list((cache / "packed").iterdir())) == 2


def test_dense_cache_entries_give_the_same_input_within_float16(eventscape_root, tmp_path,
                                                                monkeypatch):
    """Where the float16 representation is smaller than the raw events, the cache stores it."""
    from event_seg.data import packed_cache
    from event_seg.prepare import main as prepare_main

    monkeypatch.setattr(packed_cache, "_prefer_dense", lambda raw_bytes, dense_bytes: True)
    cache = tmp_path / "cache"
    assert prepare_main(["dataset=event_scapes", f"dataset.root={eventscape_root}",
                         "dataset.height=32", "dataset.width=64", f"paths.cache_dir={cache}",
                         "trainer.num_workers=0", "trainer.progress_bar=false"]) == 0
    cfg = _dataset_cfg(eventscape_root)
    dataset = _split(cfg, cache)
    assert "dense" in dataset[0] and dataset[0]["dense"].dtype == np.float16
    fresh = _model_inputs(_split(_dataset_cfg(eventscape_root, representation_cache=False),
                                 cache), cfg)
    for a, b in zip(fresh, _model_inputs(dataset, cfg)):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3)
    # Under an affine or a cutting crop a representation cached before them is not the one the
    # raw path builds from the moved events: such samples are binned from their events.
    strong = {"augment": {"hflip": 0.5, "affine_p": 1.0, "scale": [0.8, 1.25], "rotate_deg": 5.0,
                          "translate": 0.05, "photometric_p": 0.0}}
    cfg = _dataset_cfg(eventscape_root, **strong)
    raw = _model_inputs(_split(_dataset_cfg(eventscape_root, representation_cache=False,
                                            **strong), cache, "train"), cfg)
    cached = _model_inputs(_split(cfg, cache, "train"), cfg)
    for a, b in zip(raw, cached):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_damaged_cache_is_reported_once_and_samples_are_read_raw(eventscape_root, tmp_path,
                                                                    caplog):
    from event_seg.prepare import main as prepare_main

    cache = tmp_path / "cache"
    assert prepare_main(["dataset=event_scapes", f"dataset.root={eventscape_root}",
                         "dataset.height=32", "dataset.width=64", f"paths.cache_dir={cache}",
                         "trainer.num_workers=0", "trainer.progress_bar=false"]) == 0
    cfg = _dataset_cfg(eventscape_root)
    fresh = _model_inputs(_split(_dataset_cfg(eventscape_root, representation_cache=False),
                                 cache), cfg)
    shard = next((cache / "packed").glob(f"*/{SPLITS['val']}/data-00000.bin"))
    with open(shard, "r+b") as f:
        f.truncate(100)
    assert all(torch.equal(a, b) for a, b in zip(fresh, _model_inputs(_split(cfg, cache), cfg)))
    damaged = [r for r in caplog.records if "is damaged" in r.message]
    assert len(damaged) == 1 and "shorter than its index says" in damaged[0].message


def test_prepare_reports_bad_overrides_in_one_line(capsys):
    from event_seg.prepare import main as prepare_main

    assert prepare_main(["dataset=nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]
