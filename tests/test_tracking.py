"""Experiment tracking with the real parts: TensorBoard files read back with EventAccumulator,
W&B offline runs read back from their run files, a local HTTP server that refuses W&B, and real
CLI runs (single and multirun) in subprocesses."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

sys.path.insert(0, str(Path(__file__).parent))
from wandb_reader import read_offline_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EPOCH_SCALARS = ("train_loss", "val_loss", "val_mean_iou", "learning_rate",
                 "val_weighted_mean_iou", "val_pixel_accuracy", "val_iou/road",
                 "inference_mean_iou", "inference_weighted_mean_iou", "inference_loss")
PANELS = ("rgb", "events", "ground_truth", "prediction", "grid")
STAGES = ("train", "val", "inference")
DUMMY_KEY = "x" * 40


def run_cli(*overrides, out: Path, cache: Path, env=None, multirun=False, timeout=600):
    # W&B settings come only from the test, never from the machine running it.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    full_env = {**inherited, "EVENT_SEG_CACHE": str(cache), **(env or {})}
    cmd = [sys.executable, "-m", "event_seg.train", *(["-m"] if multirun else []),
           "debug=smoke", f"paths.output_root={out}", *overrides]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    proc.wall_s = time.perf_counter() - started
    return proc


def tensorboard(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"),
                           size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def offline_runs(run_dir: Path):
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def wandb_core_processes() -> set:
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"wandb-core" in (proc / "cmdline").read_bytes():
                    found.add(int(proc.name))
            except OSError:
                pass
    return found


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, cache):
    """One run logging to W&B (offline) and TensorBoard, one image batch per stage."""
    out = tmp_path_factory.mktemp("tracked")
    proc = run_cli("logger=wandb+tb", "trainer.vis.num_batches=1", "trial_timestamp=t1",
                   "logger.wandb.tags=[smoke]", out=out, cache=cache,
                   env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / "unet_t1"


def test_tensorboard_has_every_scalar_per_epoch(tracked_run):
    acc = tensorboard(tracked_run)
    for tag in EPOCH_SCALARS:
        assert [e.step for e in acc.Scalars(tag)] == [1, 2], tag
    assert "run/config/text_summary" in acc.Tags()["tensors"]


def test_tensorboard_has_exactly_the_configured_image_batches(tracked_run):
    images = set(tensorboard(tracked_run).Tags()["images"])
    confusion = {"val/confusion_matrix", "test/confusion_matrix"}  # not sample panels
    assert confusion <= images
    # num_batches=1: one batch per stage although every stage has two batches.
    assert images - confusion == {f"{s}/batch_00/{p}" for s in STAGES for p in PANELS}
    acc = tensorboard(tracked_run)
    assert [e.step for e in acc.Images("val/batch_00/grid")] == [1, 2]
    grid = acc.Images("val/batch_00/grid")[0]
    single = acc.Images("val/batch_00/rgb")[0]
    assert grid.width > 3 * single.width  # four panels side by side


def test_wandb_offline_run_has_scalars_images_and_metadata(tracked_run):
    [run_dir] = offline_runs(tracked_run)
    run = read_offline_run(run_dir)
    assert run.run_id == "unet_t1"
    assert run.exit_code == 0
    for key in ("train_loss", "val_loss", "val_mean_iou", "learning_rate", "inference_mean_iou"):
        assert [epoch for epoch, _ in run.series(key)] == [1, 2], key
    files = run_dir / "files"
    for stage in STAGES:
        key = f"{stage}/batch_00/overlay"
        rows = [row for row in run.history if f"{key}/path" in row]
        assert [row["epoch"] for row in rows] == [1, 2]  # one overlay per epoch
        overlay = cv2.imread(str(files / rows[0][f"{key}/path"]), cv2.IMREAD_UNCHANGED)
        for mask in ("ground_truth", "predictions"):
            ids = cv2.imread(str(files / rows[0][f"{key}/masks/{mask}/path"]), cv2.IMREAD_UNCHANGED)
            assert ids.shape == overlay.shape[:2]  # the mask lies exactly over the RGB
            assert set(np.unique(ids)) <= set(range(9)) | {255}
        assert any(f"{stage}/batch_00/grid/path" in row for row in run.history)
    meta = run.config["meta"]
    assert meta["dataset"]["name"] == "synthetic"
    assert meta["dataset"]["input_channels"] == 8
    assert meta["dataset"]["split_sizes"]["train"] > 0
    assert meta["model_parameters"] > 1000
    assert meta["trial_timestamp"] == "t1"
    assert run.config["model"]["arch"] == "Unet"
    assert "${" not in str(run.config)  # resolved before it left the process
    assert run.summary["val_mean_iou"]["max"] == max(v for _, v in run.series("val_mean_iou"))


class _Refuse(http.server.BaseHTTPRequestHandler):
    def _deny(self):
        body = b'{"errors": ["permission denied"]}'
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _deny

    def log_message(self, *args):
        pass


class _Hang(http.server.BaseHTTPRequestHandler):
    def _hang(self):
        time.sleep(30)  # accepts the connection, never answers in time

    do_GET = do_POST = do_PUT = _hang

    def log_message(self, *args):
        pass


def _serve(handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def refusing_server():
    server = _serve(_Refuse)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def hanging_server():
    server = _serve(_Hang)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("server", ["refusing", "hanging", "nothing_listens"])
def test_training_carries_on_when_wandb_cannot_start(tmp_path, cache, request, server):
    url = (request.getfixturevalue(f"{server}_server") if server != "nothing_listens"
           else f"http://127.0.0.1:{_free_port()}")
    init_timeout = 6
    before = wandb_core_processes()
    proc = run_cli("logger=wandb+tb", f"logger.wandb.init_timeout={init_timeout}",
                   "trial_timestamp=w", "trainer.vis.num_batches=1", out=tmp_path, cache=cache,
                   env={"WANDB_MODE": "online", "WANDB_BASE_URL": url,
                        "WANDB_API_KEY": DUMMY_KEY})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    warning = [line for line in output.splitlines() if "Logger 'wandb' could not start" in line]
    assert len(warning) == 1 and "training continues" in warning[0]
    seconds = float(warning[0].split("could not start after ")[1].split(" s")[0])
    assert seconds < init_timeout + 5
    acc = tensorboard(tmp_path / "unet_w")
    for tag in EPOCH_SCALARS:
        assert [e.step for e in acc.Scalars(tag)] == [1, 2], tag
    assert not (wandb_core_processes() - before), "a failed init left wandb-core running"


def test_wandb_disabled_writes_nothing_and_leaves_no_process(tmp_path, cache):
    before = wandb_core_processes()
    proc = run_cli("logger=wandb+tb", "trial_timestamp=d", "trainer.epochs=1", out=tmp_path,
                   cache=cache, env={"WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (tmp_path / "unet_d" / "wandb").exists()
    assert (tmp_path / "unet_d" / "tensorboard").is_dir()
    assert not (wandb_core_processes() - before)


def test_logger_list_selection_is_the_same_as_the_composite(tmp_path, cache):
    proc = run_cli("logger=[wandb,tensorboard]", "trial_timestamp=l", "trainer.epochs=1",
                   "trainer.vis.num_batches=0", out=tmp_path, cache=cache,
                   env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert offline_runs(tmp_path / "unet_l")
    assert (tmp_path / "unet_l" / "tensorboard").is_dir()


def test_secrets_never_reach_any_file_of_the_run(tmp_path, cache):
    api_key = "k3y" + "0123456789" * 3 + "abcdefg"  # 40 characters, like a real key
    token = "tok-" + "s3cr3t-value-from-env"
    proc = run_cli("logger=wandb+tb", "trial_timestamp=sec", "trainer.epochs=1",
                   "trainer.vis.num_batches=1", "logger.wandb.notes=${oc.env:MY_SERVICE_TOKEN}",
                   out=tmp_path, cache=cache,
                   env={"WANDB_MODE": "offline", "WANDB_API_KEY": api_key,
                        "MY_SERVICE_TOKEN": token})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = [p for p in (tmp_path / "unet_sec").rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and len(files) > 8
    for path in files:
        data = path.read_bytes()
        assert api_key.encode() not in data, path
        assert token.encode() not in data, path
    assert "notes: '***'" in (tmp_path / "unet_sec" / "config.yaml").read_text()
