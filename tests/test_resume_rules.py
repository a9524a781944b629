"""What a resumed trial may change: the learning-rate plan it continues, the settings it refuses,
and the records of a finished trial, which no resume rewrites (issue 11, items 2, 3 and 8)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from event_seg.engine.resume_rules import changed_settings
from event_seg.engine.schedule import StepSchedule

REPO = Path(__file__).resolve().parents[1]


def schedule(name="poly", total=8, warmup=0, lr=1e-3):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    return StepSchedule(optimizer, name, total_steps=total, warmup_steps=warmup)


def rates(plan, steps):
    return [plan.apply(step) for step in steps]


def test_a_resumed_plan_goes_on_step_for_step_whatever_the_config_says_now():
    straight = rates(schedule(total=8, warmup=2), range(8))
    saved = schedule(total=8, warmup=2)
    saved.apply(4)
    # Rebuilt from other settings (2 epochs, cosine, another lr), then the checkpoint's plan.
    resumed = schedule("cosine", total=4, lr=5.0)
    assert resumed.load_state_dict(saved.state_dict())
    assert rates(resumed, range(4, 8)) == straight[4:]


def test_more_epochs_stretch_the_rest_of_the_curve_without_a_jump_or_a_zero_rate():
    for name in ("poly", "cosine"):
        plan = schedule(name, total=8)
        before = rates(plan, range(5))
        plan.stretch(4, 12)  # 2 of 4 epochs done; now 6 epochs of 2 steps
        after = rates(plan, range(4, 12))
        assert after[0] == pytest.approx(before[4])  # no jump at the resume point
        assert all(a > b > 0 for a, b in zip(after, after[1:]))  # decays, never reaches 0
        assert plan.factor(12) == pytest.approx(0.0)  # ... until the end of the last epoch


def test_other_steps_per_epoch_keep_the_same_curve_over_the_epochs():
    full = schedule(total=16)  # 4 epochs of 4 steps
    at_epochs = [full.factor(4 * epoch) for epoch in range(4)]
    short = schedule(total=16)
    short.stretch(8, 8 + 2 * 2)  # resumed after epoch 2 with limit_batches=2
    assert [short.factor(8 + 2 * k) for k in range(2)] == pytest.approx(at_epochs[2:])


def test_settings_that_change_what_is_trained_are_listed_the_others_may_differ():
    saved = {"dataset": {"modality": "events", "num_bins": 8, "root": "/a"},
             "trainer": {"num_workers": 2, "batch_size": 8, "device": "cuda"},
             "logger": {"wandb": {"project": "x"}}, "seed": 1}
    now = {"dataset": {"modality": "rgb+events", "num_bins": 5, "root": "/b"},
           "trainer": {"num_workers": 0, "batch_size": 8, "device": "cpu"}, "logger": {},
           "seed": 2}
    assert changed_settings(saved, now) == ["dataset.modality (events -> rgb+events)",
                                            "dataset.num_bins (8 -> 5)", "seed (1 -> 2)"]


# -- real runs: one trial killed in epoch 2, refused, resumed longer, then finished ------------

def train(out: Path, cache: Path, *overrides, crash_at: str = ""):
    env = {**os.environ, "EVENT_SEG_CACHE": str(cache), "EVENT_SEG_CRASH_AT": crash_at,
           "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, "-m", "event_seg.train", "debug=smoke", "logger=tensorboard",
           "trainer.vis.num_batches=0", "trainer.inference.enabled=false",
           f"paths.output_root={out}", "run_name=unet_${trial_timestamp}", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    return proc, proc.stdout + proc.stderr


def learning_rates(run_dir: Path):
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars("learning_rate")}


def test_resume_refuses_another_experiment_stretches_more_epochs_and_keeps_finished_records(
        tmp_path, cache):
    run_dir = tmp_path / "unet_r"
    proc, output = train(tmp_path, cache, "trial_timestamp=r", "trainer.epochs=3",
                         crash_at="train:2")  # SIGKILL in epoch 2: last.pt holds epoch 1
    assert proc.returncode != 0 and torch.load(
        run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1, output
    config = (run_dir / "config.yaml").read_bytes()

    # Another input (also 8 channels: it would load) and another schedule: refused, one line.
    for overrides, named in ((["dataset.modality=events", "dataset.num_bins=8"],
                              ["dataset.modality (rgb+events -> events)", "dataset.num_bins (5 -> 8)"]),
                             (["scheduler=cosine"], ["scheduler.name (poly -> cosine)"]),
                             (["optimizer=sgd"], ["optimizer.name (adamw -> sgd)"])):
        proc, output = train(tmp_path, cache, "trial_timestamp=r", "trainer.epochs=3", *overrides)
        assert proc.returncode == 2, output
        assert len(output.strip().splitlines()) == 1 and "Traceback" not in output, output
        assert all(n in output for n in named), output
        assert (run_dir / "config.yaml").read_bytes() == config  # not overwritten

    # More epochs and fewer steps per epoch: the rest of the curve is stretched, said once.
    proc, output = train(tmp_path, cache, "trial_timestamp=latest", "trainer.epochs=4",
                         "trainer.limit_batches=1", "trainer.num_workers=1")
    assert proc.returncode == 0, output
    assert output.count("Learning-rate schedule:") == 1 and "stretched" in output, output
    lrs = learning_rates(run_dir)
    assert sorted(lrs) == [1, 2, 3, 4]
    assert lrs[1] == pytest.approx(1e-3) and all(lrs[e] > lrs[e + 1] > 0 for e in (1, 2, 3)), lrs
    metrics, config = ((run_dir / n).read_bytes() for n in ("metrics.json", "config.yaml"))
    summary = json.loads(metrics)
    assert summary["epochs"] == 4
    # The final test obeyed limit_batches=1 (one batch of 2 of the 3 test frames) and says so.
    assert (summary["test_samples"], summary["test_split_samples"]) == (2, 3)
    assert "test scored 2 of 3 samples (trainer.limit_batches=1)" in output

    # Finished: fewer or more epochs resume nothing and rewrite nothing, through `latest` too.
    for epochs, says in ((2, "does not resume it"), (6, "start a new trial")):
        proc, output = train(tmp_path, cache, "trial_timestamp=latest", f"trainer.epochs={epochs}")
        assert proc.returncode == 2 and says in output, output
        assert len(output.strip().splitlines()) == 1, output
    command = output.split("start a new trial (a fresh folder): ")[1]
    assert "trial_timestamp=" not in command  # a fresh folder ...
    assert "'run_name=unet_${trial_timestamp}'" in command  # ... not this one again
    assert (run_dir / "metrics.json").read_bytes() == metrics
    assert (run_dir / "config.yaml").read_bytes() == config


def test_an_older_checkpoint_without_a_saved_plan_is_stretched_from_its_own_plan(tmp_path, cache):
    """A LambdaLR state (written before plans were saved) resumed with more epochs."""
    from omegaconf import OmegaConf
    from test_nonfinite import make_trainer

    from event_seg.engine.schedule import lr_factor

    first = make_trainer(tmp_path, cache, "trainer.epochs=2")
    first.train_one_epoch(1)
    first._save(1, improved=True)
    steps = first.steps_per_epoch
    state = torch.load(first.trial.last_checkpoint, weights_only=True)
    state["scheduler"] = {"base_lrs": [1e-3], "last_epoch": steps, "_last_lr": [0.0]}
    state["config"] = OmegaConf.to_container(first.cfg, resolve=True)  # as train.run saves it
    torch.save(state, first.trial.last_checkpoint)

    resumed = make_trainer(tmp_path, cache, "trainer.epochs=3")
    assert resumed.scheduler.total_steps == 3 * steps  # re-planned to end with epoch 3 ...
    # ... from where the old plan (2 epochs, its warm-up) was.
    expected = 1e-3 * lr_factor(steps, 2 * steps, first.scheduler.warmup_steps, "poly")
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(expected)


def test_weights_or_batchnorm_statistics_that_are_not_finite_are_never_saved(tmp_path, cache):
    from test_nonfinite import make_trainer

    from event_seg.errors import NonFiniteLossError

    trainer = make_trainer(tmp_path, cache, "trainer.epochs=1")
    running_var = next(b for n, b in trainer.model.named_buffers() if n.endswith("running_var"))
    running_var[0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="no checkpoint was written yet"):
        trainer._save(1, improved=True)
    assert not trainer.trial.last_checkpoint.exists()
