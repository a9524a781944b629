"""A run SIGKILLed anywhere and restarted with its trial timestamp ends bit-identical to the same
run never interrupted: same final weights, same metrics (issue 5's acceptance)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# Three epochs of three batches, two persistent workers and every augmentation on: the places
# where state could leak from one epoch into the next. Gradients accumulate over two batches
# (a partial last group each epoch) and an EMA of the weights is kept: both resume exactly too.
RUN = ["debug=smoke", "trainer.epochs=3", "trainer.limit_batches=3", "trainer.num_workers=2",
       "augment=strong", "logger=tensorboard", "trainer.inference.enabled=false",
       "trainer.accumulate_grad_batches=2", "trainer.ema.decay=0.9"]


def train(out: Path, cache: Path, timestamp: str, crash_at: str = ""):
    env = {**os.environ, "EVENT_SEG_CACHE": str(cache), "EVENT_SEG_CRASH_AT": crash_at}
    cmd = [sys.executable, "-m", "event_seg.train", *RUN, f"paths.output_root={out}",
           f"trial_timestamp={timestamp}"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def final_state(run_dir: Path):
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop("epoch_times_s")  # wall time is the one thing allowed to differ
    return last, best, metrics


def test_sigkilled_three_times_then_resumed_is_bit_identical(tmp_path, cache):
    straight = train(tmp_path / "straight", cache, "straight")
    assert straight.returncode == 0, straight.stdout + straight.stderr
    ref_last, ref_best, ref_metrics = final_state(tmp_path / "straight" / "unet_straight")

    # One run, killed three times, each restart resuming the previous one's checkpoint.
    out, checkpoints = tmp_path / "k", tmp_path / "k" / "unet_k" / "checkpoints"
    for crash_at, saved_epoch in (("train:2:1", 1),  # mid-epoch: epoch 2 is redone
                                  ("val:2:0", 1),    # during validation, after training steps
                                  ("save:3", 2)):    # writing epoch 3: last.pt stays epoch 2
        killed = train(out, cache, "k", crash_at=crash_at)
        assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
        assert torch.load(checkpoints / "last.pt", weights_only=True)["epoch"] == saved_epoch
    assert list(checkpoints.glob(".last.pt.*.tmp")), "the kill should leave a temp file behind"

    resumed = train(out, cache, "k")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resumed from" in resumed.stdout + resumed.stderr
    assert not list(checkpoints.glob(".*.tmp"))

    last, best, metrics = final_state(out / "unet_k")
    assert metrics == ref_metrics
    for name, ref in ref_last["model"].items():
        assert torch.equal(last["model"][name], ref), name
    for name, ref in ref_last["ema_model"].items():
        assert torch.equal(last["ema_model"][name], ref), name
    assert last["ema"] == ref_last["ema"]
    assert last["epoch"] == 3 and last["global_step"] == ref_last["global_step"]
    assert best["epoch"] == ref_best["epoch"]
    for name, ref in ref_best["model"].items():
        assert torch.equal(best["model"][name], ref), name
