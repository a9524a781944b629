"""event-seg-export: the written model takes the model input with any batch size and returns what
PyTorch returns; the EMA weights are the ones exported when the checkpoint holds them; the
documented numpy input equals the one training builds; a bad checkpoint is one line."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # the bound the command states: max|diff| <= 1e-4 * max(1, max|PyTorch|)


def within_tolerance(got, ref) -> bool:
    return float(np.abs(got - ref).max()) <= TOLERANCE * max(1.0, float(np.abs(ref).max()))


def smoke_config(*overrides):
    from hydra import compose, initialize_config_dir

    from event_seg.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["debug=smoke", "logger=none", "trial_timestamp=ex",
                                           *overrides])


def dataset_info(cfg, time_unit=None):
    """The DatasetInfo build_data derives from this config, without reading the dataset."""
    from event_seg.data.build import DatasetInfo, event_channels, input_channels

    d = cfg.dataset
    events = event_channels(d)
    return DatasetInfo(name=d.name, class_names=list(d.class_names),
                       palette=[list(c) for c in d.palette], ignore_index=d.ignore_index,
                       split_sizes={}, representation=d.representation, num_bins=d.num_bins,
                       modality=d.modality, event_channels=events,
                       input_channels=input_channels(d.modality, events), root="",
                       time_unit=time_unit, time_surface_tau_ms=d.time_surface.tau_ms)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder holding checkpoints/best.pt with the entries event-seg-train writes and the
    export reads (model, config, dataset_info, epoch), for the debug=smoke config, without
    training: training one takes ~30 s here and untrained weights test an export just as well.
    BatchNorm statistics are drawn at random, so eval mode is not the identity it is at init."""
    from omegaconf import OmegaConf

    from event_seg.engine.checkpoint import save_checkpoint
    from event_seg.models import build_model

    cfg = smoke_config()
    info = dataset_info(cfg)
    torch.manual_seed(0)
    model = build_model(cfg.model, info)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    folder = tmp_path_factory.mktemp("outputs") / "unet_ex"
    save_checkpoint({"model": model.state_dict(), "epoch": 2,
                     "config": OmegaConf.to_container(cfg, resolve=True),
                     "dataset_info": info.as_dict()}, folder / "checkpoints" / "best.pt")
    return folder, model.eval(), info


