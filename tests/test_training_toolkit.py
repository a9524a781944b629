"""The research toolkit of the loop: losses, class weights, gradient accumulation, EMA, early
stopping, test-time augmentation and sliding windows, step curves, confusion matrices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from test_nonfinite import make_trainer  # noqa: E402
from wandb_reader import read_offline_run, read_records  # noqa: E402

LOSSES = ["ce", "dice", "focal", "lovasz", "ce+dice"]


def loss_cfg(name, **kw):
    from omegaconf import OmegaConf

    from event_seg.config import LossConfig

    return OmegaConf.merge(OmegaConf.structured(LossConfig), {"name": name, **kw})


# -- losses ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", LOSSES)
def test_ignored_pixels_change_no_loss(name):
    from event_seg.engine.losses import build_loss

    torch.manual_seed(0)
    loss = build_loss(loss_cfg(name), num_classes=4, ignore_index=255)
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    target = torch.randint(0, 4, (2, 8, 8))
    target[:, :3] = 255  # the top rows are unlabelled
    other = logits.detach().clone()
    other[:, :, :3] = torch.randn(2, 4, 3, 8) * 50  # wild predictions where nothing is labelled
    value = loss(logits, target)
    assert torch.isfinite(value)
    assert float(loss(other, target)) == pytest.approx(float(value.detach()), rel=1e-6, abs=1e-7)
    value.backward()  # and no gradient reaches the ignored pixels
    assert float(logits.grad[:, :, :3].abs().max()) == 0.0
    assert float(logits.grad[:, :, 3:].abs().max()) > 0.0


def test_class_weights_and_label_smoothing_change_cross_entropy_as_torch_defines_it():
    from event_seg.engine.losses import build_loss

    torch.manual_seed(1)
    logits, target = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    weighted = build_loss(loss_cfg("ce", class_weights=[1.0, 2.0, 0.5],
                                   label_smoothing=0.1), 3, 255)
    expected = nn.functional.cross_entropy(logits, target, weight=torch.tensor([1.0, 2.0, 0.5]),
                                           label_smoothing=0.1)
    assert float(weighted(logits, target)) == pytest.approx(float(expected), rel=1e-6)
    both = build_loss(loss_cfg("ce+dice", ce_weight=0.3, dice_weight=2.0), 3, 255)
    ce = build_loss(loss_cfg("ce"), 3, 255)(logits, target)
    dice = build_loss(loss_cfg("dice"), 3, 255)(logits, target)
    assert float(both(logits, target)) == pytest.approx(float(0.3 * ce + 2.0 * dice), rel=1e-6)


def test_auto_class_weights_are_inverse_square_root_frequencies():
    from event_seg.engine.losses import weights_from_counts

    w = weights_from_counts(np.array([900, 100, 0]))
    # 1/sqrt(0.9) and 1/sqrt(0.1), scaled so that 0.9 * w0 + 0.1 * w1 = 1; an absent class
    # gets the largest weight of the present ones.
    raw = np.array([1 / np.sqrt(0.9), 1 / np.sqrt(0.1)])
    raw /= 0.9 * raw[0] + 0.1 * raw[1]
    assert w == pytest.approx([raw[0], raw[1], raw[1]])


@pytest.mark.parametrize("overrides,expected", [
    (("loss.class_weights=[1,1,1,1,1,1,1,1,nan]",), "finite non-negative numbers"),
    (("loss=ce+dice", "loss.ce_weight=inf"), "must be finite and >= 0"),
    (("trainer.early_stopping.min_delta=nan",), "min_delta=nan must be a number >= 0"),
    (("loss=dice", "loss.label_smoothing=0.2"), "loss.label_smoothing=0.2 is not used by "
                                                "loss=dice (only by ce and ce+dice)"),
    (("loss=ce", "loss.dice_weight=3"), "loss.dice_weight=3.0 is not used by loss=ce"),
    (("trainer.ema.decay=1",), "trainer.ema.decay=1.0 must be in (0, 1)"),
    (("trainer.accumulate_grad_batches=0",), "must be >= 1"),
    (("evaluate.sliding_window.size=[48,64]",), "must be multiples of 32"),
])
def test_toolkit_settings_are_checked_before_anything_runs(overrides, expected):
    from hydra import compose, initialize_config_dir

    from event_seg.config import validate
    from event_seg.errors import ConfigError

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "trial_timestamp=x"])
    with pytest.raises(ConfigError) as caught:
        validate(cfg)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_bad_loss_settings_are_one_line_errors(tmp_path, cache):
    proc = subprocess.run(
        [sys.executable, "-m", "event_seg.train", "debug=smoke", "logger=none",
         f"paths.output_root={tmp_path}", "loss=lovasz", "loss.class_weights=[1,2]"],
        cwd=REPO, env={**os.environ, "EVENT_SEG_CACHE": str(cache)}, capture_output=True,
        text=True, timeout=300)
    assert proc.returncode != 0
    assert "loss.class_weights is not used by loss=lovasz" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# -- gradient accumulation -------------------------------------------------------------------

class PixelNet(nn.Module):
    """No BatchNorm: the gradient of a batch is then exactly the mean of its parts'."""

    def __init__(self, in_channels, classes):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(8, classes, 1))

    def forward(self, x):
        return self.net(x)


