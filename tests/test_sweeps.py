"""Sweeps through Hydra's own sweepers and launchers, run as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from wandb_reader import read_offline_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def sweep_env(cache, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return {**env, "EVENT_SEG_CACHE": str(cache), "HYDRA_FULL_ERROR": "0", **extra}


def train_cmd(out: Path, *overrides, multirun=True):
    # -m before every override: Hydra's argument parser takes the overrides as one run.
    return [sys.executable, "-m", "event_seg.train", *(["-m"] if multirun else []), "debug=smoke",
            f"paths.output_root={out}", "trainer.vis.num_batches=0", *overrides]


def run_sweep(tmp_path: Path, cache, *overrides, multirun=True, **env):
    """Runs the CLI to completion, as a user would, and returns the finished process."""
    return subprocess.run(train_cmd(tmp_path, *overrides, multirun=multirun), cwd=REPO,
                          env=sweep_env(cache, **env), capture_output=True, text=True, timeout=600)


def summary(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


def test_job_folders_and_wandb_ids_are_named_by_overrides_not_job_numbers():
    from event_seg.job_names import MAX_NAME_BYTES, job_dir_name
    from event_seg.loggers.wandb import wandb_run_id

    assert job_dir_name("model=fpn,optimizer.lr=0.0003", "fpn") == "model=fpn,optimizer.lr=0.0003"
    assert job_dir_name("dataset.root=/data/x", "unet") == "dataset.root=-data-x"
    assert job_dir_name("", "unet") == "unet"  # a job that sweeps nothing
    long = ",".join(f"key{i}=välue{i}" for i in range(40))
    short = job_dir_name(long, "unet")
    assert len(short.encode()) <= MAX_NAME_BYTES and short.startswith("key0=välue0,key1=")
    assert short == job_dir_name(long, "unet") != job_dir_name(long + "0", "unet")  # stable
    # Single runs keep their name as id; a job's id is stable, one per override set, W&B-safe.
    assert wandb_run_id("unet_t1") == "unet_t1"
    ids = {wandb_run_id("unet_t1", job) for job in ("optimizer.lr=0.001", "optimizer.lr=0.0003",
                                                   short)}
    assert len(ids) == 3 and wandb_run_id("unet_t1", "optimizer.lr=0.001") in ids
    for run_id in ids | {wandb_run_id("x" * 200, "a=1")}:
        assert len(run_id) <= 64 and not set(run_id) & set(":;,#?/'\\%=")


def test_grid_sweep_jobs_runs_and_a_rerun_with_one_more_value_skips_and_resumes(tmp_path, cache):
    """2x2 grid with W&B offline, pre-empted during the third job, then run again with one more
    learning rate: every job number moves, yet each job finds its own folder and W&B run."""
    from event_seg.loggers.wandb import wandb_run_id

    cmd = [*train_cmd(tmp_path, "logger=wandb", "model=unet,fpn", "optimizer.lr=1e-3,3e-4",
                      "trainer.epochs=2", "trial_timestamp=grid")]
    env = sweep_env(cache, WANDB_MODE="offline")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines, deadline = [], time.time() + 400
    for line in proc.stdout:
        lines.append(line)
        if "model=fpn,optimizer.lr=0.001" in "".join(lines[-3:]) and "epoch 1/2" in line:
            proc.send_signal(signal.SIGTERM)  # a pre-emption in the middle of job 2
            break
        assert time.time() < deadline, "".join(lines)
    lines += proc.stdout.readlines()
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, "".join(lines)

    sweep = tmp_path / "multirun" / "grid"
    unet_1e3, unet_3e4, fpn_1e3, fpn_3e4 = names = [
        "model=unet,optimizer.lr=0.001", "model=unet,optimizer.lr=0.0003",
        "model=fpn,optimizer.lr=0.001", "model=fpn,optimizer.lr=0.0003"]
    assert (sweep / unet_3e4 / "metrics.json").is_file()
    assert not (sweep / fpn_1e3 / "metrics.json").exists()
    assert not (sweep / fpn_3e4).exists()

    # Run it again with lr=1e-2 first (`latest` finds the sweep folder, as the user would type
    # it): the jobs above become 1, 2, 4 and 5 of six.
    cmd = ["optimizer.lr=1e-2,1e-3,3e-4" if a == "optimizer.lr=1e-3,3e-4" else
           "trial_timestamp=latest" if a == "trial_timestamp=grid" else a for a in cmd]
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output
    assert output.count("already finished 2 epochs") == 2  # the unet jobs are not trained again
    assert f"Resumed from {sweep / fpn_1e3 / 'checkpoints' / 'last.pt'} at epoch 1" in output
    names += ["model=unet,optimizer.lr=0.01", "model=fpn,optimizer.lr=0.01"]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == sorted(names)

    runs = {}
    for name in names:
        assert summary(sweep / name)["epochs"] == 2
        model, lr = (v.split("=")[1] for v in name.split(","))
        overrides = yaml.safe_load((sweep / name / ".hydra" / "overrides.yaml").read_text())
        assert f"optimizer.lr={lr}" in overrides and f"model={model}" in overrides
        offline = sorted((sweep / name / "wandb").glob("offline-run-*"))
        runs[name] = [read_offline_run(d) for d in offline]
        assert {r.config["optimizer"]["lr"] for r in runs[name]} == {float(lr)}
        assert {r.run_id for r in runs[name]} == {wandb_run_id(f"{model}_grid", name)}
    assert len({r[0].run_id for r in runs.values()}) == 6  # one W&B run per set of overrides
    assert {r.group for rs in runs.values() for r in rs} == {"sweep_grid"}
    # The pre-empted job (job 2, then job 4) continued its own W&B run; the skipped ones started
    # none.
    assert len(runs[unet_1e3]) == 1 and len(runs[fpn_1e3]) == 2
    assert runs[fpn_1e3][0].run_id == runs[fpn_1e3][1].run_id
    assert runs[fpn_3e4][0].config["model"]["arch"] == "FPN"


def test_parallel_joblib_jobs_and_a_failing_job_does_not_stop_the_others(tmp_path, cache):
    proc = run_sweep(tmp_path, cache, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                     "logger=none", "trainer.epochs=1", "model.encoder_name=nope,resnet18",
                     "trial_timestamp=par")
    assert proc.returncode != 0  # the sweep reports that a job failed ...
    sweep = tmp_path / "multirun" / "par"
    good = sweep / "model.encoder_name=resnet18"
    assert summary(good)["best_epoch"] == 1  # ... after the other one finished
    log = (sweep / "model.encoder_name=nope" / "train.log").read_text()
    assert "model.encoder_name=nope" in log and "Wrong encoder name" in log
    assert "Joblib" in proc.stdout + proc.stderr


def test_optuna_search_writes_its_results(tmp_path, cache):
    proc = run_sweep(tmp_path, cache, "hparams_search=optuna", "hydra.sweeper.n_trials=2",
                     "logger=none", "trainer.epochs=1", "trial_timestamp=opt", multirun=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sweep = tmp_path / "multirun" / "opt"
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2  # (two trials proposing the same point would share a folder)
    for job in jobs:  # named by the sampled values alone, each within the search space
        assert job.name.startswith("dataset.num_bins=") and "optimizer.weight_decay=" in job.name
        config = yaml.safe_load((job / "config.yaml").read_text())
        assert 1e-4 <= config["optimizer"]["lr"] <= 3e-3
        assert config["dataset"]["num_bins"] in (3, 5, 10)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == max(summary(j)["best_val_mean_iou"] for j in jobs)
    assert set(results["best_params"]) == {"optimizer.lr", "optimizer.weight_decay",
                                           "model.encoder_name", "dataset.num_bins"}


def test_submitit_local_launcher_runs_each_job_in_its_own_process(tmp_path, cache):
    proc = run_sweep(tmp_path, cache, "hydra/launcher=submitit_local",
                     "hydra.launcher.timeout_min=10", "logger=tensorboard", "trainer.epochs=1",
                     "optimizer.lr=1e-3,3e-4", "trial_timestamp=sub")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sweep = tmp_path / "multirun" / "sub"
    for name in ("optimizer.lr=0.001", "optimizer.lr=0.0003"):
        assert summary(sweep / name)["best_epoch"] == 1
        assert list((sweep / name / "tensorboard").glob("events.out.tfevents.*"))
    assert list((sweep / ".submitit").rglob("*_result.pkl"))  # submitit ran them, not us


def agent_command(sweep_config: dict, values: dict) -> list:
    """The command `wandb agent` runs for one set of parameter values, built by wandb's own
    helpers from the sweep file (wandb_agent.Agent._command_run does the same)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    command = sweep_utils.create_sweep_command(list(sweep_config["command"]))
    macros = sweep_utils.create_sweep_command_args(
        {"args": {k: {"value": v} for k, v in values.items()}})
    macros.update(interpreter=[sys.executable], program=[sweep_config["program"]],
                  env=["/usr/bin/env"])
    out = []
    for chunk in map(str, command):
        out += macros.get(chunk[2:-1]) or [] if chunk.startswith("${") else [chunk]
    return out


