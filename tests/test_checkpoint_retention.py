"""What a run keeps of its checkpoints (trainer.checkpoints.keep): the full state while it runs,
as little as asked for once it has finished, and every kept file still evaluates and exports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# The training state only a resume reads: what a weights-only file leaves out.
RESUME_ONLY = ("optimizer", "scheduler", "scaler", "rng")


def cli(module: str, *args, cache: Path, crash_at: str = ""):
    env = {**os.environ, "EVENT_SEG_CACHE": str(cache), "HYDRA_FULL_ERROR": "0",
           "EVENT_SEG_CRASH_AT": crash_at}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    return proc, proc.stdout + proc.stderr


def train(out: Path, cache: Path, *overrides, crash_at: str = ""):
    return cli("event_seg.train", "debug=smoke", "logger=none", "trainer.vis.num_batches=0",
               "trainer.inference.enabled=false", f"paths.output_root={out}", *overrides,
               cache=cache, crash_at=crash_at)


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_keep_best_leaves_one_weights_only_best_pt_that_evaluates_and_exports(tmp_path, cache):
    run_dir = tmp_path / "unet_b"
    command = ("trial_timestamp=b", "trainer.checkpoints.keep=best", "trainer.ema.decay=0.9")
    proc, output = train(tmp_path, cache, *command)
    assert proc.returncode == 0, output
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt"]
    best = load(run_dir / "checkpoints" / "best.pt")
    assert not set(RESUME_ONLY) & set(best), sorted(best)
    assert {"model", "ema_model", "config", "dataset_info", "epoch"} <= set(best)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert best["epoch"] == metrics["best_epoch"]
    assert "last.pt removed" in output  # said once, at the end

    # The EMA weights are scored and exported, as from a full checkpoint.
    proc, output = cli("event_seg.evaluate", f"checkpoint={run_dir}", "split=val",
                       "logger=none", f"output_dir={tmp_path / 'eval'}", cache=cache)
    assert proc.returncode == 0 and "Scoring the EMA" in output, output
    proc, output = cli("event_seg.export", f"checkpoint={run_dir}", "format=torchscript",
                       f"out={tmp_path / 'model.ts'}", cache=cache)
    assert proc.returncode == 0 and (tmp_path / "model.ts").is_file(), output

    # Finished: the same command skips it, more epochs are refused as for any finished run.
    proc, output = train(tmp_path, cache, *command)
    assert proc.returncode == 0 and "already finished 2 epochs" in output, output
    proc, output = train(tmp_path, cache, *command, "trainer.epochs=3")
    assert proc.returncode == 2 and "finished its 2 epochs" in output, output
    assert len(output.strip().splitlines()) == 1, output


def test_keep_weights_resumes_from_the_full_last_pt_then_slims_both(tmp_path, cache):
    run_dir = tmp_path / "unet_w"
    command = ("trial_timestamp=w", "trainer.checkpoints.keep=weights")
    proc, output = train(tmp_path, cache, *command, crash_at="train:2")  # killed in epoch 2
    assert proc.returncode != 0
    last = load(run_dir / "checkpoints" / "last.pt")
    assert last["epoch"] == 1 and set(RESUME_ONLY) <= set(last)  # a run still going: resumable
    best = load(run_dir / "checkpoints" / "best.pt")
    assert best["epoch"] == 1 and not set(RESUME_ONLY) & set(best)

    proc, output = train(tmp_path, cache, *command)
    assert proc.returncode == 0 and "Resumed from" in output, output
    for name in ("last.pt", "best.pt"):
        state = load(run_dir / "checkpoints" / name)
        assert not set(RESUME_ONLY) & set(state), (name, sorted(state))
    assert load(run_dir / "checkpoints" / "last.pt")["epoch"] == 2
    full = sum(t.numel() for t in last["model"].values())
    slim = sum(t.numel() for t in load(run_dir / "checkpoints" / "last.pt")["model"].values())
    assert slim == full  # the weights are all there

    # A slim last.pt is not resumed from: one line that says why, not a KeyError.
    (run_dir / "metrics.json").unlink()
    proc, output = train(tmp_path, cache, *command)
    assert proc.returncode == 2 and "Traceback" not in output, output
    assert "holds the weights only" in output and "trainer.checkpoints.keep" in output, output


def test_an_unknown_keep_value_is_one_line(tmp_path, cache):
    proc, output = train(tmp_path, cache, "trial_timestamp=x", "trainer.checkpoints.keep=none")
    assert proc.returncode == 2 and len(output.strip().splitlines()) == 1, output
    assert "trainer.checkpoints.keep='none' is not one of: all, weights, best" in output
    assert list(tmp_path.iterdir()) == []  # refused before any run folder exists


def temp_files(run_dir: Path):
    return sorted(p.name for p in (run_dir / "checkpoints").glob(".*.tmp"))


def test_a_kill_between_metrics_json_and_the_trim_is_trimmed_by_the_next_run(tmp_path, cache):
    """metrics.json marks the run finished, so the rerun skips it: the trim the kill cut short
    must still happen then, or the full last.pt stays for good."""
    run_dir = tmp_path / "unet_k"
    command = ("trial_timestamp=k", "trainer.checkpoints.keep=weights")
    proc, output = train(tmp_path, cache, *command, crash_at="finish:2")  # SIGKILLed there
    assert proc.returncode == -9, output
    assert (run_dir / "metrics.json").is_file()
    assert set(RESUME_ONLY) <= set(load(run_dir / "checkpoints" / "last.pt"))

    proc, output = train(tmp_path, cache, *command)
    assert proc.returncode == 0 and "already finished 2 epochs" in output, output
    for name in ("last.pt", "best.pt"):
        state = load(run_dir / "checkpoints" / name)
        assert state["weights_only"] and not set(RESUME_ONLY) & set(state), (name, sorted(state))
    assert temp_files(run_dir) == []
    assert "keep the weights only" in output, output


def test_keep_best_after_a_resume_slims_a_best_pt_written_under_keep_all(tmp_path, cache):
    """A run started with keep=all, killed after a best epoch and a worse one, resumed with
    keep=best: best.pt is still the full-state file keep=all linked; it is slimmed at the end
    rather than kept at three times the size under a log line that calls it weights only."""
    run_dir = tmp_path / "unet_c"
    command = ("trial_timestamp=c", "trainer.epochs=3", "optimizer.lr=0.05")
    proc, output = train(tmp_path, cache, *command, crash_at="train:3")
    assert proc.returncode != 0
    assert load(run_dir / "checkpoints" / "last.pt")["best_epoch"] == 1, output  # epoch 2 worse

    proc, output = train(tmp_path, cache, *command, "trainer.checkpoints.keep=best")
    assert proc.returncode == 0 and "Resumed from" in output, output
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt"]
    best = load(run_dir / "checkpoints" / "best.pt")
    assert best["epoch"] == 1 and not set(RESUME_ONLY) & set(best), sorted(best)