def one_sgd_step(tmp_path, cache, batch, accumulate, limit):
    from event_seg.engine.trainer import Trainer

    trainer = make_trainer(
        tmp_path, cache, f"trainer.batch_size={batch}",
        f"trainer.accumulate_grad_batches={accumulate}", f"trainer.limit_batches={limit}",
        "dataset.synthetic.train_sequences=3", "optimizer=sgd", "optimizer.lr=1.0",
        "optimizer.momentum=0.0", "optimizer.weight_decay=0.0", "scheduler=none",
        "trainer.grad_clip_norm=null", "loss.class_weights=null")
    model = PixelNet(trainer.info.input_channels, trainer.info.num_classes)
    trainer = Trainer(trainer.cfg, model, trainer.data, trainer.loggers, trainer.trial)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train_one_epoch(1)
    return trainer, [b - p.detach() for b, p in zip(before, model.parameters())]  # = lr * grad


def test_accumulating_two_batches_of_4_gives_the_gradient_of_one_batch_of_8(tmp_path, cache):
    big, big_step = one_sgd_step(tmp_path / "b8", cache, batch=8, accumulate=1, limit=1)
    acc, acc_step = one_sgd_step(tmp_path / "b4", cache, batch=4, accumulate=2, limit=2)
    assert big.global_step == acc.global_step == 1  # one optimizer step each
    for g8, g4 in zip(big_step, acc_step):
        torch.testing.assert_close(g4, g8, rtol=1e-4, atol=1e-6)
    # A partial last group still steps: 3 batches in groups of 2 are 2 optimizer steps.
    part, _ = one_sgd_step(tmp_path / "p", cache, batch=2, accumulate=2, limit=3)
    assert part.global_step == 2 and part.steps_per_epoch == 2


# -- EMA and early stopping ------------------------------------------------------------------

def test_ema_is_validated_saved_and_resumed(tmp_path, cache):
    """The EMA lives in the checkpoint and a resume continues from it as saved. (Bit-identical
    resume of a whole run, EMA included, is the CLI's: test_exact_resume runs with an EMA.)"""
    ema = ("trainer.ema.decay=0.9",)
    first = make_trainer(tmp_path, cache, "trainer.epochs=1", *ema)
    first.fit()
    saved = torch.load(first.trial.last_checkpoint, weights_only=True)
    assert saved["ema"]["updates"] == first.global_step == first.steps_per_epoch
    resumed = make_trainer(tmp_path, cache, "trainer.epochs=2", *ema)
    assert resumed.start_epoch == 1 and resumed.ema.updates == saved["ema"]["updates"]
    for key, value in resumed.ema.model.state_dict().items():
        assert torch.equal(value, saved["ema_model"][key]), key
    # The EMA differs from the raw weights, and validation scores the EMA.
    assert any(not torch.equal(saved["ema_model"][k], saved["model"][k]) for k in saved["model"]
               if saved["model"][k].is_floating_point())
    val = resumed.evaluate(resumed.data.loaders["val"], "val", 1, visualize=False)
    ema_model, resumed.ema = resumed.ema, None
    raw = resumed.evaluate(resumed.data.loaders["val"], "val", 1, visualize=False)
    resumed.ema = ema_model
    assert raw["val_loss"] != pytest.approx(val["val_loss"])
    summary = json.loads(first.trial.metrics_file.read_text())
    assert summary["best_val_mean_iou"] == pytest.approx(val["val_mean_iou"])  # the EMA's


