"""``event-seg-evaluate checkpoint=<path> [split=test] [output_dir=...] [overrides]``

Scores a checkpoint on one split with the configuration stored inside it, so nothing has to be
remembered from training time:

    event-seg-evaluate checkpoint=outputs/unet_2026-11-29_10-00-00/checkpoints/best.pt
    event-seg-evaluate checkpoint=.../best.pt split=val dataset.root=/data/EventScape logger=wandb
    event-seg-evaluate checkpoint=outputs/unet_2026-11-29_10-00-00   # a run folder: its best.pt

``checkpoint`` is a .pt file or a run folder (its checkpoints/best.pt, else last.pt).

Prints a per-class IoU table with mean IoU, weighted mean IoU and pixel accuracy, writes them to
``<output_dir>/metrics.json`` and the colourised prediction panels (RGB | events | ground truth |
prediction) to ``<output_dir>/panels/``. ``output_dir`` defaults to ``<run folder>/eval/<split>``;
a run folder itself (or its checkpoints/) is refused: evaluation never writes over a training
record. Any split, train included, is scored whole, unaugmented and in order.

Overrides go on top of the stored config: ``key=value`` for single keys (``dataset.root``,
``trainer.batch_size``, ``trainer.vis.num_batches``, ...), and the groups ``dataset=`` (another
preset) and ``logger=`` (send the results to those trackers as well; none by default).

The whole split is scored whatever the training run's ``trainer.limit_batches`` was; pass
``trainer.limit_batches=N`` here to score only the first N batches (``samples`` in metrics.json
then says how many were scored, ``split_samples`` how many the split holds). A relative
``dataset.root`` is taken from the current folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .errors import ConfigError, EventSegError

log = logging.getLogger("event_seg.evaluate")

OWN_ARGS = ("checkpoint", "split", "output_dir")
# What a training run keeps in its folder (docs/run_folders.md). Evaluation writes metrics.json,
# panels/ and tracker logs into output_dir: a folder holding any of these is a run's, refused.
TRAINING_RECORDS = ("config.yaml", "train.log", "checkpoints", ".hydra")
# Config groups an evaluation may swap; the others describe training and are fixed by the
# checkpoint (the model) or mean nothing here (optimizer, scheduler, augmentation).
SWAPPABLE_GROUPS = ("dataset", "logger")


def usage() -> str:
    return "usage: " + (__doc__ or "event-seg-evaluate checkpoint=<path> [overrides]").replace(
        "``", "").strip() + "\n"


def split_arguments(argv: Sequence[str]) -> Tuple[dict, List[str]]:
    """Separates this command's own ``key=value`` arguments from the config overrides."""
    own, overrides = {}, []
    for arg in argv:
        if arg.startswith("-"):
            raise ConfigError(f"unknown option {arg}: event-seg-evaluate takes key=value "
                              f"arguments only (see event-seg-evaluate --help)")
        key, sep, value = arg.partition("=")
        if sep and key in OWN_ARGS:
            own[key] = value
        else:
            overrides.append(arg)
    if not own.get("checkpoint"):
        raise ConfigError("usage: event-seg-evaluate checkpoint=<path to a .pt file> "
                          "[split=test] [output_dir=...] [overrides]")
    return own, overrides


