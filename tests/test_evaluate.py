"""event-seg-evaluate: rebuilds everything from the checkpoint, prints the table, writes the JSON
and the PNG panels, and optionally logs to a tracker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("outputs")
    env = {**os.environ, "EVENT_SEG_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, "-m", "event_seg.train", "debug=smoke", "logger=none",
                           "trial_timestamp=ev", f"paths.output_root={out}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / "unet_ev"


def evaluate_cli(*args, cache):
    # Run from another folder: the stored config must be enough, not the working directory.
    env = {**os.environ, "EVENT_SEG_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "event_seg.evaluate", *args], cwd="/",
                          env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=600)


def test_evaluate_prints_table_writes_json_and_panels_and_logs(trained, cache):
    proc = evaluate_cli(f"checkpoint={trained / 'checkpoints' / 'best.pt'}", "logger=tensorboard",
                        cache=cache)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = trained / "eval" / "test"
    result = json.loads((out / "metrics.json").read_text())
    training = json.loads((trained / "metrics.json").read_text())
    # The same checkpoint on the same split with the same settings: the same numbers.
    assert result["mean_iou"] == pytest.approx(training["test_mean_iou"], abs=1e-12)
    assert result["pixel_accuracy"] == pytest.approx(training["test_pixel_accuracy"], abs=1e-12)
    assert result["split"] == "test" and result["epoch"] == training["best_epoch"]
    assert set(result["per_class_iou"]) >= {"road", "vehicle", "person"}
    for line in ("mean IoU", "weighted mean IoU", "pixel accuracy", "road", "vehicle"):
        assert line in proc.stdout
    assert f"{result['mean_iou']:.4f}" in proc.stdout

    panels = sorted((out / "panels").glob("*.png"))
    assert [p.name for p in panels] == ["test_batch_00.png", "test_batch_01.png"]
    image = cv2.imread(str(panels[0]))
    assert image is not None and image.shape[1] >= 4 * 64 and image.shape[0] >= 32

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert acc.Scalars("test_mean_iou")[0].value == pytest.approx(result["mean_iou"])
    assert any(t.startswith("test/batch_00/") for t in acc.Tags()["images"])


def test_evaluate_other_split_with_overrides(trained, cache, tmp_path):
    proc = evaluate_cli(f"checkpoint={trained / 'checkpoints' / 'last.pt'}", "split=val",
                        f"output_dir={tmp_path / 'v'}", "trainer.vis.num_batches=1",
                        "trainer.batch_size=1", cache=cache)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert result["split"] == "val"
    assert [p.name for p in (tmp_path / "v" / "panels").glob("*.png")] == ["val_batch_00.png"]
    # The run trained with trainer.limit_batches=2 (debug=smoke): with batches of 1 that would
    # be 2 samples. Evaluation ignores it and scores all 3 (1 sequence of 4 frames, the first
    # has no events window).
    assert result["samples"] == result["split_samples"] == 3
    assert "scored" not in proc.stdout


def test_evaluate_limit_batches_only_when_asked(trained, cache, tmp_path, capsys, monkeypatch):
    from event_seg.evaluate import main

    monkeypatch.setenv("EVENT_SEG_CACHE", str(cache))
    code = main([f"checkpoint={trained / 'checkpoints' / 'best.pt'}", f"output_dir={tmp_path}",
                 "trainer.limit_batches=1", "trainer.vis.num_batches=0"])
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert (result["samples"], result["split_samples"]) == (2, 3)  # one batch of 2
    assert "scored 2 of 3 samples (trainer.limit_batches=1)" in out


def test_evaluate_config_whole_split_and_absolute_root(trained, tmp_path, monkeypatch):
    from event_seg.engine.checkpoint import load_checkpoint
    from event_seg.evaluate import evaluation_config

    best = trained / "checkpoints" / "best.pt"
    stored = load_checkpoint(best)["config"]
    assert stored["trainer"]["limit_batches"] == 2
    assert evaluation_config(stored, [], best).trainer.limit_batches is None
    assert evaluation_config(stored, ["trainer.limit_batches=1"], best).trainer.limit_batches == 1
    monkeypatch.chdir(tmp_path)
    cfg = evaluation_config(stored, ["dataset.root=data/../sets/synthetic"], best)
    assert cfg.dataset.root == os.path.join(os.getcwd(), "sets", "synthetic")
    cfg = evaluation_config(stored, ["dataset=event_scapes", "dataset.root='~/EventScape'"], best)
    assert cfg.dataset.root == os.path.join(os.path.expanduser("~"), "EventScape")


@pytest.mark.parametrize("args, message", [
    (["model=fpn"], "the checkpoint fixes model"),
    (["dataset.heigth=64"], "heigth"),
    (["split=nope"], "split=nope"),
])
def test_evaluate_bad_arguments_are_one_line_errors(trained, cache, args, message, capsys,
                                                    monkeypatch):
    from event_seg.evaluate import main

    monkeypatch.setenv("EVENT_SEG_CACHE", str(cache))
    code = main([f"checkpoint={trained / 'checkpoints' / 'best.pt'}", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_evaluate_refuses_a_corrupt_checkpoint(tmp_path, capsys):
    from event_seg.evaluate import main

    bad = tmp_path / "best.pt"
    bad.write_bytes(b"\x80\x02garbage")
    assert main([f"checkpoint={bad}"]) == 2
    assert "best.pt" in capsys.readouterr().err


def evaluate_in_process(trained, cache, monkeypatch, capsys, out, *args):
    """``event-seg-evaluate`` on the run's best.pt: (exit code, metrics.json or None, stdout,
    stderr)."""
    from event_seg.evaluate import main

    monkeypatch.setenv("EVENT_SEG_CACHE", str(cache))
    code = main([f"checkpoint={trained / 'checkpoints' / 'best.pt'}", f"output_dir={out}",
                 "trainer.vis.num_batches=0", *args])
    printed = capsys.readouterr()
    result = json.loads((out / "metrics.json").read_text()) if code == 0 else None
    return code, result, printed.out, printed.err


def test_focal_loss_is_the_same_with_one_sliding_window_covering_the_input(
        trained, cache, tmp_path, monkeypatch, capsys):
    # One window of the whole 32x64 input predicts exactly what plain prediction predicts.
    runs = [evaluate_in_process(trained, cache, monkeypatch, capsys, tmp_path / str(i),
                                "split=val", "loss.name=focal", *extra)
            for i, extra in enumerate([[], ["evaluate.sliding_window.size=[32,64]",
                                            "evaluate.sliding_window.stride=[32,64]"]])]
    (code_a, plain, _, err_a), (code_b, window, _, err_b) = runs
    assert code_a == code_b == 0, err_a + err_b
    assert window["mean_iou"] == pytest.approx(plain["mean_iou"], abs=1e-9)
    assert window["loss"] == pytest.approx(plain["loss"], rel=1e-5)


def test_class_weighted_loss_does_not_depend_on_the_batch_size(trained, cache, tmp_path,
                                                               monkeypatch, capsys):
    weights = "loss.class_weights=[0.1,5,1,1,1,1,1,1,1]"
    results = []
    for batch in (1, 3):
        code, result, _, err = evaluate_in_process(trained, cache, monkeypatch, capsys,
                                                   tmp_path / str(batch), "split=val", weights,
                                                   f"trainer.batch_size={batch}")
        assert code == 0, err
        results.append(result)
    assert results[0]["samples"] == results[1]["samples"] == 3
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-6)


def test_the_train_split_is_scored_whole_unaugmented_and_in_order(trained, cache, tmp_path,
                                                                  monkeypatch, capsys):
    # 2 sequences of 4 frames, the first of each without an events window: 6 samples. Batches
    # of 4 must not drop the last 2, and a train-time flip must not reach the evaluation.
    code, big, out, err = evaluate_in_process(trained, cache, monkeypatch, capsys,
                                              tmp_path / "a", "split=train",
                                              "trainer.batch_size=4")
    assert code == 0, err
    assert big["samples"] == big["split_samples"] == 6
    assert not any(line.startswith("scored") for line in out.splitlines()), out
    code, flipped, _, err = evaluate_in_process(trained, cache, monkeypatch, capsys,
                                                tmp_path / "b", "split=train",
                                                "trainer.batch_size=1", "dataset.augment.hflip=1.0")
    assert code == 0, err
    assert flipped["samples"] == 6
    assert flipped["mean_iou"] == pytest.approx(big["mean_iou"], abs=1e-9)
    assert flipped["per_class_iou"] == pytest.approx(big["per_class_iou"], abs=1e-9)


def test_evaluate_never_writes_into_a_run_folder(trained, cache, tmp_path, monkeypatch, capsys):
    before = {p: p.read_bytes() for p in trained.iterdir() if p.is_file()}
    for folder in (trained, trained / "checkpoints"):
        code, _, _, err = evaluate_in_process(trained, cache, monkeypatch, capsys, folder)
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert str(trained) in err and "output_dir" in err
    assert {p: p.read_bytes() for p in trained.iterdir() if p.is_file()} == before
    assert not (trained / "panels").exists() and not (trained / "checkpoints" / "panels").exists()


def test_a_misspelt_key_gets_the_same_hint_in_every_command(trained, cache, capsys,
                                                            monkeypatch):
    from event_seg import export, prepare
    from event_seg.evaluate import main as evaluate

    monkeypatch.setenv("EVENT_SEG_CACHE", str(cache))
    hint = "unknown config key: trainer.batchsize (did you mean trainer.batch_size?)"
    best = f"checkpoint={trained / 'checkpoints' / 'best.pt'}"
    for command, args in ((evaluate, [best]), (prepare.main, ["debug=smoke"])):
        assert command([*args, "trainer.batchsize=2"]) == 2
        err = capsys.readouterr().err
        assert hint in err and len(err.strip().splitlines()) == 1, err
    # Export takes no config overrides: it says so, in one line naming the argument.
    assert export.main([best, "trainer.batchsize=2"]) == 2
    err = capsys.readouterr().err
    assert "trainer.batchsize=: event-seg-export takes no config overrides" in err
    assert len(err.strip().splitlines()) == 1, err


def test_an_earlier_evaluation_folder_is_written_over(trained, cache, tmp_path, monkeypatch,
                                                      capsys):
    # <run>/eval/<split> as event-seg-evaluate wrote it before metrics.json held split_samples:
    # still an evaluation's folder (the default output_dir), not a training run's.
    out = tmp_path / "eval_test"
    code, result, _, err = evaluate_in_process(trained, cache, monkeypatch, capsys, out)
    assert code == 0, err
    older = {k: v for k, v in result.items() if k != "split_samples"}
    (out / "metrics.json").write_text(json.dumps(older))
    code, again, _, err = evaluate_in_process(trained, cache, monkeypatch, capsys, out)
    assert code == 0, err
    assert again["split_samples"] == result["split_samples"]


def test_a_training_metrics_json_alone_is_still_refused(trained, cache, tmp_path, monkeypatch,
                                                        capsys):
    out = tmp_path / "copied"
    out.mkdir()
    (out / "metrics.json").write_bytes((trained / "metrics.json").read_bytes())
    code, _, _, err = evaluate_in_process(trained, cache, monkeypatch, capsys, out)
    assert code == 2 and "training run's metrics.json" in err, err
    # A file that no evaluation wrote is kept too, and the line does not call it a run's.
    (out / "metrics.json").write_text("[1, 2]")
    code, _, _, err = evaluate_in_process(trained, cache, monkeypatch, capsys, out)
    assert code == 2 and "not written by event-seg-evaluate" in err, err
    assert (out / "metrics.json").read_text() == "[1, 2]"


@pytest.mark.parametrize("kind", ["file", "dangling link"])
def test_an_output_dir_that_is_no_folder_is_one_line(trained, cache, tmp_path, monkeypatch,
                                                     capsys, kind):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("notes")
    else:
        out.symlink_to(tmp_path / "missing")
    code, _, _, err = evaluate_in_process(trained, cache, monkeypatch, capsys, out)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"output_dir={out}" in err and "not a folder" in err, err