def test_early_stopping_fires_and_keeps_the_best(tmp_path, cache):
    # No later epoch can beat the first by 0.5 mIoU: epochs 2 and 3 count as stale.
    trainer = make_trainer(tmp_path, cache, "trainer.epochs=5",
                           "trainer.early_stopping.patience=2",
                           "trainer.early_stopping.min_delta=0.5")
    best = trainer.fit()
    summary = json.loads(trainer.trial.metrics_file.read_text())
    assert summary["stopped_early_at_epoch"] == 3
    assert best == summary["best_val_mean_iou"] and summary["best_epoch"] <= 3
    assert "test_mean_iou" in summary  # the final test still ran, on the best checkpoint
    assert torch.load(trainer.trial.last_checkpoint, weights_only=True)["epoch"] == 3
    # Killed in the final test (no metrics.json yet), then resumed: no fourth epoch, the test.
    trainer.trial.metrics_file.unlink()
    resumed = make_trainer(tmp_path, cache, "trainer.epochs=5",
                           "trainer.early_stopping.patience=2",
                           "trainer.early_stopping.min_delta=0.5")
    step = resumed.global_step
    assert resumed.fit() == best and resumed.global_step == step
    assert json.loads(resumed.trial.metrics_file.read_text())["stopped_early_at_epoch"] == 3


# -- evaluation ------------------------------------------------------------------------------

def test_sliding_windows_and_hflip_tta_predict_as_defined():
    from event_seg.engine.inference import Predictor, window_starts

    assert window_starts(100, 32, 16) == [0, 16, 32, 48, 64, 68]  # the last one flush
    assert window_starts(20, 32, 16) == [0]
    torch.manual_seed(0)
    pixelwise = nn.Conv2d(3, 4, 1)  # no context: windows cannot change its output
    x = torch.randn(2, 3, 64, 96)
    windowed = Predictor(window=[32, 32], stride=[16, 24])(pixelwise, x)
    torch.testing.assert_close(windowed, pixelwise(x), rtol=1e-5, atol=1e-5)
    context = nn.Conv2d(3, 4, 3, padding=1)
    tta = Predictor(tta="hflip")(context, x)
    p = torch.softmax(context(x), 1)
    mirrored = torch.flip(torch.softmax(context(torch.flip(x, [3])), 1), [3])
    # The two views' probabilities are averaged: the softmax of what TTA returns.
    torch.testing.assert_close(torch.softmax(tta, 1), (p + mirrored) / 2, rtol=1e-5, atol=1e-6)
    assert Predictor().plain and Predictor()(context, x) is not None


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_scores_a_prediction_alike_whichever_predictor_made_it(name):
    """One window covering the input, or hflip TTA of a mirror-symmetric model, predicts what
    plain prediction predicts: every loss (focal's per-class sigmoid too) scores it alike."""
    from event_seg.engine.inference import Predictor
    from event_seg.engine.losses import build_loss

    torch.manual_seed(0)
    loss = build_loss(loss_cfg(name, class_weights=[0.5, 2.0, 1.0, 3.0]), 4, 255)
    x = torch.randn(2, 3, 16, 24)
    target = torch.randint(0, 4, (2, 16, 24))
    target[:, :2] = 255
    model = nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        model.weight.mul_(4)  # confident predictions, where sigmoid and softmax differ most
        plain = float(loss(Predictor()(model, x), target))
        window = Predictor(window=[16, 24], stride=[16, 24])(model, x)
        assert float(loss(window, target)) == pytest.approx(plain, rel=1e-5, abs=1e-6)
        model.weight.copy_((model.weight + torch.flip(model.weight, [3])) / 2)  # mirror-symmetric
        plain = float(loss(Predictor()(model, x), target))
        tta = Predictor(tta="hflip")(model, x)
        assert float(loss(tta, target)) == pytest.approx(plain, rel=1e-5, abs=1e-6)