def evaluation_config(stored: dict, overrides: Sequence[str], checkpoint: Path):
    """The stored training config, typed by the schema, with the overrides applied.

    ``trainer.limit_batches`` is not taken from training (the whole split is scored) unless it is
    among the overrides, and a relative ``dataset.root`` override is made absolute against the
    current folder."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from .config import TrainConfig
    from .train import CONFIG_DIR

    if not stored:
        raise ConfigError(f"{checkpoint} holds no training config (not written by event-seg-train)")
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), stored)
    cfg.trainer.limit_batches = None  # a short training run must not shorten the evaluation
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    groups = [o for o in parsed if "." not in o.key_or_group and
              (Path(CONFIG_DIR) / o.key_or_group).is_dir()]
    for o in groups:
        if o.key_or_group not in SWAPPABLE_GROUPS:
            raise ConfigError(
                f"{o.input_line}: the checkpoint fixes {o.key_or_group}; event-seg-evaluate "
                f"swaps only {' and '.join(g + '=' for g in SWAPPABLE_GROUPS)} (set single keys "
                f"with key=value)")
    if not any(o.key_or_group.split(".")[0] == "logger" for o in parsed):
        cfg.logger = {}  # the training run's trackers are not reused unless asked for
    if groups:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            fresh = compose("train", overrides=[o.input_line for o in groups])
        for o in groups:
            cfg[o.key_or_group] = fresh[o.key_or_group]
    OmegaConf.set_struct(cfg, True)  # a typo'd key is an error, not a new key
    for o in parsed:
        if o in groups:
            continue
        OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
    if any(o.key_or_group == "dataset.root" for o in parsed) and cfg.dataset.root is not None:
        # The user's path means the folder it names from here, wherever the run is written.
        cfg.dataset.root = os.path.abspath(os.path.expanduser(str(cfg.dataset.root)))
    return cfg


def planned_samples(split_size: int, limit_batches: Optional[int], batch_size: int) -> int:
    """How many samples one process scores with ``trainer.limit_batches``."""
    return split_size if limit_batches is None else min(split_size, limit_batches * batch_size)


def output_folder(checkpoint: Path, split: str, chosen: Optional[str]) -> Path:
    if chosen:
        return Path(chosen).expanduser()
    parent = checkpoint.resolve().parent
    run_dir = parent.parent if parent.name == "checkpoints" else parent
    return run_dir / "eval" / split


def check_output_folder(out: Path) -> None:
    """Refuses an ``output_dir`` that holds a training run's records: its ``metrics.json`` marks
    the run finished and holds its best and test scores (sweeps skip and rank runs by it), and
    one written here into an unfinished run would mark it finished. An evaluation's own
    ``metrics.json`` (an earlier evaluation into the same folder) is replaced; one that no
    evaluation wrote is kept. Also refuses a path that is not a folder and cannot become one."""
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        what = "a file" if out.exists() else "a link to nothing"
        raise ConfigError(f"output_dir={out} is {what}, not a folder: name a folder (it is "
                          f"created if missing)")
    if not out.is_dir():
        return
    found = [f"training run's {name}" for name in TRAINING_RECORDS if (out / name).exists()]
    found += [f"training run's {p.name}" for p in sorted(out.glob("*.pt"))]
    metrics = out / "metrics.json"
    if metrics.is_file():
        owner = metrics_writer(metrics)
        if owner == "training":
            found.insert(0, "training run's metrics.json")
        elif owner is None:
            found.insert(0, "metrics.json not written by event-seg-evaluate")
    if found:
        raise ConfigError(f"output_dir={out} holds a {found[0]}: event-seg-evaluate never "
                          f"writes over a run's records; choose another output_dir (by default "
                          f"<run folder>/eval/<split>)")


def metrics_writer(metrics: Path) -> Optional[str]:
    """Who wrote a ``metrics.json``: "evaluation", "training" or None (unreadable, or neither).
    Evaluation has written ``checkpoint`` and ``split`` since its first version (later ones add
    keys such as ``split_samples``); training writes ``best_epoch`` and never ``split``."""
    try:
        written = json.loads(metrics.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(written, dict):
        return None
    if "best_epoch" in written or "best_val_mean_iou" in written:
        return "training"
    if {"checkpoint", "split"} <= set(written):
        return "evaluation"
    return None


def per_class_table(metrics: dict, split: str, class_names: Sequence[str]) -> str:
    width = max([len("weighted mean IoU"), *map(len, class_names)])
    lines = [f"{'class':<{width}}  IoU", "-" * (width + 8)]
    for name in class_names:
        iou = metrics[f"{split}_iou/{name}"]
        lines.append(f"{name:<{width}}  {'  -   ' if math.isnan(iou) else f'{iou:.4f}'}")
    lines.append("-" * (width + 8))
    for label, key in (("mean IoU", "mean_iou"), ("weighted mean IoU", "weighted_mean_iou"),
                       ("pixel accuracy", "pixel_accuracy")):
        lines.append(f"{label:<{width}}  {metrics[f'{split}_{key}']:.4f}")
    return "\n".join(lines)


def evaluate(checkpoint: Path, split: str = "test", overrides: Sequence[str] = (),
             output_dir: Optional[str] = None) -> dict:
    """Runs the evaluation; returns what it writes to ``metrics.json``."""
    from omegaconf import OmegaConf

    from . import config as _config
    from .data import build_data
    from .engine.checkpoint import find_checkpoint, load_checkpoint
    from .engine.trainer import Trainer
    from .engine.trial import Trial
    from .loggers import build_loggers
    from .loggers.background import BackgroundLogging
    from .loggers.png_files import PanelFiles
    from .models import build_model
    from .secrets import redact
    from .train import seed_everything
    from .viz import panel_renderer

    checkpoint = find_checkpoint(Path(checkpoint))  # a .pt file, or a run folder's best.pt
    state = load_checkpoint(checkpoint)
    cfg = evaluation_config(state.get("config", {}), overrides, checkpoint)
    _config.validate(cfg)
    from .models import check_model

    check_model(cfg)  # the dry forward pass at the size evaluated, before any data is built
    if split not in cfg.dataset.splits:
        raise ConfigError(f"split={split}: dataset '{cfg.dataset.name}' has the splits "
                          f"{', '.join(cfg.dataset.splits)}")
    seed_everything(cfg.seed)
    out = output_folder(checkpoint, split, output_dir)
    check_output_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a parent that is a file, a read-only place, ...
        raise ConfigError(f"output_dir={out} cannot be created ({e.strerror or e})") from None

    # The whole split, unaugmented and in order, also when it is the train split.
    data = build_data(cfg.dataset, cfg.trainer, cfg.paths.cache_dir, seed=cfg.seed, splits=(split,),
                      evaluation=True)
    cfg.model.encoder_weights = None  # every weight comes from the checkpoint
    model = build_model(cfg.model, data.info)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        raise EventSegError(f"{checkpoint} does not fit the model these settings build "
                            f"({str(e).splitlines()[0][:200]}); the overrides changed the "
                            f"input channels or classes?") from None

    if cfg.loss.class_weights == "auto":
        # The weights the run counted on its train split (kept in its folder): val/test loss
        # then means what it meant in training.
        cfg.loss.class_weights = run_class_weights(checkpoint)
    epoch = int(state.get("epoch", 0))
    trial = Trial(name=f"{cfg.run_name}_eval_{split}", timestamp=str(cfg.trial_timestamp),
                  run_dir=out)
    resolved = redact(OmegaConf.to_container(cfg, resolve=True))
    group = build_loggers(resolved["logger"], trial)
    panels = PanelFiles(out / "panels")
    group.loggers.insert(0, panels)
    loggers = BackgroundLogging(group, render=panel_renderer(data.info))
    split_size = data.info.split_sizes[split]
    limit = cfg.trainer.limit_batches
    planned = planned_samples(split_size, limit, cfg.trainer.batch_size)
    exit_code = 1
    try:
        trainer = Trainer(cfg, model, data, loggers=loggers, trial=trial, full_config=resolved)
        if trainer.ema is not None:
            if "ema_model" not in state:
                raise ConfigError(f"{checkpoint} holds no EMA weights (trained without "
                                  f"trainer.ema.decay): drop the trainer.ema.decay override")
            # The EMA weights are what validation, the best checkpoint and the test scored.
            trainer.ema.model.load_state_dict(state["ema_model"])
            log.info("Scoring the EMA of the weights (trainer.ema.decay=%s)", trainer.ema.decay)
        if not trainer.test_predictor.plain:
            log.info("Prediction: %s", trainer.test_predictor.describe())
        log.info("Evaluating %s (epoch %d) on %s/%s: %s", checkpoint, epoch, data.info.name,
                 split, f"{planned} samples" if planned == split_size else
                 f"{planned} of {split_size} samples (trainer.limit_batches={limit})")
        with trainer.stop:
            metrics = trainer.evaluate(data.loaders[split], split, epoch,
                                       predictor=trainer.test_predictor)
        trainer._log_confusion(split, epoch)
        scored = getattr(trainer, "scored_samples", None)
        scored = planned if scored is None else int(scored)
        loggers.log_config(resolved, {"checkpoint": str(checkpoint), "split": split,
                                      "epoch": epoch, "samples": scored,
                                      "split_samples": split_size})
        loggers.log_metrics(metrics, epoch)
        exit_code = 0
    finally:
        loggers.close(exit_code)

    prefix = f"{split}_"
    result = {
        "checkpoint": str(checkpoint),
        "epoch": epoch,
        "split": split,
        "dataset": data.info.name,
        "samples": scored,
        "split_samples": split_size,
        "loss": metrics[f"{split}_loss"],
        "mean_iou": metrics[f"{split}_mean_iou"],
        "weighted_mean_iou": metrics[f"{split}_weighted_mean_iou"],
        "pixel_accuracy": metrics[f"{split}_pixel_accuracy"],
        # JSON has no NaN: a class absent from ground truth and prediction alike is null.
        "per_class_iou": {name: (None if math.isnan(v) else v) for name, v in
                          ((n, metrics[f"{prefix}iou/{n}"]) for n in data.info.class_names)},
        "panels": [str(p) for p in panels.written],
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    print(per_class_table(metrics, split, data.info.class_names))
    if scored != split_size:
        # Only trainer.limit_batches cuts an evaluation short; say so only where it did.
        why = f" (trainer.limit_batches={limit})" if planned < split_size else ""
        print(f"scored {scored} of {split_size} samples{why}")
    print(f"wrote {out / 'metrics.json'} and {len(panels.written)} panel(s) in {panels.folder}")
    return result


def run_class_weights(checkpoint: Path):
    """``loss.class_weights=auto``: the weights the run saved in its folder (the checkpoint's
    parent or grandparent), or None (an unweighted loss, with a warning)."""
    from .engine.losses import saved_class_weights

    for folder in (checkpoint.parent, checkpoint.parent.parent):
        saved = saved_class_weights(folder / "class_weights.json")
        if saved is not None:
            return saved
    log.warning("loss.class_weights=auto, but no class_weights.json beside %s: the loss is "
                "reported unweighted (the IoU scores do not depend on it)", checkpoint)
    return None


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        sys.stdout.write(usage())
        return 0
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .engine.preemption import Preempted
    from .launch import one_line

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        own, overrides = split_arguments(argv)
        evaluate(Path(own["checkpoint"]), own.get("split", "test"), overrides,
                 own.get("output_dir"))
    except (HydraException, OmegaConfBaseException) as e:
        # The one line training gives (an unknown key with its did-you-mean, ...).
        print(f"error: {' '.join(one_line(e).split())}", file=sys.stderr)
        return 2
    except EventSegError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except Preempted as stop:
        print(f"error: {stop}", file=sys.stderr)
        return stop.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
