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
    first_run = "".join(lines)
    assert "3 jobs (2 finished, 1 interrupted)" in first_run  # the summary, even so
    # The interrupted job's way back is the sweep's own command, pinned to its folder.
    hint = first_run.split("Resume with:\n", 1)[1].splitlines()[0].strip()
    assert hint.startswith("python -m event_seg.train -m debug=smoke ") and hint.endswith(
        "model=unet,fpn optimizer.lr=1e-3,3e-4 trainer.epochs=2 trial_timestamp=grid")

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
    # The summary lists every job of the sweep, with how this run treated it.
    rows = read_summary(sweep)
    assert {r["job"]: r["status"] for r in rows} == {
        unet_1e3: "skipped", unet_3e4: "skipped", fpn_1e3: "finished", fpn_3e4: "finished",
        "model=unet,optimizer.lr=0.01": "finished", "model=fpn,optimizer.lr=0.01": "finished"}
    scores = [float(r["best_val_mean_iou"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and {r["epochs"] for r in rows} == {"2"}
    assert "Sweep " in rerun.stdout and "6 jobs (4 finished, 2 skipped)" in rerun.stdout
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
    # An unknown weights name fails in its job alone (a misspelt encoder name would be refused
    # before the sweep starts: the command check knows the encoders, not the weights).
    proc = run_sweep(tmp_path, cache, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                     "logger=none", "trainer.epochs=1", "model.encoder_weights=nope,null",
                     "trial_timestamp=par")
    assert proc.returncode == 1  # the sweep reports that a job failed ...
    sweep = tmp_path / "multirun" / "par"
    good = sweep / "model.encoder_weights=null"
    assert summary(good)["best_epoch"] == 1  # ... after the other one finished
    log = (sweep / "model.encoder_weights=nope" / "train.log").read_text()
    assert "model.encoder_weights=nope" in log and "Wrong pretrained weights" in log
    assert "Joblib" in proc.stdout + proc.stderr
    # The summary lists both, the failed one last with its error; no traceback on the console.
    rows = read_summary(sweep)
    assert [(r["job"], r["status"]) for r in rows] == [
        ("model.encoder_weights=null", "finished"), ("model.encoder_weights=nope", "failed")]
    assert float(rows[0]["best_val_mean_iou"]) == summary(good)["best_val_mean_iou"]
    assert float(rows[0]["wall_time_s"]) > 0 and rows[0]["epochs"] == "1"
    assert "Wrong pretrained weights" in rows[1]["error"] and "\n" not in rows[1]["error"]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "| model.encoder_weights=nope | model.encoder_weights=nope | failed |" in (
        sweep / "summary.md").read_text()
    assert "1 job(s) of the sweep failed" in proc.stderr


def test_joblib_jobs_with_loader_workers_train(tmp_path, cache):
    """Inside a joblib (loky) worker the default start method is loky's own, which torch's
    loader workers cannot be started with: the jobs must still train with trainer.num_workers."""
    proc = run_sweep(tmp_path, cache, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                     "logger=none", "trainer.epochs=1", "trainer.num_workers=2",
                     "optimizer.lr=1e-3,3e-4", "trial_timestamp=wrk")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sweep = tmp_path / "multirun" / "wrk"
    for job in ("optimizer.lr=0.001", "optimizer.lr=0.0003"):
        assert summary(sweep / job)["best_epoch"] == 1
    assert "Traceback" not in proc.stdout + proc.stderr


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
    # Each job recorded how it ended in its own process; the sweep's summary lists both.
    assert sorted((r["job"], r["status"]) for r in read_summary(sweep)) == [
        ("optimizer.lr=0.0003", "finished"), ("optimizer.lr=0.001", "finished")]


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


# ---------------------------------------------------------------------------------------------
# The Optuna search: our sweeper over current Optuna, its study in persistent storage

def optuna_cmd(out: Path, *overrides):
    return train_cmd(out, "hparams_search=optuna", "logger=none", "trainer.epochs=1",
                     *overrides, multirun=False)


def load_study(storage: str, name: str):
    import optuna

    if "://" not in storage:
        from optuna.storages.journal import JournalFileBackend

        storage = optuna.storages.JournalStorage(JournalFileBackend(storage))
    return optuna.load_study(study_name=name, storage=storage)


def read_summary(sweep: Path) -> list:
    import csv

    with open(sweep / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_optuna_search_keeps_its_study_ranks_jobs_and_opens_in_the_dashboard(tmp_path, cache):
    """A loss as the optimised metric (direction from its name), the study in the sweep folder's
    SQLite file, the results and summary files, and optuna-dashboard serving the study."""
    proc = subprocess.run(optuna_cmd(tmp_path, "hydra.sweeper.n_trials=3",
                                     "optimized_metric=best_val_loss", "trial_timestamp=opt"),
                          cwd=REPO, env=sweep_env(cache), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sweep = tmp_path / "multirun" / "opt"
    study = load_study(f"sqlite:///{sweep / 'optuna.db'}", "event_seg_opt")
    assert study.direction.name == "MINIMIZE"
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 3
    for trial in done:  # each value is its job's best_val_loss, each job within the space
        job = Path(trial.user_attrs["job_dir"])
        assert trial.value == summary(job)["best_val_loss"]
        config = yaml.safe_load((job / "config.yaml").read_text())
        assert 1e-4 <= config["optimizer"]["lr"] <= 3e-3
        assert config["dataset"]["num_bins"] in (3, 5, 10)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == min(t.value for t in done)
    assert results["direction"] == "minimize" and results["trials"]["complete"] == 3
    rows = read_summary(sweep)
    assert [float(r["best_val_loss"]) for r in rows] == sorted(t.value for t in done)
    assert {r["status"] for r in rows} == {"finished"}
    assert "optimizer.lr=" in rows[0]["overrides"] and rows[0]["epochs"] == "1"
    assert (sweep / "summary.md").read_text().count("| finished |") == 3
    assert f"Sweep {sweep}: 3 jobs (3 finished)" in proc.stdout

    # optuna-dashboard, as the docs say to start it, shows the study.
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dashboard = subprocess.Popen(
        [str(Path(sys.executable).parent / "optuna-dashboard"), f"sqlite:///{sweep / 'optuna.db'}",
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, body = time.time() + 60, None
        while body is None and time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    body = json.loads(r.read())
            except OSError:
                time.sleep(0.5)
        assert body is not None, "optuna-dashboard did not answer"
        [shown] = body["study_summaries"]
        assert shown["study_name"] == "event_seg_opt"
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)


def test_two_sweeper_processes_share_one_study_in_a_journal_file(tmp_path, cache):
    journal = tmp_path / "shared" / "study.log"
    shared = ["hydra.sweeper.n_trials=4", f"hydra.sweeper.storage={journal}",
              "hydra.sweeper.study_name=shared"]
    procs = [subprocess.Popen(optuna_cmd(tmp_path, *shared, f"trial_timestamp=w{i}"), cwd=REPO,
                              env=sweep_env(cache), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in (1, 2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
    study = load_study(str(journal), "shared")
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]  # no trial handed out twice
    assert {t.state.name for t in study.trials} == {"COMPLETE"}
    folders = {Path(t.user_attrs["job_dir"]).parent.name for t in study.trials}
    assert folders == {"w1", "w2"}  # both processes ran trials of the one study
    for name in ("w1", "w2"):  # each process's summary lists its own jobs
        rows = read_summary(tmp_path / "multirun" / name)
        ran = [t for t in study.trials if Path(t.user_attrs["job_dir"]).parent.name == name]
        assert len(rows) == len({t.user_attrs["job_dir"] for t in ran})


def test_a_killed_optuna_sweep_resumes_its_study_without_repeating_trials(tmp_path, cache):
    cmd = optuna_cmd(tmp_path, "hydra.sweeper.n_trials=3", "trainer.epochs=2",
                     "trial_timestamp=kill")
    proc = subprocess.Popen(cmd, cwd=REPO, env=sweep_env(cache), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines, deadline = [], time.time() + 400
    for line in proc.stdout:
        lines.append(line)
        if any("Trial 0:" in l for l in lines) and "epoch 1/2" in line:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole sweep, during trial 1's 2nd epoch
            break
        assert time.time() < deadline, "".join(lines)
    proc.wait(timeout=60)
    proc.stdout.close()
    sweep = tmp_path / "multirun" / "kill"
    study = load_study(f"sqlite:///{sweep / 'optuna.db'}", "event_seg_kill")
    [first] = [t for t in study.trials if t.state.name == "COMPLETE"]
    [interrupted] = [t for t in study.trials if t.state.name == "RUNNING"]
    first_status = (Path(first.user_attrs["job_dir"]) / "job_status.json").read_text()

    rerun = subprocess.run(cmd, cwd=REPO, env=sweep_env(cache), capture_output=True, text=True,
                           timeout=600)
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output
    assert f"Trial(s) {interrupted.number} left running by a process that is gone" in output
    assert "Resumed from" in output and "at epoch 1" in output  # its job went on from epoch 1
    study = load_study(f"sqlite:///{sweep / 'optuna.db'}", "event_seg_kill")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 3 and states.count("RUNNING") == 0
    assert study.trials[interrupted.number].state.name == "FAIL"
    retried = [t for t in study.trials if t.user_attrs.get("requeued_from") == interrupted.number]
    assert len(retried) == 1 and retried[0].params == interrupted.params
    # The trial that had finished was neither asked for again nor retrained.
    assert sum(t.params == first.params for t in study.trials) == 1
    assert (Path(first.user_attrs["job_dir"]) / "job_status.json").read_text() == first_status
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["trials"] == {"complete": 3, "requeued": 1}
    # The study's values are best_val_mean_iou: going on with another metric is refused.
    other = subprocess.run([*cmd, "optimized_metric=best_val_weighted_mean_iou"], cwd=REPO,
                           env=sweep_env(cache), capture_output=True, text=True, timeout=300)
    assert other.returncode == 2, other.stdout + other.stderr
    assert ("error: study event_seg_kill maximizes best_val_mean_iou; this sweep would maximize "
            "best_val_weighted_mean_iou") in other.stderr
    assert "Traceback" not in other.stdout + other.stderr
    # So is another list of choices for a searched key, and the refusal leaves no trial behind.
    trials = len(load_study(f"sqlite:///{sweep / 'optuna.db'}", "event_seg_kill").trials)
    other = subprocess.run([*cmd, "hydra.sweeper.n_trials=4", "dataset.num_bins=choice(3,7)"],
                           cwd=REPO, env=sweep_env(cache), capture_output=True, text=True,
                           timeout=300)
    assert other.returncode == 2, other.stdout + other.stderr
    assert "error: dataset.num_bins: the search space does not fit study event_seg_kill" in \
        other.stderr
    assert len(load_study(f"sqlite:///{sweep / 'optuna.db'}", "event_seg_kill").trials) == trials


def test_optuna_settings_and_search_space_mistakes_are_one_line(tmp_path, cache):
    for override, message in [
        ("hydra.sweeper.sampler=tpee", "hydra.sweeper.sampler='tpee' is not one of: tpe, gp"),
        ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials=0 must be at least 1"),
        ("optimizer.lr=interval(0.1,0.01)", "optimizer.lr: interval(0.1, 0.01) is empty"),
        ("hydra.sweeper.params.optimizer.lr=interval(0.1,0.2)",
         "give the search space on the command line as 'optimizer.lr=interval(0.1,0.2)'"),
        ("hydra.sweeper.sampler.seed=1", "hydra.sweeper.sampler is a name now"),
        ("optimizer.lr=1e-3 optimizer.weight_decay=0 model.encoder_name=resnet18 "
         "dataset.num_bins=3", "nothing is left to search"),
        ("hydra.sweeper.storage=" + "/tmp", "is a folder; name a file in it"),
        ("optimized_metric=val_iou", "optimized_metric='val_iou' is not a metric a run reports"),
    ]:
        proc = subprocess.run(optuna_cmd(tmp_path, *override.split()), cwd=REPO, env=sweep_env(cache),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.strip() == f"error: {proc.stderr.strip()[7:]}"  # one line
        assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "multirun").exists() or not any((tmp_path / "multirun").iterdir())
    # A storage file that is no Optuna storage: one line naming it, not Optuna's traceback.
    (tmp_path / "garbage.log").write_text("this is not a journal\n")
    proc = subprocess.run(optuna_cmd(tmp_path, f"hydra.sweeper.storage={tmp_path}/garbage.log"),
                          cwd=REPO, env=sweep_env(cache), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"error: hydra.sweeper.storage={tmp_path}/garbage.log: cannot open it" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_search_space_from_hydra_override_syntax():
    from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                      IntDistribution)

    from event_seg.optuna_search import search_space

    space, fixed = search_space(
        {"optimizer.lr": "tag(log, interval(1e-4, 1e-2))", "model.encoder_name": "resnet18,resnet34",
         "dataset.num_bins": "range(2, 11, 4)", "trainer.epochs": "3"},
        ["dataset.num_bins=choice(3,5)", "seed=7"])
    assert space["optimizer.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert space["model.encoder_name"] == CategoricalDistribution(["resnet18", "resnet34"])
    assert space["dataset.num_bins"] == CategoricalDistribution([3, 5])  # the command line wins
    assert fixed == {"trainer.epochs": "trainer.epochs=3", "seed": "seed=7"}
    space, _ = search_space({"dataset.num_bins": "range(2, 11, 4)",
                             "loss.focal_gamma": "range(0.5, 2.0, 0.5)"}, [])
    assert space["dataset.num_bins"] == IntDistribution(2, 10, step=4)  # stop is exclusive
    assert space["loss.focal_gamma"] == FloatDistribution(0.5, 1.5, step=0.5)


def test_a_running_trial_is_stale_only_when_its_owner_is_gone(tmp_path):
    import optuna

    from event_seg import optuna_search as search

    study = optuna.create_study(direction="maximize")  # Optuna's own in-memory storage
    ours, other_host, silent, dead = (study.ask() for _ in range(4))
    storage, now = study._storage, time.time()
    storage.set_trial_system_attr(ours._trial_id, search.OWNER, f"h 1 {tmp_path}")
    storage.set_trial_system_attr(ours._trial_id, search.HEARTBEAT, now)
    for trial, beat in ((other_host, now - 30), (silent, now - 3600)):
        storage.set_trial_system_attr(trial._trial_id, search.OWNER, "elsewhere 12 /x")
        storage.set_trial_system_attr(trial._trial_id, search.HEARTBEAT, beat)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    import socket

    storage.set_trial_system_attr(dead._trial_id, search.OWNER,
                                  f"{socket.gethostname()} {gone.pid} /y")
    storage.set_trial_system_attr(dead._trial_id, search.HEARTBEAT, now)
    requeued = search.requeue_stale_trials(study, tmp_path, stale_after_s=600)
    # our folder's trial (its owner cannot be alive: we hold the folder), the silent one, and
    # the one whose process on this host has exited; not the live one on another host.
    assert sorted(requeued) == sorted([ours.number, silent.number, dead.number])
    assert search.counted_trials(study) == (4, 3)  # 1 running + 3 waiting; failures not counted
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted(t.user_attrs["requeued_from"] for t in waiting) == sorted(requeued)


def test_summary_ranks_jobs_by_the_metric_and_lists_dead_and_failed_jobs_last(tmp_path):
    from event_seg.sweep_summary import JobStatus, short_overrides, write_summary

    def job(name, status, value=None, error="", metrics=None):
        folder = tmp_path / name
        record = JobStatus(folder, [f"optimizer.lr={name}", "model=fpn"], "best_val_loss",
                           "minimize")
        if metrics is not None:
            (folder / "metrics.json").write_text(json.dumps(metrics))
        if status != "running":  # "running": the process died before it could say more
            record.ended(status, value, error)

    job("0.1", "finished", 0.9, metrics={"best_val_loss": 0.9, "best_val_mean_iou": 0.2,
                                         "epochs": 3})
    job("0.01", "skipped", 0.4, metrics={"best_val_loss": 0.4, "best_val_mean_iou": 0.5,
                                         "epochs": 3, "stopped_early_at_epoch": 2})
    job("0.5", "failed", error="ValueError: loss is nan\nTraceback ...")
    job("0.3", "running")
    (tmp_path / "not_a_job").mkdir()  # other folders of the sweep are no jobs
    table = write_summary(tmp_path)
    rows = read_summary(tmp_path)
    assert [r["job"] for r in rows] == ["0.01", "0.1", "0.3", "0.5"]  # lowest loss first
    assert [r["status"] for r in rows] == ["skipped", "finished", "failed", "failed"]
    assert rows[0]["best_val_loss"] == "0.4" and rows[0]["epochs"] == "2/3"  # stopped early
    assert rows[2]["error"].startswith("ended without a result (killed")
    assert rows[3]["error"] == "ValueError: loss is nan"
    assert "4 jobs (1 finished, 1 skipped, 2 failed)" in table
    assert "lr=0.01 model=fpn" in table  # the console's short names
    assert short_overrides("optimizer.lr=0.00190303683817358 a.x=1 b.x=2e-05") == \
        "lr=0.0019 a.x=1 b.x=2e-05"


def test_parallel_trials_proposing_the_same_values_share_one_job(tmp_path, cache):
    """Two values to choose from, three trials, two at a time in joblib workers that live on
    between batches: no trial fails on its twin's folder, both jobs count as trained here."""
    proc = subprocess.run(optuna_cmd(tmp_path, "optimizer.lr=1e-3", "optimizer.weight_decay=0",
                                     "model.encoder_name=resnet18", "dataset.num_bins=choice(3,5)",
                                     "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2",
                                     "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                                     "trial_timestamp=twins"),
                          cwd=REPO, env=sweep_env(cache), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sweep = tmp_path / "multirun" / "twins"
    study = load_study(f"sqlite:///{sweep / 'optuna.db'}", "event_seg_twins")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    for trial in study.trials:  # each told its own job's value
        assert trial.value == summary(Path(trial.user_attrs["job_dir"]))["best_val_mean_iou"]
    assert {r["status"] for r in read_summary(sweep)} == {"finished"}


def test_a_swept_group_option_that_cannot_run_fails_its_job_in_one_line(tmp_path, cache):
    # The command check composes the defaults for a swept group (model=pan,pan_b: unet), so
    # each job's own start runs the dry forward pass before any data is built.
    conf = tmp_path / "conf" / "model"
    conf.mkdir(parents=True)
    for name in ("pan", "pan_b"):  # PAN cannot run at debug=smoke's 32 x 64
        (conf / f"{name}.yaml").write_text(f"name: {name}\narch: PAN\nencoder_name: resnet18\n")
    proc = run_sweep(tmp_path, cache, f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                     "logger=none", "trainer.epochs=1", "model=pan,pan_b", "trial_timestamp=grp")
    assert proc.returncode == 1, proc.stderr
    sweep = tmp_path / "multirun" / "grp"
    for row in read_summary(sweep):
        assert row["status"] == "failed"
        assert row["error"].startswith("model.arch=PAN (model.encoder_name=resnet18) cannot "
                                       "run on a 32x64 input"), row["error"]
    for name in ("pan", "pan_b"):
        log = [line for line in (sweep / f"model={name}" / "train.log").read_text().splitlines()
               if "Warning" not in line and "warnings.warn" not in line]
        assert "Traceback" not in "\n".join(log) and len(log) <= 3, log