# -- one tracked run: step curves, confusion matrices, per-class table, evaluate ---------------

@pytest.fixture(scope="module")
def toolkit_run(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("toolkit")
    proc = subprocess.run(
        [sys.executable, "-m", "event_seg.train", "debug=smoke", "logger=wandb+tb",
         "trial_timestamp=tk", f"paths.output_root={out}", "trainer.limit_batches=3",
         "trainer.log_every_n_steps=1", "trainer.accumulate_grad_batches=2", "loss=ce+dice",
         "loss.class_weights=auto", "trainer.ema.decay=0.9", "evaluate.tta=hflip",
         "evaluate.sliding_window.size=[32,32]"],
        cwd=REPO, env={**os.environ, "EVENT_SEG_CACHE": str(cache), "WANDB_MODE": "offline"},
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / "unet_tk", proc.stdout + proc.stderr


def test_step_curves_reach_both_trackers_against_the_global_step(toolkit_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = toolkit_run
    # 3 batches in groups of 2: steps 1 and 2 in epoch 1, 3 and 4 in epoch 2; a point per step.
    steps = EventAccumulator(str(run_dir / "tensorboard" / "steps"))
    steps.Reload()
    assert [e.step for e in steps.Scalars("step/train_loss")] == [1, 2, 3, 4]
    assert [e.step for e in steps.Scalars("step/learning_rate")] == [1, 2, 3, 4]
    epochs = EventAccumulator(str(run_dir / "tensorboard"))
    epochs.Reload()
    assert [e.step for e in epochs.Scalars("train_loss")] == [1, 2]  # per-epoch names kept
    [offline] = list((run_dir / "wandb").glob("offline-run-*"))
    run = read_offline_run(offline)
    rows = [r for r in run.history if "step/train_loss" in r]
    assert [r["global_step"] for r in rows] == [1, 2, 3, 4]
    defined = {r.metric.name: r.metric.step_metric for r in read_records(
        next(offline.glob("run-*.wandb"))) if r.WhichOneof("record_type") == "metric"}
    assert defined["step/train_loss"] == "global_step"


def test_confusion_matrices_and_the_per_class_table_are_logged(toolkit_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = toolkit_run
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    assert [e.step for e in acc.Images("val/confusion_matrix")] == [1, 2]
    assert [e.step for e in acc.Images("test/confusion_matrix")] == [2]
    png = acc.Images("val/confusion_matrix")[0].encoded_image_string
    import cv2

    picture = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape[0] > 100 and picture.shape[1] > 100
    [offline] = list((run_dir / "wandb").glob("offline-run-*"))
    run = read_offline_run(offline)
    table = run.summary["per_class_iou"]
    assert table["_type"] == "table-file" and table["ncols"] == 3
    assert any("val/confusion_matrix" in k for r in run.history for k in r)


def test_the_run_counted_class_weights_and_evaluate_reproduces_its_test_score(toolkit_run):
    run_dir, output = toolkit_run
    weights = json.loads((run_dir / "class_weights.json").read_text())
    assert len(weights["weights"]) == len(weights["class_names"]) and sum(weights["pixels"])
    assert "loss.class_weights=auto" in output and "tta=hflip, sliding window 32x32" in output
    trained = json.loads((run_dir / "metrics.json").read_text())
    proc = subprocess.run(
        [sys.executable, "-m", "event_seg.evaluate",
         f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}", "logger=none"],
        cwd=REPO, env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Scoring the EMA of the weights" in proc.stderr
    evaluated = json.loads(next(run_dir.glob("eval*/metrics.json")).read_text()) \
        if list(run_dir.glob("eval*/metrics.json")) else None
    if evaluated is None:
        [path] = [p for p in run_dir.rglob("metrics.json") if p.parent != run_dir]
        evaluated = json.loads(path.read_text())
    # The same weights (EMA), the same prediction (TTA + windows), the same loss weights.
    assert evaluated["mean_iou"] == pytest.approx(trained["test_mean_iou"], abs=1e-6)
    assert evaluated["loss"] == pytest.approx(trained["test_loss"], rel=1e-5)
