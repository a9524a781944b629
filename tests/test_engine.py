"""The loop's small parts: schedules, metrics, checkpoints, the logger group, pictures."""

from __future__ import annotations

import logging
import math
import random

import numpy as np
import pytest
import torch

from event_seg.engine.checkpoint import (CheckpointError, link_checkpoint, load_checkpoint,
                                         restore_rng_state, rng_state, save_checkpoint)
from event_seg.engine.metrics import SegmentationMetrics
from event_seg.engine.schedule import lr_factor
from event_seg.loggers.base import Logger, LoggerGroup
from event_seg.viz import IGNORE_COLOR, colorize, event_frame


def test_poly_and_cosine_schedules_with_warmup():
    assert lr_factor(0, 100, 10, "poly") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "poly") == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "poly") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "poly", power=1.0) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "poly") == pytest.approx(0.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 0, "cosine", min_lr_ratio=0.01) == pytest.approx(0.01)
    assert lr_factor(70, 100, 0, "none") == 1.0


def test_metrics_match_a_hand_computed_confusion_matrix():
    # target / prediction over 8 pixels, 3 classes, one ignored pixel.
    target = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 255]])
    pred = torch.tensor([[0, 0, 1, 1, 1, 2, 0, 2]])
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 2, 1).float()[..., None]
    m = SegmentationMetrics(3, 255, ["a", "b", "c"], "cpu")
    m.update(logits, target[..., None])
    out = m.compute("val")
    iou = {"a": 2 / 4, "b": 2 / 3, "c": 1 / 2}  # tp / (tp + fp + fn), ignored pixel excluded
    for name, value in iou.items():
        assert out[f"val_iou/{name}"] == pytest.approx(value)
    assert out["val_mean_iou"] == pytest.approx(sum(iou.values()) / 3)
    assert out["val_weighted_mean_iou"] == pytest.approx(3 / 7 * 0.5 + 2 / 7 * 2 / 3 + 2 / 7 * 0.5)
    assert out["val_pixel_accuracy"] == pytest.approx(5 / 7)


def test_metrics_leave_absent_classes_out_of_the_mean():
    target = torch.zeros(1, 4, dtype=torch.long)
    logits = torch.zeros(1, 3, 4)
    logits[:, 0] = 1
    m = SegmentationMetrics(3, 255, ["a", "b", "c"], "cpu")
    m.update(logits[..., None], target[..., None])
    out = m.compute("val")
    assert out["val_mean_iou"] == pytest.approx(1.0)
    assert math.isnan(out["val_iou/b"])


def test_checkpoint_roundtrip_restores_rng_and_leaves_no_temp_files(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = {"model": {"w": torch.arange(3.0)}, "epoch": 4, "rng": rng_state()}
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(state, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
    loaded = load_checkpoint(path)
    restore_rng_state(loaded["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert loaded["epoch"] == 4


def test_best_checkpoint_link_keeps_its_bytes_when_last_is_rewritten(tmp_path):
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    save_checkpoint({"epoch": 1}, last)
    link_checkpoint(last, best)
    save_checkpoint({"epoch": 2}, last)
    assert load_checkpoint(best)["epoch"] == 1
    assert load_checkpoint(last)["epoch"] == 2


def test_corrupt_checkpoint_is_reported_by_name(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"last.pt \(100 bytes\).*corrupt or truncated"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"vm\n", b"not a checkpoint at all" * 50])
def test_foreign_bytes_are_called_corrupt_not_code(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="model.pt .*corrupt or truncated") as e:
        load_checkpoint(path)
    assert "pickled Python objects" not in str(e.value)


class _Recorder(Logger):
    name = "recorder"

    def __init__(self):
        self.seen = []

    def log_metrics(self, metrics, epoch):
        self.seen.append((dict(metrics), epoch))


class _Broken(Logger):
    name = "broken"

    def log_metrics(self, metrics, epoch):
        raise ConnectionError("tracker down")


def test_logger_group_drops_a_failing_logger_and_keeps_the_others(caplog):
    good = _Recorder()
    group = LoggerGroup([_Broken(), good])
    with caplog.at_level(logging.WARNING):
        group.log_metrics({"val_mean_iou": 0.5}, 1)
        group.log_metrics({"val_mean_iou": 0.6}, 2)
    assert [e for _, e in good.seen] == [1, 2]
    assert len(group) == 1
    assert sum("broken" in r.message for r in caplog.records) == 1


def test_colorize_uses_palette_and_marks_ignore():
    mask = np.array([[0, 1], [255, 1]])
    img = colorize(mask, [[10, 20, 30], [40, 50, 60]], ignore_index=255)
    assert img.dtype == np.uint8 and img.shape == (2, 2, 3)
    assert tuple(img[0, 0]) == (10, 20, 30)
    assert tuple(img[1, 0]) == IGNORE_COLOR


def test_event_frame_colours_polarities_apart():
    hist = np.zeros((2, 2, 2), np.float32)
    hist[1, 0, 0] = 3  # positive
    hist[0, 1, 1] = 3  # negative
    img = event_frame(hist, "histogram")
    assert img[0, 0, 0] > img[0, 0, 2]  # red
    assert img[1, 1, 2] > img[1, 1, 0]  # blue
    assert tuple(img[0, 1]) == (255, 255, 255)  # no events: background


class _Payload:
    """Stands for a pickled object that would run code when unpickled."""

    def __reduce__(self):
        return (print, ("this would have run",))


def test_checkpoint_carrying_pickled_code_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match=r"refused to load .*evil\.pt.*pickled Python objects"):
        load_checkpoint(path)


def test_output_folder_problems_are_reported_before_training(tmp_path):
    from types import SimpleNamespace

    from event_seg.engine.trial import check_output_folder
    from event_seg.errors import ConfigError

    check_output_folder(tmp_path / "run", needed_bytes=10 * 2 ** 20)  # fine: nothing raised
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot write to the run folder .*file/run"):
        check_output_folder(blocker / "run", needed_bytes=1)
    full = lambda path: SimpleNamespace(free=30 * 2 ** 20)  # noqa: E731
    with pytest.raises(ConfigError, match=r"has 30 MiB free; this run needs about 264 MiB"):
        check_output_folder(tmp_path / "run", needed_bytes=100 * 2 ** 20, disk_usage=full)


def test_a_run_folder_names_its_best_then_last_checkpoint(tmp_path):
    """What event-seg-evaluate and event-seg-export accept for checkpoint=."""
    from event_seg.engine.checkpoint import find_checkpoint

    folder = tmp_path / "unet_x" / "checkpoints"
    save_checkpoint({"epoch": 1}, folder / "last.pt")
    assert find_checkpoint(tmp_path / "unet_x") == folder / "last.pt"
    save_checkpoint({"epoch": 1}, folder / "best.pt")
    assert find_checkpoint(tmp_path / "unet_x") == folder / "best.pt"
    assert find_checkpoint(folder / "last.pt") == folder / "last.pt"
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07onnx")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        find_checkpoint(tmp_path / "model.onnx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="is a folder without checkpoints/best.pt"):
        find_checkpoint(tmp_path / "empty")