def test_wandb_sweep_agent_arguments_are_accepted(tmp_path, cache):
    config = yaml.safe_load((REPO / "sweeps" / "wandb_sweep.yaml").read_text())
    assert config["metric"] == {"name": "best_val_mean_iou", "goal": "maximize"}
    # One value per parameter, as the agent would pick them (the edges of each range).
    values = {k: (p["values"][-1] if "values" in p else p["min"])
              for k, p in config["parameters"].items()}
    cmd = agent_command(config, values) + ["debug=smoke", "trainer.epochs=1",
                                           "trainer.vis.num_batches=0",
                                           f"paths.output_root={tmp_path}"]
    assert "optimizer.lr=0.0001" in cmd and "model.encoder_name=resnet34" in cmd
    env = sweep_env(cache, WANDB_MODE="offline", WANDB_SWEEP_ID="abcd1234",
                    WANDB_RUN_ID="agentrun1", WANDB_PROJECT="event-segmentation")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [run_dir] = tmp_path.glob("unet_*")
    [offline] = (run_dir / "wandb").glob("offline-run-*")
    run = read_offline_run(offline)
    assert run.run_id == "agentrun1"  # the agent's run, not one of our own
    assert run.config["optimizer"]["lr"] == 1e-4 and run.config["dataset"]["num_bins"] == 10
    assert run.summary["best_val_mean_iou"] == summary(run_dir)["best_val_mean_iou"]
