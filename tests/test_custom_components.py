"""Your own model and dataset by ``_target_``: the worked examples (examples/) trained through the
real CLI, evaluated and resume-checked from their checkpoint, and the one-line errors a user
meets on the way (a target that cannot be imported, a signature that does not fit, a reader
whose samples break the contract, a model whose output has the wrong shape)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from event_seg.config import validate
from event_seg.errors import ConfigError, DatasetError
from event_seg.launch import compose_command
from event_seg.train import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]
SEARCHPATH = f"hydra.searchpath=[file://{REPO}/examples/conf]"
CUSTOM = (SEARCHPATH, "model=tiny_net", "dataset=npz_folder")
MODULE = Path(__file__).stem  # this file, importable as a module: targets of the error tests


def write_npz_folder(root: Path, per_split: int = 3, height: int = 40, width: int = 70) -> Path:
    """A tiny folder in the layout examples/npz_folder.py reads, written independently of
    examples/make_npz_folder.py: float stamps, 0/1 polarities, a frame larger than the
    training crop (debug=smoke trains at 32 x 64)."""
    import cv2

    rng = np.random.default_rng(1)
    for split in ("train", "val", "test"):
        for sub in ("events", "labels", "rgb"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(per_split):
            n = 500
            np.savez(root / split / "events" / f"s{i}.npz",
                     x=rng.integers(0, width, n), y=rng.integers(0, height, n),
                     t=np.sort(rng.uniform(0.0, 0.05, n)), p=rng.integers(0, 2, n))
            label = np.zeros((height, width), np.uint8)
            label[10:30, 20 + i:50 + i] = 1
            label[0, :] = 255  # an ignored row
            cv2.imwrite(str(root / split / "labels" / f"s{i}.png"), label)
            cv2.imwrite(str(root / split / "rgb" / f"s{i}.png"),
                        rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        # A label without its events file: skipped and counted, as the built-in readers do.
        orphan = np.zeros((height, width), np.uint8)
        cv2.imwrite(str(root / split / "labels" / "orphan.png"), orphan)
    return root


def run_module(module: str, *args, out: Path, cache: Path, timeout=600):
    env = {**os.environ, "EVENT_SEG_CACHE": str(cache), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def train(*overrides, out: Path, cache: Path):
    return run_module("event_seg.train", "debug=smoke", "logger=none",
                      f"paths.output_root={out}", *overrides, out=out, cache=cache)


@pytest.fixture(scope="module")
def npz_root(tmp_path_factory):
    return write_npz_folder(tmp_path_factory.mktemp("npz_folder"))


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory, npz_root, cache):
    """examples/tiny_net.py on examples/npz_folder.py, trained by the CLI (two smoke epochs)."""
    out = tmp_path_factory.mktemp("outputs")
    proc = train(*CUSTOM, f"dataset.root={npz_root}", "trial_timestamp=t1", out=out, cache=cache)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / "tiny_net_t1", proc


def test_custom_model_and_reader_train_through_the_cli(custom_run):
    run_dir, proc = custom_run
    log = proc.stdout + proc.stderr
    # Three samples per split; the orphan label (no events file) is skipped and counted.
    assert "{'train': 3, 'val': 3, 'test': 3}" in log
    assert "skipped 1 frames without an events file" in log
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["best_val_mean_iou"] <= 1.0 and "test_mean_iou" in metrics
    state = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert state["config"]["model"]["_target_"] == "examples.tiny_net.TinyNet"
    assert state["config"]["dataset"]["_target_"] == "examples.npz_folder.NpzFolderReader"
    # The weights are TinyNet's (width 16, rgb+events: 3 + 5 input channels, 2 classes).
    assert state["model"]["stem.0.weight"].shape == (16, 8, 3, 3)
    assert state["model"]["head.weight"].shape == (2, 16, 1, 1)


def test_evaluate_rebuilds_the_custom_model_from_the_checkpoint(custom_run, cache, tmp_path):
    run_dir, _ = custom_run
    proc = run_module("event_seg.evaluate", f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}",
                      f"output_dir={tmp_path / 'eval'}", "trainer.vis.num_batches=0",
                      out=tmp_path, cache=cache)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["samples"] == 3
    assert 0.0 <= metrics["mean_iou"] <= 1.0 and set(metrics["per_class_iou"]) == {"background",
                                                                                   "disc"}


def test_resuming_with_other_model_kwargs_is_refused_in_one_line(custom_run, npz_root, cache):
    run_dir, _ = custom_run
    proc = train(*CUSTOM, f"dataset.root={npz_root}", "trial_timestamp=t1",
                 "model.kwargs.width=8", out=run_dir.parent, cache=cache)
    assert proc.returncode == 2
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "model.kwargs.width (16 -> 8)" in errors[0], proc.stderr


def test_a_target_that_cannot_be_imported_is_one_line_before_anything_runs(tmp_path, cache):
    proc = train(SEARCHPATH, "model=tiny_net", "model._target_=examples.tiny_nett.TinyNet",
                 out=tmp_path, cache=tmp_path / "no-cache")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: model._target_=examples.tiny_nett.TinyNet: cannot import examples.tiny_nett "
        "(No module named 'examples.tiny_nett'); run from the folder that holds it or add that "
        "folder to PYTHONPATH"]
    assert not (tmp_path / "no-cache").exists() and not list(tmp_path.glob("tiny_net_*"))


# ------------------------------------------------------------------------------------------
# Config checks, in process: composed as the CLI composes them


def composed(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[*overrides, "trial_timestamp=x"])


class NoChannels(torch.nn.Module):
    def __init__(self, classes: int):
        super().__init__()


class HalfSize(torch.nn.Module):
    """Returns logits at half the input size: a model bug event_seg must name."""

    def __init__(self, in_channels: int, classes: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, classes, 1, stride=2)

    def forward(self, x):
        return self.conv(x)


class ReaderWithoutSplitDir:
    def __init__(self, folder, transform):
        pass


@pytest.mark.parametrize("overrides,expected", [
    (("+model.kwargs.widht=8",),
     "model.kwargs.widht: examples.tiny_net.TinyNet takes no argument 'widht' (did you mean "
     "model.kwargs.width?); its arguments: in_channels, classes, width"),
    ((f"model._target_={MODULE}.NoChannels",),
     f"model._target_={MODULE}.NoChannels does not take in_channels (its arguments: classes); "
     f"event_seg calls it as NoChannels(in_channels=..., classes=..., **model.kwargs)"),
    (("model._target_=examples.tiny_net.TinyNett",),
     "model._target_=examples.tiny_net.TinyNett: examples.tiny_net has no attribute 'TinyNett'"),
    (("model.arch=Unet",), "model.arch=Unet and model._target_=examples.tiny_net.TinyNet are "
                           "both set"),
    ((f"dataset._target_={MODULE}.ReaderWithoutSplitDir",),
     f"dataset._target_={MODULE}.ReaderWithoutSplitDir does not take split_dir, split, "
     f"representation, num_bins, normalize_events, label_map, ignore_index"),
    (("dataset.format=event_scapes",), "dataset.format=event_scapes and dataset._target_="
                                       "examples.npz_folder.NpzFolderReader are both set"),
])
def test_target_mistakes_are_one_line_config_errors(overrides, expected):
    cfg = composed(*CUSTOM, *overrides)
    with pytest.raises(ConfigError) as caught:
        validate(cfg)
    message = str(caught.value)
    assert expected in message and "\n" not in message


@pytest.mark.parametrize("override,expected", [
    # Built-in keys keep their typo check with a `_target_` model ...
    ("model.encoder_nme=resnet34", "unknown config key: model.encoder_nme (did you mean "
                                   "model.encoder_name?)"),
    # ... and a target's argument set beside them (not under kwargs) is refused, not dropped.
    ("+model.width=8", "unknown config key: model.width"),
    # A target's argument the config file does not set yet takes a `+`, as Hydra wants.
    ("model.kwargs.depth=3", "model.kwargs.depth is not set in the config yet: add an argument "
                             "of the model or reader with +model.kwargs.depth=<value>"),
])
def test_built_in_keys_keep_their_typo_check(override, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        compose_command(["train", *CUSTOM, override], CONFIG_DIR)


def test_smp_kwargs_are_checked_against_the_architecture():
    from event_seg.models import build_model

    cfg = composed("+model.kwargs.decoder_atention_type=scse")
    with pytest.raises(ConfigError, match=r"model\.kwargs\.decoder_atention_type: Unet takes no "
                                          r"argument 'decoder_atention_type'"):
        build_model(cfg.model, _info(cfg))
    cfg = composed("+model.kwargs.decoder_attention_type=scse")
    attention = build_model(cfg.model, _info(cfg)).decoder.blocks[0].attention1.attention
    assert type(attention).__name__ == "SCSEModule"  # Identity without the argument


def test_a_model_output_of_the_wrong_shape_is_one_line():
    from event_seg.models import build_model

    cfg = composed(*CUSTOM, f"model._target_={MODULE}.HalfSize", "~model.kwargs.width")
    with pytest.raises(ConfigError) as caught:
        build_model(cfg.model, _info(cfg))
    assert str(caught.value) == (
        f"model._target_={MODULE}.HalfSize returned [1, 2, 32, 48] for a [1, 8, 64, 96] input; "
        f"event_seg needs the logits [1, 2, 64, 96] ([batch, classes, height, width], before "
        f"softmax)")


@pytest.mark.parametrize("width,expected", [
    ("0", "RuntimeError"),    # its constructor builds, its forward fails: the shape probe
    ("abc", "TypeError"),     # its constructor itself fails
])
def test_a_model_that_fails_to_build_or_run_is_one_line(width, expected):
    from event_seg.models import build_model

    cfg = composed(*CUSTOM, f"model.kwargs.width={width}")
    with pytest.raises(ConfigError) as caught:
        build_model(cfg.model, _info(cfg))
    message = str(caught.value)
    assert message.startswith("model._target_=examples.tiny_net.TinyNet ") and "\n" not in message
    assert expected in message and f"'width': " in message


def _info(cfg):
    from event_seg.data.build import DatasetInfo, event_channels, input_channels

    events = event_channels(cfg.dataset)
    return DatasetInfo(name=cfg.dataset.name, class_names=list(cfg.dataset.class_names),
                       palette=[list(c) for c in cfg.dataset.palette], ignore_index=255,
                       split_sizes={}, representation=cfg.dataset.representation,
                       num_bins=cfg.dataset.num_bins, modality=cfg.dataset.modality,
                       event_channels=events,
                       input_channels=input_channels(cfg.dataset.modality, events), root="",
                       height=cfg.dataset.height, width=cfg.dataset.width)


# ------------------------------------------------------------------------------------------
# The sample contract, checked on every sample of a reader of your own

from examples.npz_folder import NpzFolderReader  # noqa: E402


class FloatRGBReader(NpzFolderReader):
    def read(self, index):
        sample = super().read(index)
        sample["rgb"] = sample["rgb"].astype(np.float32) / 255
        return sample


class NoEventsReader(NpzFolderReader):
    def read(self, index):
        return {**super().read(index), "events": None}


class RawCoordinatesReader(NpzFolderReader):
    """Returns the file's events as they are (int64 x): compact_events was forgotten."""

    def __getitem__(self, index):
        sample = super().__getitem__(index)
        sample["events"] = {**sample["events"], "x": sample["events"]["x"].astype(np.int64)}
        return sample


