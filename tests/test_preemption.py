"""SIGTERM (pre-emption) stops at a batch boundary, closes the trackers and prints how to resume."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

sys.path.insert(0, str(Path(__file__).parent))
from wandb_reader import read_offline_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_sigterm_stops_cleanly_and_the_printed_command_resumes(tmp_path, cache):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WANDB_")},
           "EVENT_SEG_CACHE": str(cache), "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "event_seg.train", "debug=smoke", "logger=wandb+tb",
           "trainer.epochs=50", "trainer.vis.num_batches=0", "trial_timestamp=pre",
           f"paths.output_root={tmp_path}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.time() + 300
    for line in proc.stdout:
        lines.append(line)
        if "epoch 1/50" in line and "val_mean_iou" in line:
            proc.send_signal(signal.SIGTERM)
            break
        assert time.time() < deadline, "".join(lines)
    lines += proc.stdout.readlines()
    proc.wait(timeout=120)
    output = "".join(lines)
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "stopping at the next batch boundary" in output
    assert "Traceback" not in output
    command = output.split("Resume with:")[1].strip().splitlines()[0]
    assert command.startswith("python -m event_seg.train") and "trial_timestamp=pre" in command
    run_dir = tmp_path / "unet_pre"
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"]
    assert saved >= 1
    first = read_offline_run(sorted((run_dir / "wandb").glob("offline-run-*"))[0])
    assert first.exit_code == 128 + signal.SIGTERM  # marked as interrupted, not crashed

    args = [a if not a.startswith("trainer.epochs=") else f"trainer.epochs={saved + 1}"
            for a in shlex.split(command)[3:]]
    resumed = subprocess.run([sys.executable, "-m", "event_seg.train", *args], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"Resumed from {run_dir / 'checkpoints' / 'last.pt'} at epoch {saved}" in (
        resumed.stdout + resumed.stderr)
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"] == saved + 1
    # TensorBoard drops the redone epoch; W&B reattaches to the same run, from that epoch on.
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    for tag in ("train_loss", "val_mean_iou", "learning_rate"):
        assert [e.step for e in acc.Scalars(tag)] == list(range(1, saved + 2)), tag
    first, second = (read_offline_run(d) for d in sorted((run_dir / "wandb").glob("offline-run-*")))
    assert first.run_id == second.run_id == "unet_pre"
    assert [e for e, _ in second.series("val_mean_iou")] == [saved + 1]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_whole_process_group_stops_cleanly_with_loader_workers(tmp_path, cache,
                                                                              signum):
    """SLURM signals every process of the job, Ctrl-C the terminal's process group: the DataLoader
    workers too. They must outlive the signal so that the main process stops at the batch
    boundary, saves and prints the resume command, as when it alone is signalled; and they must
    still go when it exits."""
    env = {**os.environ, "EVENT_SEG_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "event_seg.train", "debug=smoke", "logger=none",
           "trainer.epochs=2", "trainer.limit_batches=6", "trainer.num_workers=2",
           "trainer.vis.num_batches=0", "trial_timestamp=grp", f"paths.output_root={tmp_path}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "epoch 1/2" in line and "val_mean_iou" in line:  # epoch 2 starts now
                os.killpg(proc.pid, signum)
                break
        lines += proc.stdout.readlines()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = "".join(lines)
    assert proc.returncode == 128 + signum, output
    assert "Traceback" not in output and "killed by signal" not in output, output
    deadline = time.time() + 30  # no worker outlives the main process
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("loader workers still run after the main process exited")
    command = output.split("Resume with:")[1].strip().splitlines()[0]
    assert "trial_timestamp=grp" in command
    last = tmp_path / "unet_grp" / "checkpoints" / "last.pt"
    assert torch.load(last, weights_only=True)["epoch"] == 1
    if signum == signal.SIGINT:
        return  # the same resume as SIGTERM's
    resumed = subprocess.run([sys.executable, "-m", "event_seg.train", *shlex.split(command)[3:]],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"Resumed from {last} at epoch 1" in resumed.stdout + resumed.stderr
    assert torch.load(last, weights_only=True)["epoch"] == 2


LOADER_JOB = '''
import multiprocessing, signal, sys
from omegaconf import OmegaConf
import event_seg.data.build
from event_seg.config import DatasetConfig, TrainerConfig
from event_seg.data import build_data

OPEN = []

def unready_worker(worker_id, exiting=None):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as a worker still starting up: dies of it

def job(cache):
    dataset = OmegaConf.merge(OmegaConf.structured(DatasetConfig),
                              OmegaConf.load("conf/dataset/synthetic.yaml"),
                              OmegaConf.load("conf/debug/smoke.yaml").dataset)
    trainer = OmegaConf.merge(OmegaConf.structured(TrainerConfig),
                              {"num_workers": 2, "batch_size": 1, "progress_bar": False})
    if sys.argv[2] == "unready":
        event_seg.data.build._seed_worker = unready_worker
    batches = iter(build_data(dataset, trainer, cache, splits=("val",)).loaders["val"])
    next(batches)
    OPEN.append(batches)  # workers started, the loader still open at exit (a sweep's job's are)
    if sys.argv[2] == "logger":
        multiprocessing.util.get_logger()  # what a library may do: reorders the exit handlers

if __name__ == "__main__":
    if sys.argv[2] in ("child", "unready"):  # as a joblib worker runs a sweep's job
        child = multiprocessing.get_context("spawn").Process(target=job, args=(sys.argv[1],))
        child.start()
        child.join()
        sys.exit(child.exitcode)
    job(sys.argv[1])
'''


@pytest.mark.parametrize("where", ["child", "logger", "unready"])
def test_a_process_with_open_loaders_exits_at_once(tmp_path, cache, where):
    """Loader workers honour the SIGTERM their process sends them as it exits, however it
    exits: as a multiprocessing child (a joblib worker ends its jobs so), or after a library
    moved multiprocessing's exit handler. Else the process waits on its workers for ever.
    A worker that dies of that SIGTERM (spawned, still importing on a busy machine) is no
    crash either: the exit stays clean."""
    script = tmp_path / "job.py"
    script.write_text(LOADER_JOB)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(script), str(cache), where], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
