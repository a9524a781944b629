"""A loss that stops being finite: a clear stop that keeps the good checkpoint, or skipped batches."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def run_cli(*overrides, out, cache):
    return subprocess.run(
        [sys.executable, "-m", "event_seg.train", "debug=smoke", "logger=none",
         "trial_timestamp=nan", f"paths.output_root={out}", *overrides],
        cwd=REPO, env={**os.environ, "EVENT_SEG_CACHE": str(cache)}, capture_output=True,
        text=True, timeout=600)


def test_nan_loss_stops_naming_epoch_and_batch(tmp_path, cache):
    proc = run_cli("optimizer.lr=1e30", "trainer.grad_clip_norm=null", out=tmp_path, cache=cache)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "at epoch 1, batch 1" in output or "after epoch 1" in output, output
    assert "Traceback" not in output
    assert not (tmp_path / "unet_nan" / "checkpoints" / "last.pt").exists()
    if "at epoch 1, batch 1" in output:  # stopped before any epoch was saved
        assert "no checkpoint was written yet" in output and "keeps" not in output


def make_trainer(tmp_path, cache, *overrides):
    from hydra import compose, initialize_config_dir

    import event_seg.config  # noqa: F401  (schemas)
    from event_seg.data import build_data
    from event_seg.engine.trainer import Trainer
    from event_seg.engine.trial import Trial
    from event_seg.loggers.base import LoggerGroup
    from event_seg.models import build_model

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["debug=smoke", f"paths.cache_dir={cache}",
                                          "trial_timestamp=inproc", f"paths.output_root={tmp_path}",
                                          *overrides])
    data = build_data(cfg.dataset, cfg.trainer, str(cache))
    trainer = Trainer(cfg, build_model(cfg.model, data.info), data, LoggerGroup([]),
                      Trial.from_config(cfg))
    trainer.resume_if_possible()
    return trainer


def nan_on_calls(trainer, bad_calls):
    real, calls = trainer.criterion, []

    def criterion(logits, target):
        calls.append(1)
        loss = real(logits, target)
        return loss * float("nan") if len(calls) in bad_calls else loss

    trainer.criterion = criterion


def test_nan_in_a_later_epoch_never_overwrites_the_good_checkpoint(tmp_path, cache):
    from event_seg.errors import NonFiniteLossError

    make_trainer(tmp_path, cache, "trainer.epochs=1").fit()
    trainer = make_trainer(tmp_path, cache, "trainer.epochs=2")
    good = trainer.trial.last_checkpoint.read_bytes()
    nan_on_calls(trainer, {2})  # the second training batch of epoch 2
    with pytest.raises(NonFiniteLossError, match="at epoch 2, batch 1"):
        trainer.fit()
    assert trainer.trial.last_checkpoint.read_bytes() == good


def test_skip_mode_skips_and_counts_nonfinite_batches(tmp_path, cache):
    trainer = make_trainer(tmp_path, cache, "trainer.nonfinite=skip", "trainer.epochs=1")
    nan_on_calls(trainer, {1})
    trainer.fit()
    assert trainer.skipped_batches == 1
    state = torch.load(trainer.trial.last_checkpoint, weights_only=True)
    assert state["epoch"] == 1


@pytest.mark.parametrize("deferred", [False, True])
def test_deferred_check_names_the_same_first_bad_batch(tmp_path, cache, deferred):
    """The GPU path (no host sync per step) is exercised on CPU: it must name the same batch
    and keep the same checkpoint as the per-step check."""
    from event_seg.errors import NonFiniteLossError

    make_trainer(tmp_path, cache, "trainer.epochs=1").fit()
    trainer = make_trainer(tmp_path, cache, "trainer.epochs=2", "trainer.limit_batches=3",
                           "trainer.log_every_n_steps=2")
    trainer.defer_nonfinite_check = deferred
    good = trainer.trial.last_checkpoint.read_bytes()
    nan_on_calls(trainer, {2, 3})  # batches 1 and 2 of epoch 2; the first one is named
    with pytest.raises(NonFiniteLossError, match="at epoch 2, batch 1"):
        trainer.fit()
    assert trainer.trial.last_checkpoint.read_bytes() == good


def blank_masks(trainer, batches):
    """The training loader's batches, with every pixel of the given ones ignored."""
    loader = list(trainer.data.loaders["train"])[:trainer.steps_per_epoch]
    for i in batches:
        loader[i] = {**loader[i], "mask": torch.full_like(loader[i]["mask"], 255)}
    trainer.data.loaders["train"] = loader


def test_a_batch_without_labelled_pixels_gives_no_loss_and_no_step(tmp_path, cache):
    trainer = make_trainer(tmp_path, cache, "trainer.epochs=1")
    blank_masks(trainer, [0])
    loss = trainer.train_one_epoch(1)
    assert math.isfinite(loss)
    assert trainer.empty_batches == 1
    assert trainer.global_step == trainer.steps_per_epoch - 1  # no optimizer step for it


@pytest.mark.parametrize("cause", ["nonfinite", "unlabelled"])
def test_an_epoch_whose_batches_were_all_skipped_stops_with_a_message(tmp_path, cache, cause):
    from event_seg.errors import NonFiniteLossError

    trainer = make_trainer(tmp_path, cache, "trainer.nonfinite=skip", "trainer.epochs=1")
    if cause == "nonfinite":
        nan_on_calls(trainer, set(range(1, 10)))
    else:
        blank_masks(trainer, range(trainer.steps_per_epoch))
    with pytest.raises(NonFiniteLossError, match="no batch of epoch 1 was trained") as err:
        trainer.fit()  # not a train_loss of 0.0000
    assert "no checkpoint was written yet" in str(err.value)
    assert not trainer.trial.last_checkpoint.exists()