@pytest.mark.parametrize("reader,expected", [
    ("FloatRGBReader", "has rgb float32 [32, 64, 3]; expected uint8 [32, 64, 3]"),
    ("NoEventsReader", "has neither events nor dense, and dataset.modality=rgb+events needs one"),
    ("RawCoordinatesReader", "has events['x'] int64 ["),
])
def test_a_reader_breaking_the_sample_contract_is_one_line(reader, expected, npz_root, tmp_path):
    from event_seg.data import build_data

    cfg = composed(*CUSTOM, f"dataset.root={npz_root}", f"dataset._target_={MODULE}.{reader}",
                   "debug=smoke")
    data = build_data(cfg.dataset, cfg.trainer, str(tmp_path), splits=("val",))
    with pytest.raises(DatasetError) as caught:
        next(iter(data.loaders["val"]))
    message = str(caught.value)
    assert message.startswith(f"dataset._target_={MODULE}.{reader}: sample 0 (id 'val/s0') ")
    assert expected in message and "\n" not in message


def test_a_sweep_over_your_own_model_finds_it_on_the_search_path():
    argv = ["train", "-m", "model=unet,tiny_net", "hydra.searchpath=[file://examples/conf]"]
    assert compose_command(argv, CONFIG_DIR).model.name == "unet"
    with pytest.raises(ConfigError, match="model=tiny_nett is not an option of model; choose "
                                          "one of: deeplabv3plus, fpn, tiny_net, unet"):
        compose_command([*argv[:2], "model=unet,tiny_nett", argv[3]], CONFIG_DIR)


