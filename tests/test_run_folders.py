"""One process per run folder, and `latest` as the newest run (issue 11, items 7 to 9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from event_seg.engine.trial import Trial
from event_seg.latest import latest_timestamp
from event_seg.launch import PLACEHOLDER

REPO = Path(__file__).resolve().parents[1]
# A process that claims a fresh folder with its clock stopped at one second, says which, and
# holds it until its stdin closes: two of them are two runs started in the same second.
CLAIM = """
import datetime, sys
from event_seg.launch import claim_folder
print(claim_folder(sys.argv[1], None, now=lambda: datetime.datetime(2026, 1, 1)), flush=True)
sys.stdin.read()
"""


def claimer(pattern: str):
    proc = subprocess.Popen([sys.executable, "-c", CLAIM, pattern], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    return proc, proc.stdout.readline().strip()


def test_fresh_runs_started_in_the_same_second_never_share_a_folder(tmp_path):
    pattern = str(tmp_path / f"unet_{PLACEHOLDER}")
    first, a = claimer(pattern)
    second, b = claimer(pattern)  # while the first still holds its folder
    assert (a, b) == ("2026-01-01_00-00-00", "2026-01-01_00-00-00_2")
    for proc in (first, second):
        proc.communicate("")
    assert list(tmp_path.iterdir()) == []  # nothing ran in them: no folder is left behind
    (tmp_path / f"unet_{a}").mkdir()
    (tmp_path / f"unet_{a}" / "metrics.json").write_text("{}")  # a finished run of that second
    third, c = claimer(pattern)
    third.communicate("")
    assert c == b  # a used folder is never reused


def test_resuming_a_folder_a_live_run_holds_is_refused_in_one_line(tmp_path, cache):
    env = {**os.environ, "EVENT_SEG_CACHE": str(cache), "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, "-m", "event_seg.train", "debug=smoke", "logger=none",
           "trainer.epochs=200", "trainer.inference.enabled=false", "trainer.vis.num_batches=0",
           f"paths.output_root={tmp_path}", "trial_timestamp=busy"]
    # Long enough to be still going while the second command starts (its command check builds
    # the model, seconds on a loaded machine); stopped by SIGTERM once that one is refused.
    running = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in running.stdout:
        lines.append(line)
        if "Training Unet" in line:
            break
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    running.send_signal(signal.SIGTERM)
    rest = running.communicate(timeout=300)[0]
    output = second.stdout + second.stderr
    assert second.returncode == 2, output
    assert output.strip().splitlines() == [f"error: {tmp_path / 'unet_busy'} is in use by a run "
                                           f"that is still going (pid {running.pid} on "
                                           f"{os.uname().nodename}); wait for it to end or stop "
                                           f"it first"], output
    assert running.returncode == 128 + signal.SIGTERM, "".join(lines) + rest  # pre-empted
    log = (tmp_path / "unet_busy" / "train.log").read_text()
    assert log.count("Training Unet") == 1  # the refused run wrote nothing into the folder


def test_latest_is_the_newest_run_of_the_name_checkpoint_or_not(tmp_path):
    older = tmp_path / "unet_2026-01-01_00-00-00"
    (older / "checkpoints").mkdir(parents=True)
    (older / "checkpoints" / "last.pt").write_bytes(b"x")
    for name in ("unet_2026-01-02_00-00-00",  # stopped in epoch 1: no checkpoint
                 "fpn_2026-01-03_00-00-00"):  # another name
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text("{}")
    pattern = str(tmp_path / f"unet_{PLACEHOLDER}")
    assert latest_timestamp(pattern, sweep=False) == "2026-01-02_00-00-00"
    (tmp_path / "unet_2026-01-02_00-00-00_2").mkdir()  # the second run of that second
    (tmp_path / "unet_2026-01-02_00-00-00_2" / "train.log").write_text("")
    assert latest_timestamp(pattern, sweep=False) == "2026-01-02_00-00-00_2"


def test_a_run_name_without_the_timestamp_says_the_folder_is_named_by_it(tmp_path):
    pinned = Trial(name="myrun", timestamp="brandnew", run_dir=tmp_path / "myrun")
    assert "choose another run_name" in pinned.way_out("python -m event_seg.train")
    assert "trial_timestamp" not in pinned.way_out("cmd").split(":")[0]
    fresh = Trial(name="unet_t", timestamp="t", run_dir=tmp_path / "unet_t")
    assert fresh.way_out("python -m event_seg.train x=1").endswith(
        "start a new trial (a fresh folder): python -m event_seg.train x=1")


def test_latest_ignores_a_folder_no_run_wrote_into(tmp_path):
    (tmp_path / "unet_2026-01-01_00-00-00" / "checkpoints").mkdir(parents=True)
    unused = tmp_path / "unet_2026-01-02_00-00-00"
    unused.mkdir()
    (unused / ".lock").write_text("")  # a command refused after claiming, or just starting
    assert latest_timestamp(str(tmp_path / f"unet_{PLACEHOLDER}"), sweep=False) == \
        "2026-01-01_00-00-00"


def test_a_refused_command_never_removes_a_folder_it_did_not_make(tmp_path, cache):
    mine = tmp_path / "mine"
    mine.mkdir()  # the user's own (empty) folder
    proc = subprocess.run(
        [sys.executable, "-m", "event_seg.train", "debug=smoke", f"hydra.run.dir={mine}",
         "--nope"], cwd=REPO, env={**os.environ, "EVENT_SEG_CACHE": str(cache)},
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and mine.is_dir() and not (mine / ".lock").exists()


def _run_of(folder: Path, timestamp: str) -> None:
    """A run folder as training leaves it: its config.yaml records the timestamp."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"trial_timestamp: {timestamp}\nrun_name: {folder.name}\n")