def export_cli(*args, wait: bool = True):
    script = Path(sys.executable).parent / "event-seg-export"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "event_seg.export"]
    # From another folder: the checkpoint must be enough, not the working directory.
    proc = subprocess.Popen([*command, *args], cwd="/", stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    return finish(proc) if wait else proc


def finish(proc):
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def exports(run, tmp_path_factory):
    """Both formats, exported side by side (each process spends most of its time importing):
    ONNX from the run folder with the defaults; TorchScript from a copy of the checkpoint that
    also holds EMA weights (perturbed, so they differ from the model's), at another size."""
    from event_seg.engine.checkpoint import load_checkpoint, save_checkpoint

    folder = run[0]
    state = load_checkpoint(folder / "checkpoints" / "best.pt")
    generator = torch.Generator().manual_seed(3)
    ema = {k: v + 0.05 * torch.randn(v.shape, generator=generator) if k.endswith("weight")
           else v for k, v in state["model"].items()}
    ema_dir = tmp_path_factory.mktemp("ema")
    save_checkpoint({**state, "ema_model": ema}, ema_dir / "best.pt")
    onnx = export_cli(f"checkpoint={folder}", wait=False)  # the run folder: checkpoints/best.pt
    script = export_cli(f"checkpoint={ema_dir / 'best.pt'}", "format=torchscript",
                        f"out={ema_dir / 'm.pt'}", "height=64", "width=96", wait=False)
    onnx, script = finish(onnx), finish(script)
    assert onnx.returncode == 0, onnx.stdout + onnx.stderr
    assert script.returncode == 0, script.stdout + script.stderr
    return {"onnx": (folder / "export" / "model.onnx", onnx),
            "torchscript": (ema_dir / "m.pt", script), "ema": ema}


def test_onnx_export_matches_pytorch_at_another_batch_size(run, exports):
    import onnxruntime as ort

    _, model, info = run
    path, proc = exports["onnx"]
    assert path.is_file() and (path.parent / "model.onnx.json").is_file()
    assert not list(path.parent.glob(".*.tmp"))
    out = proc.stdout
    assert f"wrote   {path} (" in out and "model weights" in out and "EMA" not in out
    assert f"input   input float32 [batch, {info.input_channels}, 32, 64]" in out
    assert f"output  logits float32 [batch, {info.num_classes}, 32, 64]" in out
    assert "max|diff| <= 0.0001 * max(1, max|PyTorch|): batch 1 " in out and "batch 3 " in out
    assert "channel 3: voxel_grid bin 0" in out

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (given,) = session.get_inputs()
    assert given.name == "input" and isinstance(given.shape[0], str)  # a symbolic batch
    assert given.shape[1:] == [info.input_channels, 32, 64]
    x = torch.randn(2, info.input_channels, 32, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x).numpy()
    got = session.run(None, {"input": x.numpy()})[0]
    assert got.shape == ref.shape == (2, info.num_classes, 32, 64)
    assert within_tolerance(got, ref)

    record = json.loads((path.parent / "model.onnx.json").read_text())
    assert record["weights"] == "model" and record["epoch"] == 2
    assert [r["batch"] for r in record["check"]["results"]] == [1, 3]
    assert all(r["max_abs_diff"] <= r["bound"] for r in record["check"]["results"])


def test_documented_input_equals_the_training_input(run, exports):
    """The input spec the export wrote, through model_input (numpy, the README's recipe), against
    ModelInputBuilder (torch, what the model saw in training) on the same frame and events."""
    spec = json.loads((exports["onnx"][0].parent / "model.onnx.json").read_text())["input"]
    assert spec["normalize_events"] is True and spec["representation"] == "voxel_grid"
    assert_recipe_equals_training(spec, run[2])


@pytest.mark.parametrize("overrides", [
    ["dataset.representation=histogram"],
    ["dataset.representation=time_surface", "dataset.modality=events"],
    ["dataset.representation=mdes", "dataset.normalize_events=false"],
    ["dataset.modality=rgb"],
])
def test_documented_input_for_other_inputs(overrides):
    from event_seg.data.model_input import input_spec

    cfg = smoke_config(*overrides)
    info = dataset_info(cfg, time_unit="ns")
    spec = input_spec(cfg, info, 32, 64)
    assert len(spec["channels"]) == spec["shape"][1] == info.input_channels
    assert_recipe_equals_training(spec, info)


def assert_recipe_equals_training(spec, info):
    from event_seg.data.collate import collate_compact
    from event_seg.data.device_input import ModelInputBuilder
    from event_seg.data.events import compact_events
    from event_seg.data.model_input import model_input
    from event_seg.data.sample import make_sample

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
    n = 3000
    events = {"x": rng.integers(0, 64, n), "y": rng.integers(0, 32, n),  # t: a 0.1 s window
              "t": np.sort(rng.integers(0, 10 ** 8, n)), "p": rng.integers(0, 2, n)}
    sample = make_sample(rgb, np.zeros((32, 64), np.uint8), "s",
                         events=compact_events(events["x"], events["y"], events["t"],
                                               events["p"], 32, 64, "test"))
    builder = ModelInputBuilder(info, "cpu", normalize_events=spec["normalize_events"])
    built = builder(collate_compact([sample])).inputs[0].numpy()
    documented = model_input(spec, rgb, events)
    assert documented.shape == built.shape == (info.input_channels, 32, 64)
    assert np.abs(documented - built).max() <= 1e-5
    first_event_channel = 0 if info.modality == "events" else 3
    if info.modality != "rgb":  # the events made it into the input
        assert np.abs(documented[first_event_channel:]).max() > 0.1


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_export_takes_the_ema_weights(run, exports):
    _, model, info = run
    path, proc = exports["torchscript"]
    assert "EMA weights" in proc.stdout and "torch.jit.load vs PyTorch" in proc.stdout
    assert json.loads(path.with_name("m.pt.json").read_text())["weights"] == "ema_model"

    loaded = torch.jit.load(str(path))
    averaged = copy.deepcopy(model)
    averaged.load_state_dict(exports["ema"])
    x = torch.randn(2, info.input_channels, 64, 96, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        got, ref, plain = loaded(x).numpy(), averaged.eval()(x).numpy(), model(x).numpy()
    assert got.shape == (2, info.num_classes, 64, 96)
    assert within_tolerance(got, ref)
    assert not within_tolerance(got, plain)  # the EMA weights, not the trained ones


@pytest.mark.parametrize("make, args, message", [
    (None, ["checkpoint=/no/such/best.pt"], "checkpoint not found: /no/such/best.pt"),
    ("truncated", [], "the file is corrupt or truncated"),
    ("text", [], "is not a PyTorch checkpoint"),
    ("tensor", [], "is not an event_seg checkpoint"),
    ("folder", [], "is a folder without checkpoints/best.pt or last.pt"),
    ("run", ["format=tflite"], "format=tflite is not one of: onnx, torchscript"),
    ("run", ["fromat=onnx"], "unknown argument fromat=: did you mean format=?"),
    ("run", ["format=torchscript", "opset=17"], "opset= applies to format=onnx only"),
    ("run", ["height=100"], "height=100 must be a positive multiple of 32"),
])
def test_bad_arguments_are_one_line_errors(run, tmp_path, capsys, make, args, message):
    from event_seg.export import main

    best = run[0] / "checkpoints" / "best.pt"
    path = {"truncated": tmp_path / "best.pt", "text": tmp_path / "notes.pt",
            "tensor": tmp_path / "weights.pt", "folder": tmp_path, "run": run[0]}.get(make)
    if make == "truncated":
        path.write_bytes(best.read_bytes()[:100_000])
    elif make == "text":
        path.write_text("not a checkpoint\n")
    elif make == "tensor":
        torch.save({"weights": torch.zeros(3)}, path)
    code = main(([f"checkpoint={path}"] if path else []) + args)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2 and captured.out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "export").exists()


def test_onnx_without_onnxruntime_says_what_to_install(run, tmp_path, capsys, monkeypatch):
    from event_seg.export import main

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an absent package looks like
    assert main([f"checkpoint={run[0]}", f"out={tmp_path / 'm.onnx'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: format=onnx needs onnxruntime: pip install 'event_seg[export]'")
    assert len(err.splitlines()) == 1 and not list(tmp_path.iterdir())


def test_missing_checkpoint_exits_non_zero_from_the_console_script():
    proc = export_cli("checkpoint=/no/such/run/best.pt")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "error: checkpoint not found: /no/such/run/best.pt"


def test_help_prints_usage(capsys):
    from event_seg.export import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: event-seg-export checkpoint=<path>") and "opset" in out
