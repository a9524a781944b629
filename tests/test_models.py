"""Pretrained encoders for any input channel count (``model.encoder_weights``): the file's RGB
filters land in the RGB channels unchanged, event channels get the scaled mean filter, every
other tensor is the file's, and a file that is not this encoder's weights is one line naming it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from event_seg.data.build import DatasetInfo
from event_seg.errors import ConfigError
from event_seg.models import build_model

REPO = Path(__file__).resolve().parents[1]
EVENTS = 5  # a 5-bin voxel grid: rgb+events has 8 input channels, events 5
# The first convolution of three encoder families smp builds offline.
STEMS = {"resnet18": "conv1.weight", "mobilenet_v2": "features.0.0.weight",
         "efficientnet-b0": "_conv_stem.weight"}


def info(modality: str = "rgb+events") -> DatasetInfo:
    channels = {"rgb": 3, "events": EVENTS, "rgb+events": 3 + EVENTS}[modality]
    return DatasetInfo(name="t", class_names=["a", "b", "c"], palette=[[0, 0, 0]] * 3,
                       ignore_index=255, split_sizes={}, representation="voxel_grid",
                       num_bins=EVENTS, modality=modality, event_channels=EVENTS,
                       input_channels=channels, root="")


def model_cfg(weights, encoder: str = "resnet18", arch: str = "Unet"):
    return OmegaConf.create({"name": "m", "arch": arch, "encoder_name": encoder,
                             "encoder_weights": None if weights is None else str(weights),
                             "_target_": None, "kwargs": {}})


def encoder_file(folder: Path, encoder: str = "resnet18", seed: int = 0):
    """A state dict saved from smp's own encoder, as a new user would save one."""
    torch.manual_seed(seed)
    state = smp.Unet(encoder, encoder_weights=None).encoder.state_dict()
    path = folder / f"{encoder}.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    return encoder_file(tmp_path_factory.mktemp("weights"))


def loaded_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Loaded ")]


@pytest.mark.parametrize("encoder", list(STEMS))
def test_rgb_events_keeps_the_rgb_filters_and_gives_events_the_scaled_mean(encoder, tmp_path,
                                                                           caplog):
    path, state = encoder_file(tmp_path, encoder)
    stem = STEMS[encoder]
    with caplog.at_level(logging.INFO, logger="event_seg.pretrained"):
        model = build_model(model_cfg(path, encoder), info("rgb+events"))
    loaded = model.encoder.state_dict()
    weight, rgb = loaded[stem], state[stem]
    assert weight.shape[1] == 3 + EVENTS
    assert torch.equal(weight[:, :3], rgb)  # the file's RGB filters, bit for bit
    for c in range(3, 3 + EVENTS):
        torch.testing.assert_close(weight[:, c], rgb.mean(dim=1) * 3 / EVENTS)
    for key, value in state.items():  # every other tensor is the file's
        if key != stem:
            assert torch.equal(loaded[key], value), key
    assert loaded_lines(caplog) == [
        f"Loaded {len(state)} encoder tensors "
        f"from {path}; {stem} adapted from 3 to 8 input channels (RGB filters kept for "
        f"channels 0-2; the 5 event channels are the mean RGB filter x 3/5)"]


def test_events_only_respond_to_a_full_window_as_rgb_filters_to_a_gray_image(resnet18, caplog):
    path, state = resnet18
    with caplog.at_level(logging.INFO, logger="event_seg.pretrained"):
        model = build_model(model_cfg(path), info("events"))
    weight = model.encoder.conv1.weight.detach()
    assert weight.shape[1] == EVENTS
    for c in range(EVENTS):
        torch.testing.assert_close(weight[:, c], state["conv1.weight"].mean(dim=1) * 3 / EVENTS)
    # The scale's point: the same value in every bin gets the pretrained layer's response to
    # a gray image (the scale its BatchNorm statistics were measured at), not 5/3 of it.
    window = torch.ones(1, EVENTS, 16, 16)
    gray = torch.ones(1, 3, 16, 16)
    torch.testing.assert_close(F.conv2d(window, weight, padding=3),
                               F.conv2d(gray, state["conv1.weight"], padding=3))
    assert "the 5 event channels are the mean RGB filter x 3/5)" in loaded_lines(caplog)[0]
    assert "RGB filters kept" not in loaded_lines(caplog)[0]


