"""torchrun with two CPU processes (gloo): one run folder, one set of logs and checkpoints, and
validation metrics that equal a single-process evaluation of the saved checkpoint."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from event_seg.data.sampling import EpochSampler

REPO = Path(__file__).resolve().parents[1]


def torchrun(out: Path, cache: Path, *overrides, crash_at: str = ""):
    env = {**os.environ, "EVENT_SEG_CACHE": str(cache), "OMP_NUM_THREADS": "1",
           "EVENT_SEG_CRASH_AT": crash_at}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--standalone", "-m", "event_seg.train", "debug=smoke", "logger=tensorboard",
           # every batch, so both ranks together cover the whole validation split
           "trainer.limit_batches=null", "trainer.vis.num_batches=1", f"paths.output_root={out}",
           *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, cache):
    """Two epochs, SIGKILLed (both ranks) at the start of the second, then resumed."""
    out = tmp_path_factory.mktemp("ddp")
    # No timestamp: the ranks must agree on one.
    killed = torchrun(out, cache, "trainer.epochs=2", crash_at="train:2")
    assert killed.returncode != 0
    [run_dir] = [p for p in out.iterdir() if p.is_dir()]
    timestamp = run_dir.name.split("_", 1)[1]
    proc = torchrun(out, cache, "trainer.epochs=2", f"trial_timestamp={timestamp}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc


def test_one_run_folder_one_set_of_logs_and_checkpoints(ddp_run):
    out, proc = ddp_run
    [run_dir] = [p for p in out.iterdir() if p.is_dir()]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    # One TensorBoard file per start (the killed one and the resume), none from rank 1.
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert (run_dir / "metrics.json").is_file() and (run_dir / ".hydra").is_dir()
    assert (proc.stdout + proc.stderr).count("epoch 2/2  train_loss") == 1  # rank 0 reports
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state["model"])  # loads without DDP


def test_validation_metrics_equal_a_single_process_evaluation(ddp_run, cache, tmp_path,
                                                              monkeypatch):
    from event_seg.evaluate import evaluate

    out, _ = ddp_run
    [run_dir] = [p for p in out.iterdir() if p.is_dir()]
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    monkeypatch.setenv("EVENT_SEG_CACHE", str(cache))
    single = evaluate(run_dir / "checkpoints" / "last.pt", "val", output_dir=str(tmp_path),
                      overrides=["trainer.num_workers=0"])
    assert acc.Scalars("val_mean_iou")[-1].value == pytest.approx(single["mean_iou"], abs=1e-6)
    assert acc.Scalars("val_loss")[-1].value == pytest.approx(single["loss"], rel=1e-5)
    training = json.loads((run_dir / "metrics.json").read_text())
    test = evaluate(run_dir / "checkpoints" / "best.pt", "test", output_dir=str(tmp_path / "t"),
                    overrides=["trainer.num_workers=0"])
    assert training["test_mean_iou"] == pytest.approx(test["mean_iou"], abs=1e-9)


def test_resume_under_torchrun(ddp_run):
    out, proc = ddp_run
    [run_dir] = [p for p in out.iterdir() if p.is_dir()]
    output = proc.stdout + proc.stderr
    assert f"Resumed from {run_dir / 'checkpoints' / 'last.pt'} at epoch 1" in output
    assert output.count("epoch 2/2  train_loss") == 1 and "epoch 1/2  train_loss" not in output
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2


@pytest.mark.parametrize("size,world", [(7, 2), (9, 3), (2, 4)])
def test_sampler_covers_evaluation_splits_exactly_once(size, world):
    shards = [[i for i, _ in EpochSampler(size, shuffle=False, rank=r, world_size=world)]
              for r in range(world)]
    assert sorted(sum(shards, [])) == list(range(size))
    train = [list(EpochSampler(size, shuffle=True, seed=3, rank=r, world_size=world, even=True))
             for r in range(world)]
    assert len({len(s) for s in train}) == 1  # equal step counts on every rank
    assert len({i for s in train for i, _ in s}) == len(sum(train, []))  # no sample twice


def test_uneven_evaluation_shards_give_single_process_metrics(tmp_path):
    """Splits of 1, 3 and 5 samples on 2 ranks (one rank a batch short, or with nothing at
    all): no collective mismatch, and the metrics of one process scoring the split alone."""
    out = tmp_path / "metrics.json"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
         str(REPO / "tests" / "scripts" / "ddp_uneven_eval.py"), str(out)],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    assert [(r["size"], r["batch"]) for r in results] == [(1, 1), (1, 2), (3, 1), (3, 2),
                                                          (5, 1), (5, 2)]
    for r in results:
        assert r["scored"] == r["size"]
        for key, value in r["single"].items():
            if math.isnan(value):
                assert math.isnan(r["sharded"][key]), (r["size"], r["batch"], key)
            else:
                assert r["sharded"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (
                    r["size"], r["batch"], key)


def test_a_ddp_run_logs_its_world_size_and_global_batch_size(ddp_run):
    _, proc = ddp_run
    output = proc.stdout + proc.stderr
    assert output.count("DDP: world size 2, global batch size 4 (trainer.batch_size=2 per "
                        "process)") == 1, output


@pytest.mark.parametrize("overrides, message", [
    # Found by the command check, before the process group starts.
    (["trainer.epoch=3"], "unknown config key: trainer.epoch (did you mean trainer.epochs?)"),
    # Found by rank 0 while the others wait for its data.
    (["dataset=event_scapes", "dataset.root=/no/such/folder"],
     "dataset.root=/no/such/folder does not exist or is not a folder"),
])
def test_a_config_error_under_torchrun_is_one_line_from_rank_0(tmp_path, cache, overrides,
                                                               message):
    proc = torchrun(tmp_path, cache, *overrides)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0  # torchrun exits 1 when its processes exit 2
    assert message in output.splitlines()[0] and output.count(message) == 1, output
    # No broken-pipe tracebacks from the other rank, no Hydra report: torchrun's own failure
    # summary (its ChildFailedError) is all that follows the line.
    assert "Connection closed" not in output and "Error executing job" not in output, output
    assert output.count("Traceback") <= 1, output
    assert list(tmp_path.iterdir()) == []
