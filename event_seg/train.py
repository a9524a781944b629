"""Training entry point: ``python -m event_seg.train [overrides]`` (or ``event-seg-train``).

Thin on purpose: it wires the parts together (see DESIGN.md) and turns the errors a user can fix
into one readable line and a non-zero exit.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from . import config as _config  # registers the schemas before Hydra composes
from .engine.preemption import Preempted
from .errors import EventSegError
from .secrets import redact

log = logging.getLogger("event_seg")


def run(cfg: DictConfig) -> float:
    """Trains one configured run and returns its best ``val_mean_iou`` (what sweepers optimise)."""
    _config.validate(cfg)

    from .data import build_data
    from .engine.trainer import Trainer
    from .engine.trial import Trial, check_output_folder
    from .loggers import build_loggers
    from .loggers.background import BackgroundLogging
    from .models import build_model, count_parameters
    from .viz import panel_renderer

    seed_everything(cfg.seed)
    trial = Trial.from_config(cfg)
    # Everything that leaves the process is built from the resolved, secret-free copy.
    resolved = redact(OmegaConf.to_container(cfg, resolve=True))
    (trial.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))

    data = build_data(cfg.dataset, cfg.trainer, cfg.paths.cache_dir, seed=cfg.seed)
    log.info("Dataset %s at %s: %s, %s x%d, input channels %d", data.info.name, data.info.root,
             data.info.split_sizes, data.info.representation, data.info.event_channels,
             data.info.input_channels)
    model = build_model(cfg.model, data.info)
    # A checkpoint holds the weights and up to two optimizer moments per weight (float32).
    check_output_folder(trial.run_dir, needed_bytes=3 * 4 * count_parameters(model))

    trainer = Trainer(cfg, model, data, loggers=None, trial=trial, full_config=resolved)
    trainer.resume_if_possible()
    # Loggers start after the resume point is known, so they can drop the epochs to be redone.
    loggers = BackgroundLogging(build_loggers(resolved["logger"], trial,
                                              start_epoch=trainer.start_epoch),
                                render=panel_renderer(data.info))
    trainer.loggers = loggers
    meta = {
        "run_name": trial.name,
        "trial_timestamp": trial.timestamp,
        "run_dir": str(trial.run_dir),
        "dataset": data.info.as_dict(),
        "model_parameters": count_parameters(model),
    }
    exit_code = 1  # anything escaping below is a failure unless fit() returns
    try:
        loggers.log_config(resolved, meta)
        best = trainer.fit()
        exit_code = 0
        return best
    except Preempted as stop:
        exit_code = stop.exit_code
        kept = (f"{trial.last_checkpoint} holds epoch {trainer.saved_epoch}"
                if trainer.saved_epoch else "no epoch had finished yet")
        log.warning("%s; %s (the interrupted epoch is redone). Resume with:\n  %s", stop, kept,
                    resume_command(trial))
        raise
    finally:
        loggers.close(exit_code)


def resume_command(trial) -> str:
    """The command line that continues this run: its overrides, pinned to its timestamp."""
    import shlex

    overrides = []
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = [o for o in HydraConfig.get().overrides.task
                     if not o.lstrip("+~").startswith("trial_timestamp=")]
    except ValueError:
        pass
    args = [*overrides, f"trial_timestamp={trial.timestamp}"]
    return " ".join(["python -m event_seg.train", *map(shlex.quote, args)])


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)




# An absolute path, so `python -m event_seg.train` and the `event-seg-train` console script
# (which Hydra would otherwise resolve as a Python package) find the same conf/ folder.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def main() -> None:
    """The console script and ``python -m event_seg.train``."""
    if any(a.endswith("trial_timestamp=latest") for a in sys.argv[1:]):
        from .latest import expand_latest

        try:
            sys.argv = expand_latest(sys.argv, CONFIG_DIR)
        except EventSegError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    hydra_main()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    try:
        return run(cfg)
    except Preempted as stop:
        sys.exit(stop.exit_code)
    except EventSegError as e:
        # One readable line instead of a traceback: these are errors the user can fix.
        if _in_multirun():
            raise  # Hydra records it against this job
        log.error("%s", e)
        sys.exit(2)


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False


if __name__ == "__main__":
    main()