def test_rgb_loads_the_file_as_it_is(resnet18, caplog):
    path, state = resnet18
    with caplog.at_level(logging.INFO, logger="event_seg.pretrained"):
        model = build_model(model_cfg(path), info("rgb"))
    loaded = model.encoder.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert "adapted" not in loaded_lines(caplog)[0]


def test_classifier_heads_whole_models_and_event_seg_checkpoints_load_their_encoder(
        resnet18, tmp_path, caplog):
    from event_seg.engine.checkpoint import save_checkpoint

    path, state = resnet18
    # torchvision's resnet18 file: the encoder's tensors plus the ImageNet classifier.
    torchvision_like = {**state, "fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}
    torch.save(torchvision_like, tmp_path / "torchvision.pth")
    # A whole smp model, and an event_seg checkpoint of an RGB run holding one.
    whole = smp.Unet("resnet18", encoder_weights=None, classes=3)
    whole.encoder.load_state_dict(state)
    torch.save(whole.state_dict(), tmp_path / "whole.pth")
    save_checkpoint({"model": whole.state_dict(), "epoch": 4,
                     "config": {"dataset": {"modality": "rgb"}, "model": {"arch": "Unet"}}},
                    tmp_path / "best.pt")
    with caplog.at_level(logging.INFO, logger="event_seg.pretrained"):
        for name in ("torchvision.pth", "whole.pth", "best.pt"):
            model = build_model(model_cfg(tmp_path / name), info("rgb+events"))
            loaded = model.encoder.state_dict()
            assert torch.equal(loaded["conv1.weight"][:, :3], state["conv1.weight"]), name
            assert torch.equal(loaded["layer4.1.bn2.running_var"],
                               state["layer4.1.bn2.running_var"]), name
    lines = loaded_lines(caplog)
    assert lines[0].endswith("; ignored 2 tensors the encoder has no place for (fc.weight, "
                             "fc.bias: a classifier head)")
    assert lines[1].endswith("; took the encoder.* part of a whole model (62 other tensors, its "
                             "decoder and head, not loaded)")
    assert "took the encoder.* part of an event_seg checkpoint" in lines[2]


def _bad_files(folder: Path, resnet18_path: Path):
    """(file, encoder, what the one line must say) for files that are not the weights asked for."""
    torch.save(encoder_file(folder, "resnet34")[1], folder / "r34.pth")
    torch.save({"weight": torch.randn(4, 4), "bias": torch.randn(4)}, folder / "random.pth")
    torch.save([torch.randn(3)], folder / "list.pth")
    torch.save({"args": argparse.Namespace(lr=0.1)}, folder / "objects.pth")
    data = resnet18_path.read_bytes()
    (folder / "truncated.pth").write_bytes(data[: len(data) // 2])
    (folder / "notes.pth").write_text("not weights")
    events_run = smp.Unet("resnet18", encoder_weights=None, in_channels=3 + 3, classes=3)
    torch.save({"model": events_run.state_dict(),
                "config": {"dataset": {"modality": "rgb+events"}}}, folder / "events_run.pt")
    return [
        ("r34.pth", "resnet18", "holds 96 tensors a resnet18 encoder does not have "
                                "(layer1.2.conv1.weight, "),
        (resnet18_path, "resnet34", "lacks 80 of the 180 tensors of a resnet34 encoder "
                                    "(layer1.2.conv1.weight, "),
        ("random.pth", "resnet18", "holds no keys of a resnet18 encoder (the file's keys: "
                                   "weight, bias)"),
        (resnet18_path, "mobilenet_v2", "holds no keys of a mobilenet_v2 encoder"),
        ("list.pth", "resnet18", "holds a list, not a state dict"),
        ("objects.pth", "resnet18", "holds Python objects (argparse.Namespace), not only tensors"),
        ("truncated.pth", "resnet18", "cannot read it with torch.load (RuntimeError: "
                                      "PytorchStreamReader failed reading zip archive: failed "
                                      "finding central directory): not a PyTorch weights file, "
                                      "or corrupt or truncated"),
        ("notes.pth", "resnet18", "not a PyTorch weights file, or corrupt or truncated"),
        ("events_run.pt", "resnet18", "an event_seg checkpoint trained on rgb+events (6 input "
                                      "channels); this model takes rgb+events (8)"),
        ("missing.pth", "resnet18", "no such file"),
    ]


def test_a_file_that_is_not_this_encoders_weights_is_one_line_naming_it(resnet18, tmp_path):
    for name, encoder, expected in _bad_files(tmp_path, resnet18[0]):
        path = tmp_path / name
        with pytest.raises(ConfigError) as caught:
            build_model(model_cfg(path, encoder), info("rgb+events"))
        message = str(caught.value)
        assert message.startswith(f"model.encoder_weights={path}: "), message
        assert expected in message and "\n" not in message, message


def _hub_snapshot(cache: Path, state) -> Path:
    """Fills a Hugging Face cache as ``hf download`` (or smp's first download) leaves it: the
    snapshot of smp's pinned revision of ``smp-hub/resnet18.imagenet``."""
    from safetensors.torch import save_file
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders["resnet18"]["pretrained_settings"]["imagenet"]
    snapshot = (cache / f"models--{settings['repo_id'].replace('/', '--')}" / "snapshots"
                / settings["revision"])
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text(json.dumps({"mean": [0.485, 0.456, 0.406],
                                                      "std": [0.229, 0.224, 0.225]}))
    return snapshot


def test_imagenet_from_a_filled_cache_offline_is_adapted_like_a_file(resnet18, tmp_path):
    """What the docs say to do on a machine without network, in a fresh interpreter."""
    path, state = resnet18
    _hub_snapshot(tmp_path / "hub", state)
    script = (
        "import json, sys, torch\n"
        "from omegaconf import OmegaConf\n"
        "from event_seg.data.build import DatasetInfo\n"
        "from event_seg.models import build_model\n"
        "info = DatasetInfo('t', ['a', 'b'], [[0, 0, 0]] * 2, 255, {}, 'voxel_grid', 5,\n"
        "                   'rgb+events', 5, 8, '')\n"
        "cfg = OmegaConf.create({'name': 'm', 'arch': 'Unet', 'encoder_name': 'resnet18',\n"
        "    'encoder_weights': 'imagenet', '_target_': None, 'kwargs': {}})\n"
        "torch.save(build_model(cfg, info).encoder.state_dict(), sys.argv[1])\n")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "loaded.pth"
    proc = subprocess.run([sys.executable, "-c", script, str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    loaded = torch.load(out, weights_only=True)
    assert torch.equal(loaded["conv1.weight"][:, :3], state["conv1.weight"])
    torch.testing.assert_close(loaded["conv1.weight"][:, 3],
                               state["conv1.weight"].mean(dim=1) * 3 / EVENTS)
    assert torch.equal(loaded["layer3.0.conv2.weight"], state["layer3.0.conv2.weight"])


def test_imagenet_without_network_or_cache_is_one_line(tmp_path, monkeypatch):
    # HF_HUB_OFFLINE=1 and HF_HUB_CACHE as the hub reads them after import (its constants).
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ConfigError) as caught:
        build_model(model_cfg("imagenet"), info("rgb+events"))
    assert str(caught.value) == (
        f"model.encoder_weights=imagenet: cannot fetch smp-hub/resnet18.imagenet (revision "
        f"3f2325ff97) from the Hugging Face Hub: HF_HUB_OFFLINE=1 is set and it is not in the "
        f"cache {tmp_path / 'empty'}; fill that cache on a machine with network (docs/"
        f"custom_model_and_dataset.md, 'Pretrained encoders offline') or pass a file: "
        f"model.encoder_weights=/path/encoder.pth")


def test_an_unknown_weights_name_is_one_line():
    with pytest.raises(ConfigError) as caught:
        build_model(model_cfg("imagenet22k"), info("rgb"))
    message = str(caught.value)
    assert message.startswith("model.encoder_weights=imagenet22k with model.encoder_name="
                              "resnet18: Wrong pretrained weights `imagenet22k` for encoder "
                              "`resnet18`. Available options are: ['imagenet', 'ssl', 'swsl']")
    assert "\n" not in message


# ------------------------------------------------------------------------------------------
# The command check: the encoder name, and a dry forward pass at the configured size


def train_cli(*overrides, out: Path, cache: Path):
    env = {**os.environ, "EVENT_SEG_CACHE": str(cache), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "event_seg.train", "debug=smoke", "logger=none",
                           f"paths.output_root={out}", *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def refused_line(proc, out: Path, cache: Path) -> str:
    """The one line a refused command prints, after checking that it left nothing behind."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert not out.exists(), "a refused command left a run folder"
    assert not cache.exists(), "a refused command built data"
    return lines[0][len("error: "):]


def test_an_unknown_encoder_is_one_line_with_a_suggestion_before_any_data(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    line = refused_line(train_cli("model.encoder_name=resnet19", out=out, cache=cache), out,
                        cache)
    assert line.startswith("model.encoder_name=resnet19 is not an encoder of "
                           "segmentation_models_pytorch (did you mean resnet18?)")
    # The list is cut visibly, with the count of what is left out.
    shown = line.split("choose one of: ", 1)[1]
    assert shown.startswith("resnet18, resnet34")
    left = len(smp.encoders.get_encoder_names()) - shown.split(", ...")[0].count(",") - 1
    assert f", ... and {left} more" in shown and "tu-<timm model>" in shown


def test_an_unknown_timm_encoder_names_timm():
    from event_seg.models import check_encoder_name

    with pytest.raises(ConfigError) as caught:
        check_encoder_name("tu-resnet19")
    message = str(caught.value)
    assert message.startswith("model.encoder_name=tu-resnet19: timm has no model resnet19 (did "
                              "you mean tu-resnet18?)") and "\n" not in message
    check_encoder_name("tu-resnet18.a1_in1k")  # a timm name with its pretrained tag
    check_encoder_name("resnet18")


def test_an_architecture_that_cannot_take_the_size_is_one_line_before_any_folder(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    # debug=smoke: 32 x 64, too small for PAN's pyramid attention.
    line = refused_line(train_cli("model.arch=PAN", out=out, cache=cache), out, cache)
    assert line.startswith("model.arch=PAN (model.encoder_name=resnet18) cannot run on a 32x64 "
                           "input (dataset.height x dataset.width) in train mode: RuntimeError: ")
    assert "Output size is too small" in line
    assert line.endswith("it runs at dataset.height=128 dataset.width=128")
    # And that size is one PAN really takes, in both modes.
    model = smp.create_model("PAN", encoder_name="resnet18", encoder_weights=None,
                             in_channels=3 + EVENTS, classes=9)
    with torch.no_grad():
        model.train()(torch.zeros(2, 3 + EVENTS, 128, 128))
        assert model.eval()(torch.zeros(1, 3 + EVENTS, 128, 128)).shape == (1, 9, 128, 128)


def test_a_model_with_an_extra_output_is_one_line():
    # smp's aux_params head makes every forward return (masks, labels): nothing trains on the
    # labels, and the trainer would fail on the tuple.
    from event_seg.launch import compose_command
    from event_seg.train import CONFIG_DIR

    with pytest.raises(ConfigError) as caught:
        compose_command(["train", "debug=smoke", "+model.kwargs.aux_params={classes: 9}"],
                        CONFIG_DIR)
    message = str(caught.value)
    assert message.startswith("model.arch=Unet (model.encoder_name=resnet18) returned a tuple "
                              "in train mode") and "\n" not in message


def test_the_default_model_passes_the_check():
    from event_seg.launch import compose_command
    from event_seg.train import CONFIG_DIR

    compose_command(["train"], CONFIG_DIR)
    compose_command(["train", "model=deeplabv3plus", "debug=smoke"], CONFIG_DIR)


def test_each_swept_model_value_gets_the_check():
    from event_seg.launch import compose_command
    from event_seg.train import CONFIG_DIR

    with pytest.raises(ConfigError, match=r"^model\.encoder_name=resnet19 is not an encoder"):
        compose_command(["train", "-m", "model.encoder_name=resnet18,resnet19"], CONFIG_DIR)
    with pytest.raises(ConfigError, match=r"^model\.arch=PAN .* cannot run on a 96x192 input"):
        compose_command(["train", "-m", "model.arch=Unet,PAN"], CONFIG_DIR)


def test_a_frame_size_is_judged_by_the_model_not_by_a_multiple_of_32(tmp_path):
    # smp's Unet pads its skips and takes 48 x 80; FPN needs multiples of 32 and says so.
    out, cache = tmp_path / "out", tmp_path / "cache"
    size = ("dataset.height=48", "dataset.width=80", "trainer.epochs=1", "trainer.limit_batches=1",
            "trainer.vis.num_batches=0")
    line = refused_line(train_cli(*size, "model=fpn", out=out, cache=cache), out, cache)
    assert line.startswith("model.arch=FPN (model.encoder_name=resnet18) cannot run on a 48x80 "
                           "input (dataset.height x dataset.width) in train mode: ")
    assert line.endswith("it runs at dataset.height=64 dataset.width=96"), line
    proc = train_cli(*size, out=out, cache=cache)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "epoch 1/1" in proc.stdout + proc.stderr