def test_latest_matches_the_run_name_exactly_not_a_longer_one(tmp_path):
    _run_of(tmp_path / "unet_2026-01-01_00-00-00", "2026-01-01_00-00-00")
    # model.name=unet_small: its folders share the prefix `unet_`, but are another run's.
    _run_of(tmp_path / "unet_small_2026-01-02_00-00-00", "2026-01-02_00-00-00")
    (tmp_path / "unet_small_2026-01-03_00-00-00").mkdir()  # no config yet: told by its name
    (tmp_path / "unet_small_2026-01-03_00-00-00" / "train.log").write_text("")
    pattern = str(tmp_path / f"unet_{PLACEHOLDER}")
    assert latest_timestamp(pattern, sweep=False) == "2026-01-01_00-00-00"
    # A timestamp of one's own (trial_timestamp=foo) is a run of the name too.
    _run_of(tmp_path / "unet_foo", "foo")
    assert latest_timestamp(pattern, sweep=False) == "foo"
    assert latest_timestamp(str(tmp_path / f"unet_small_{PLACEHOLDER}"), sweep=False) == \
        "2026-01-03_00-00-00"


def train(out: Path, cache: Path, *overrides, crash_at: str = ""):
    env = {**os.environ, "EVENT_SEG_CACHE": str(cache), "HYDRA_FULL_ERROR": "0",
           "EVENT_SEG_CRASH_AT": crash_at}
    cmd = [sys.executable, "-m", "event_seg.train", "debug=smoke", "logger=none",
           "trainer.epochs=1", "trainer.inference.enabled=false", "trainer.vis.num_batches=0",
           f"paths.output_root={out}", *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_a_failed_start_leaves_no_folder_and_the_corrected_command_starts(tmp_path, cache):
    missing = tmp_path / "no-such-dataset"
    failed = train(tmp_path, cache, "trial_timestamp=t", "dataset=event_scapes",
                   f"dataset.root={missing}")
    output = failed.stdout + failed.stderr
    assert failed.returncode == 2 and str(missing) in output and "Traceback" not in output
    assert not (tmp_path / "unet_t").exists(), list((tmp_path / "unet_t").iterdir())
    fixed = train(tmp_path, cache, "trial_timestamp=t")  # the synthetic set, as meant
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert (tmp_path / "unet_t" / "metrics.json").is_file()


def test_a_resumed_run_that_fails_at_start_keeps_its_folder(tmp_path, cache):
    killed = train(tmp_path, cache, "trial_timestamp=r", crash_at="train:1:0")
    assert killed.returncode != 0
    run_dir = tmp_path / "unet_r"
    config = (run_dir / "config.yaml").read_text()  # stopped in its first epoch
    failed = train(tmp_path, cache, "trial_timestamp=r", f"dataset.root={tmp_path / 'moved'}")
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert (run_dir / "config.yaml").read_text() == config
    assert (run_dir / "train.log").is_file()


def test_a_run_that_fails_in_its_first_epoch_leaves_no_folder(tmp_path, cache):
    # The loss diverges at the second batch of epoch 1: nothing was saved, so the folder holds no
    # work, and the lower learning rate the error asks for must not be refused as "trained with
    # other settings" (by run_name/trial_timestamp, or found by latest).
    diverged = train(tmp_path, cache, "trial_timestamp=d", "optimizer.lr=1e30",
                     "trainer.grad_clip_norm=null")
    output = diverged.stdout + diverged.stderr
    assert diverged.returncode == 2, output
    assert "at epoch 1, batch 1" in output or "after epoch 1" in output, output
    assert not (tmp_path / "unet_d").exists(), list((tmp_path / "unet_d").iterdir())
    fixed = train(tmp_path, cache, "trial_timestamp=d")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr


def test_a_run_stopped_in_its_first_epoch_keeps_its_folder_to_resume(tmp_path, cache):
    import signal
    import time

    env = {**os.environ, "EVENT_SEG_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "event_seg.train", "debug=smoke", "logger=none",
           "trainer.vis.num_batches=0", "trial_timestamp=s", f"paths.output_root={tmp_path}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "Training Unet on" in line:
            time.sleep(0.5)  # inside epoch 1, long before its end
            proc.send_signal(signal.SIGTERM)
            break
    lines += proc.stdout.readlines()
    output = "".join(lines)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, output
    assert "no epoch had finished yet" in output and "Resume with:" in output, output
    assert (tmp_path / "unet_s" / "config.yaml").is_file()  # what the printed command resumes


def test_cfg_job_shows_the_run_that_latest_resumes(tmp_path):
    _run_of(tmp_path / "unet_2026-01-01_00-00-00", "2026-01-01_00-00-00")

    def cfg_job(out: Path):
        return subprocess.run([sys.executable, "-m", "event_seg.train", "--cfg", "job",
                               "--resolve", "trial_timestamp=latest", f"paths.output_root={out}"],
                              cwd=REPO, capture_output=True, text=True, timeout=120)

    shown = cfg_job(tmp_path)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "\nrun_name: unet_2026-01-01_00-00-00\n" in shown.stdout, shown.stdout[-400:]
    none = cfg_job(tmp_path / "empty")  # what the run would say: one line, exit 2
    assert none.returncode == 2 and none.stderr.startswith("error: trial_timestamp=latest: no "
                                                           "earlier run"), none.stderr
    assert none.stdout == "" and not (tmp_path / "empty").exists()