# ------------------------------------------------------------------------------------------
# The command check's dry run, in train and eval mode


class AuxInTraining(torch.nn.Module):
    """Logits alone in eval mode, (logits, aux) in train mode: deep supervision of its own."""

    def __init__(self, in_channels: int, classes: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, classes, 1)

    def forward(self, x):
        logits = self.conv(x)
        return (logits, logits.mean()) if self.training else logits


class PooledNorm(torch.nn.Module):
    """A BatchNorm over globally pooled features: needs two samples per batch in training."""

    def __init__(self, in_channels: int, classes: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, classes, 1)
        self.norm = torch.nn.BatchNorm2d(classes)

    def forward(self, x):
        logits = self.conv(x)
        return logits + self.norm(logits.mean((2, 3), keepdim=True))


def test_a_model_returning_a_tuple_in_train_mode_is_one_line_before_anything_runs():
    with pytest.raises(ConfigError) as caught:
        compose_command(["train", *CUSTOM, f"model._target_={MODULE}.AuxInTraining",
                         "~model.kwargs.width"], CONFIG_DIR)
    assert str(caught.value) == (
        f"model._target_={MODULE}.AuxInTraining returned a tuple in train mode for a "
        f"[2, 8, 64, 96] input; event_seg needs the logits tensor [2, 2, 64, 96] ([batch, "
        f"classes, height, width], before softmax) in train and eval mode, and trains no "
        f"auxiliary output: return the logits alone (see docs/custom_model_and_dataset.md)")


def test_a_model_that_fails_in_train_mode_names_the_batch_size():
    overrides = ["train", *CUSTOM, f"model._target_={MODULE}.PooledNorm", "~model.kwargs.width"]
    compose_command([*overrides, "trainer.batch_size=2"], CONFIG_DIR)  # two samples: fine
    with pytest.raises(ConfigError) as caught:
        compose_command([*overrides, "trainer.batch_size=1"], CONFIG_DIR)
    message = str(caught.value)
    assert message.startswith(f"model._target_={MODULE}.PooledNorm failed on a [1, 8, 64, 96] "
                              f"input in train mode (model.kwargs={{}}): ValueError: Expected "
                              f"more than 1 value per channel")
    assert message.endswith("(trainer.batch_size=1; 2 or more may work)") and "\n" not in message


def test_precomputed_stays_valid_for_a_reader_of_your_own():
    # A reader of your own may return stored `dense` tensors (checked per sample at run time).
    validate(composed(*CUSTOM, "dataset.representation=precomputed", "dataset.event_channels=5"))
