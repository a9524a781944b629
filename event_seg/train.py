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

    from . import distributed
    from .data import build_data
    from .engine.trainer import Trainer
    from .engine.trial import Trial, check_output_folder
    from .loggers import build_loggers
    from .loggers.background import BackgroundLogging
    from .models import build_model, count_parameters
    from .viz import panel_renderer

    seed_everything(cfg.seed)
    ctx = distributed.context()  # rank 0 of 1 unless torchrun started us
    if not ctx.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # one rank reports; the others warn
    trial = Trial.from_config(cfg)
    done = trial.finished_summary(cfg.trainer.epochs)
    if done is not None:
        # A re-run sweep (or a repeated command) does not train a finished job again.
        log.info("%s already finished %d epochs (best val_mean_iou %.4f); skipping it. Delete "
                 "its metrics.json or use another trial_timestamp to train again",
                 trial.run_dir, cfg.trainer.epochs, done["best_val_mean_iou"])
        return float(done["best_val_mean_iou"])
    # Everything that leaves the process is built from the resolved, secret-free copy.
    resolved = redact(OmegaConf.to_container(cfg, resolve=True))
    if ctx.is_main:
        (trial.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))

    if not ctx.is_main:
        ctx.barrier()  # rank 0 generates or indexes the data first; the others then read it
    data = build_data(cfg.dataset, cfg.trainer, cfg.paths.cache_dir, seed=cfg.seed,
                      rank=ctx.rank, world_size=ctx.world_size)
    if ctx.is_main:
        ctx.barrier()
    log.info("Dataset %s at %s: %s, %s x%d, input channels %d", data.info.name, data.info.root,
             data.info.split_sizes, data.info.representation, data.info.event_channels,
             data.info.input_channels)
    model = build_model(cfg.model, data.info)
    # A checkpoint holds the weights and up to two optimizer moments per weight (float32).
    check_output_folder(trial.run_dir, needed_bytes=3 * 4 * count_parameters(model))

    trainer = Trainer(cfg, model, data, loggers=None, trial=trial, full_config=resolved,
                      dist=ctx)
    trainer.resume_if_possible()
    # Loggers start after the resume point is known, so they can drop the epochs to be redone.
    # Only rank 0 logs: the others get an empty group, which renders and sends nothing.
    loggers = BackgroundLogging(build_loggers(resolved["logger"] if ctx.is_main else {}, trial,
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
        if ctx.is_main:
            log.warning("%s; %s (the interrupted epoch is redone). Resume with:\n  %s", stop,
                        kept, resume_command(trial))
        raise
    finally:
        loggers.close(exit_code)
        distributed.shutdown()


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
    from .distributed import is_distributed

    if is_distributed():
        import os

        launcher = (f"torchrun --nnodes={os.environ.get('GROUP_WORLD_SIZE', 1)} "
                    f"--nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', 1)} -m event_seg.train")
    else:
        launcher = "python -m event_seg.train"
    return " ".join([launcher, *map(shlex.quote, args)])


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
    from .distributed import agree_on_timestamp, rank

    try:
        if any(a.endswith("trial_timestamp=latest") for a in sys.argv[1:]):
            from .latest import expand_latest

            sys.argv = expand_latest(sys.argv, CONFIG_DIR)
        sys.argv = pin_trial_timestamp(sys.argv, agree_on_timestamp)
        sys.argv = name_jobs_by_swept_keys(sys.argv)
        if rank() > 0:  # rank 0 writes .hydra/ for the job
            sys.argv = pin_override(sys.argv, "hydra.output_subdir=null")
    except EventSegError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    hydra_main()


def pin_trial_timestamp(argv, agree=lambda ts: ts):
    """Adds ``trial_timestamp=<now>`` unless the command names one.

    ``${now:}`` in the config would be evaluated by each process that resolves it: a SLURM job
    requeued an hour later, or the ranks of a torchrun job, would each get a folder of their own.
    A literal on the command line travels with every job and requeue; ``agree`` lets DDP ranks
    take rank 0's.
    """
    import datetime

    if any(a.lstrip("+").startswith("trial_timestamp=") for a in argv[1:]):
        return argv
    timestamp = agree(datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    return pin_override(argv, f"trial_timestamp={timestamp}")


# Never part of a sweep job's folder name: they do not change what is trained.
NOT_IN_JOB_NAMES = ("trial_timestamp", "paths.output_root", "paths.cache_dir", "hparams_search",
                    "trainer.progress_bar", "trainer.num_workers")


def name_jobs_by_swept_keys(argv):
    """Multirun job folders are named from the overrides that differ between jobs
    (``3_model=fpn,optimizer.lr=0.0003``): the command's fixed overrides are left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    overrides = [a for a in argv[1:] if "=" in a and not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return argv  # Hydra itself reports the malformed override, in its own words
    fixed = [o.key_or_group for o in parsed if not o.is_sweep_override()]
    keys = [k for k in dict.fromkeys([*NOT_IN_JOB_NAMES, *fixed]) if k != "hydra.job.config"]
    return pin_override(argv, f"hydra.job.config.override_dirname.exclude_keys=[{','.join(keys)}]")


def pin_override(argv, override: str):
    """Inserts ``override`` beside the other overrides: argparse takes them as one run of
    positional arguments, so one after ``--cfg job`` would be refused."""
    where = next((i for i, a in enumerate(argv) if i and "=" in a and not a.startswith("-")),
                 len(argv))
    return [*argv[:where], override, *argv[where:]]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    try:
        return run(cfg)
    except Preempted as stop:
        sys.exit(stop.exit_code)
    except EventSegError as e:
        # One readable line instead of a traceback: these are errors the user can fix.
        log.error("%s", e)
        if _in_multirun():
            raise  # Hydra marks this job failed; the other jobs go on
        sys.exit(2)
    except Exception:
        if _in_multirun():
            # Into this job's own log file; Hydra marks the job failed and runs the others.
            log.exception("This job failed")
        raise


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False


if __name__ == "__main__":
    main()
