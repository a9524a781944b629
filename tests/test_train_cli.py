"""End to end: the real CLI in a subprocess with Hydra overrides, read back from disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parents[1]
EPOCH_SCALARS = ("train_loss", "val_loss", "val_mean_iou", "learning_rate")


def run_cli(*overrides, out: Path, cache: Path, timeout=600):
    env = {**os.environ, "EVENT_SEG_CACHE": str(cache), "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, "-m", "event_seg.train", "debug=smoke",
           f"paths.output_root={out}", *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def scalars(tb_dir: Path) -> dict:
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("outputs")
    proc = run_cli("trial_timestamp=t1", "model=fpn", "optimizer=sgd", "scheduler=cosine",
                   "trainer.epochs=2", out=out, cache=cache)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / "fpn_t1", proc


def test_run_folder_holds_config_log_checkpoints_and_tensorboard(smoke_run):
    run_dir, _ = smoke_run
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    assert (run_dir / "train.log").is_file()
    config = (run_dir / "config.yaml").read_text()
    assert "${" not in config, "the saved config must be resolved"
    assert "arch: FPN" in config
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["best_val_mean_iou"] <= 1.0
    assert "test_mean_iou" in metrics


def test_tensorboard_has_epoch_scalars(smoke_run):
    run_dir, _ = smoke_run
    found = scalars(run_dir / "tensorboard")
    for tag in EPOCH_SCALARS:
        assert [step for step, _ in found[tag]] == [1, 2], tag
    assert all(0.0 <= v <= 1.0 for _, v in found["val_mean_iou"])
    assert all(v > 0 for _, v in found["train_loss"])


def test_checkpoint_holds_everything_to_resume(smoke_run):
    run_dir, _ = smoke_run
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "global_step",
                "best_metric", "rng", "config"):
        assert key in state, key
    assert state["epoch"] == 2
    assert state["config"]["model"]["arch"] == "FPN"


def test_a_finished_trial_is_skipped_or_refused_never_retrained(smoke_run, cache):
    run_dir, _ = smoke_run
    same = ("trial_timestamp=t1", "model=fpn", "optimizer=sgd", "scheduler=cosine")
    before = (run_dir / "metrics.json").read_bytes()
    proc = run_cli(*same, "trainer.epochs=2", out=run_dir.parent, cache=cache)
    assert proc.returncode == 0 and "already finished 2 epochs" in proc.stdout + proc.stderr
    proc = run_cli(*same, "trainer.epochs=3", out=run_dir.parent, cache=cache)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and len(output.strip().splitlines()) == 1, output
    assert "start a new trial (a fresh folder): python -m event_seg.train" in output
    assert (run_dir / "metrics.json").read_bytes() == before
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2


def test_model_input_channels_follow_modality(tmp_path, cache):
    proc = run_cli("dataset.modality=events", "dataset.representation=histogram",
                   "trainer.epochs=1", "logger=none", "trial_timestamp=m", out=tmp_path,
                   cache=cache)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = torch.load(tmp_path / "unet_m" / "checkpoints" / "last.pt", weights_only=True)
    assert state["model"]["encoder.conv1.weight"].shape[1] == 2  # a 2-channel histogram
    assert not (tmp_path / "unet_m" / "tensorboard").exists()  # logger=none


@pytest.mark.parametrize("modality,representation,channels", [
    ("rgb", "voxel_grid", 3),
    ("events", "histogram", 2),
    ("events", "voxel_grid", 4),
    ("rgb+events", "voxel_grid", 3 + 4),
])
def test_input_channels_of_each_modality_and_representation(modality, representation, channels):
    from omegaconf import OmegaConf

    from event_seg.data.build import event_channels, input_channels

    dataset = OmegaConf.create({"representation": representation, "num_bins": 4})
    assert input_channels(modality, event_channels(dataset)) == channels


@pytest.mark.parametrize("overrides,expected", [
    ("trainer.epoch=3", "unknown config key: trainer.epoch (did you mean trainer.epochs?)"),
    ("+trainer.epoch=3", "unknown config key: trainer.epoch (did you mean trainer.epochs?)"),
    ("+foo=1", "unknown config key: foo"),
    ("trainer.epochs=ten", "trainer.epochs: Value 'ten'"),
    ("model=nope", "model=nope is not an option of model; choose one of: deeplabv3plus, fpn, unet"),
    ("dataset.modality=depth", "dataset.modality"),
    ("dataset.height=0", "dataset.height=0 must be positive"),
    ("scheduler.min_lr_ratio=-0.5", "scheduler.min_lr_ratio=-0.5 must be between 0 and 1"),
    ("scheduler.power=-0.9", "scheduler.power=-0.9 must be positive"),
    ("trainer.device=cpu trainer.precision=bf16", "trainer.precision=bf16 needs a CUDA device"),
    ("model=deeplabv3plus trainer.batch_size=1", "needs trainer.batch_size >= 2"),
    ("+model.foo=1", "unknown config key: model.foo"),
    ("-m trainer.epochs=1,ten", "trainer.epochs: Value 'ten'"),
    ("-m model=unet,nope", "model=nope is not an option of model"),
    ("--bogus", "unrecognized arguments: --bogus"),
    ("+logger.tensorboard.bogus=1", "unknown config key: logger.tensorboard.bogus"),
    ("~model", "no model is chosen"),
    ("model=", "model=(nothing) is not an option of model"),
    ("hydra/launcher=nope", "hydra/launcher=nope is not an option of hydra/launcher"),
    ("trainer.epochs=${oops}", "trainer.epochs: Interpolation key 'oops' not found"),
    ("hydra.run.dir=", "hydra.run.dir / hydra.sweep.dir is empty"),
    # Hydra's printing flags get the same check as a run, not Hydra's 8-line error.
    ("--cfg job trainer.epoch=3", "unknown config key: trainer.epoch (did you mean trainer.epochs?)"),
    ("--info defaults model=nope", "model=nope is not an option of model"),
    ("--resolve --cfg job trainer.epochs=ten", "trainer.epochs: Value 'ten'"),
    ("--cfg job -m model=unet,fpn", "--cfg and --multirun cannot be combined"),
])
def test_bad_input_gives_one_line_before_any_folder_or_data(tmp_path, cache, overrides, expected):
    """Checked before Hydra makes the run folder: one line, exit 2, nothing written."""
    out = tmp_path / "out"
    proc = run_cli(*overrides.split(), out=out, cache=tmp_path / "no-cache")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert expected in output.strip().splitlines()[-1] and "Traceback" not in output, output
    if overrides != "--bogus":  # argparse's own usage lines come first there
        assert output.strip().splitlines() == [f"error: {output.strip()[7:]}"], output
    # No run or sweep folder (a `multirun/` parent at most) and no data built.
    assert [p.name for p in out.rglob("*")] in ([], ["multirun"]), list(out.rglob("*"))
    assert not (tmp_path / "no-cache").exists()


def test_a_missing_dataset_folder_is_one_line(tmp_path, cache):
    proc = run_cli("dataset.root=/no/such/folder", out=tmp_path, cache=cache)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "/no/such/folder" in output and "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output
