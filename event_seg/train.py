"""Training entry point: ``python -m event_seg.train [overrides]`` (or ``event-seg-train``).

Thin on purpose: it wires the parts together (see DESIGN.md) and turns the errors a user can fix
into one readable line and a non-zero exit.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from . import config as _config  # registers the schemas before Hydra composes
from .engine.preemption import Preempted
from .errors import ConfigError, EventSegError
from .secrets import redact

log = logging.getLogger("event_seg")


def run(cfg: DictConfig) -> float:
    """Trains one configured run and returns its ``optimized_metric`` (what sweepers optimise:
    the best ``val_mean_iou`` unless the config names another key of metrics.json)."""
    _config.validate(cfg)
    # The dry forward pass before any data is built: a swept group option (model=unet,pan) or
    # an Optuna-sampled value is checked here only, and fails its job in one line.
    from .models import check_model

    check_model(cfg)
    _config.make_paths_absolute(cfg)  # evaluate, resume and sweeps may start elsewhere

    from . import distributed
    from .data import build_data
    from .engine.trainer import Trainer
    from .engine import folder_lock
    from .engine.resume_rules import check_epochs, check_same_experiment
    from .engine.trial import Trial, check_output_folder, write_text_atomic
    from .loggers import build_loggers
    from .loggers.background import BackgroundLogging
    from .models import build_model, count_parameters
    from .viz import panel_renderer

    seed_everything(cfg.seed)
    ctx = distributed.context()  # rank 0 of 1 unless torchrun started us
    if not ctx.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # one rank reports; the others warn
    trial = Trial.from_config(cfg)
    if ctx.is_main:
        folder_lock.hold(trial.run_dir)  # one live process per run folder (main() took it)
    # Everything that leaves the process is built from the resolved, secret-free copy.
    resolved = redact(OmegaConf.to_container(cfg, resolve=True))
    # A folder holds one experiment: what it holds must be what this command asks for.
    way_out = trial.way_out(
        f"the sweep's command without trial_timestamp={trial.timestamp}" if _in_multirun()
        else command_line(trial_timestamp=None))
    saved, saved_epoch, source = trial.saved_settings()
    if saved is not None:
        check_same_experiment(saved, resolved, source, way_out)
    done = trial.finished_summary()
    if done is not None and done.get("epochs") == cfg.trainer.epochs:
        # A re-run sweep (or a repeated command) does not train a finished job again.
        log.info("%s already finished %d epochs (best val_mean_iou %.4f); skipping it. To train "
                 "again, %s", trial.run_dir, cfg.trainer.epochs, done["best_val_mean_iou"],
                 way_out)
        if ctx.is_main and cfg.trainer.checkpoints.keep != "all":
            # A kill between metrics.json and the trim, or a smaller keep than the run had.
            from .engine.checkpoint import kept_line, trim_finished

            if trim_finished(trial.checkpoint_dir, cfg.trainer.checkpoints.keep):
                log.info(kept_line(trial.checkpoint_dir, cfg.trainer.checkpoints.keep))
        _note_skipped()
        return optimized_value(done, cfg.optimized_metric, trial.metrics_file)
    planned = (saved or {}).get("trainer", {}).get("epochs") if source == trial.last_checkpoint else None
    check_epochs(cfg.trainer.epochs, saved_epoch, planned, done and done.get("epochs"),
                 trial.run_dir, way_out)

    # Rank 0 generates or indexes the data first; the others then read it (or, when it
    # failed, stop quietly: rank 0 reports why).
    with ctx.main_first():
        data = build_data(cfg.dataset, cfg.trainer, cfg.paths.cache_dir, seed=cfg.seed,
                          rank=ctx.rank, world_size=ctx.world_size)
    if cfg.optimized_metric.startswith("test_") and "test" not in data.loaders:
        raise ConfigError(f"optimized_metric={cfg.optimized_metric} needs a test split, and "
                          f"{data.info.name} at {data.info.root} has none; optimise a best_val_* "
                          f"metric")
    log.info("Dataset %s at %s: %s, %s x%d, input channels %d", data.info.name, data.info.root,
             data.info.split_sizes, data.info.representation, data.info.event_channels,
             data.info.input_channels)
    if ctx.enabled:
        per_step = cfg.trainer.batch_size * cfg.trainer.accumulate_grad_batches
        log.info("DDP: world size %d, global batch size %d (trainer.batch_size=%d per process%s)",
                 ctx.world_size, per_step * ctx.world_size, cfg.trainer.batch_size,
                 f" x {cfg.trainer.accumulate_grad_batches} accumulated batches"
                 if cfg.trainer.accumulate_grad_batches > 1 else "")
    if trial.resume_path is not None:
        cfg.model.encoder_weights = None  # a resume takes every weight from last.pt
    model = build_model(cfg.model, data.info)
    # A checkpoint holds the weights and up to two optimizer moments per weight (float32).
    check_output_folder(trial.run_dir, needed_bytes=3 * 4 * count_parameters(model))

    trainer = Trainer(cfg, model, data, loggers=None, trial=trial, full_config=resolved,
                      dist=ctx)
    trainer.resume_if_possible()
    # Loggers start after the resume point is known, so they can drop the epochs to be redone.
    # Only rank 0 logs: the others get an empty group, which renders and sends nothing.
    loggers = BackgroundLogging(build_loggers(resolved["logger"] if ctx.is_main else {}, trial,
                                              start_epoch=trainer.start_epoch,
                                              start_step=trainer.global_step),
                                render=panel_renderer(data.info))
    trainer.loggers = loggers
    meta = {
        "run_name": trial.name,
        "trial_timestamp": trial.timestamp,
        "run_dir": str(trial.run_dir),
        "dataset": data.info.as_dict(),
        "model_parameters": count_parameters(model),
    }
    if ctx.is_main:
        # Written once the start has succeeded: a start that fails (no dataset, a model that
        # does not build) leaves no config a later command would be held to.
        write_text_atomic(trial.run_dir / "config.yaml",
                          OmegaConf.to_yaml(OmegaConf.create(resolved)))
    exit_code = 1  # anything escaping below is a failure unless fit() returns
    try:
        loggers.log_config(resolved, meta)
        trainer.fit()
        exit_code = 0
        return optimized_value(trainer.summary, cfg.optimized_metric, trial.metrics_file)
    except Preempted as stop:
        exit_code = stop.exit_code
        kept = (f"{trial.last_checkpoint} holds epoch {trainer.saved_epoch}"
                if trainer.saved_epoch else "no epoch had finished yet")
        if ctx.is_main:
            log.warning("%s; %s (the interrupted epoch is redone). Resume with:\n  %s", stop,
                        kept, resume_command(trial))
        raise
    finally:
        if ctx.is_main and (exit_code != 1 or trainer.saved_epoch):
            # Work to keep: a finished run, a saved epoch, or a stop whose resume command was
            # just printed. A new folder whose run failed before that (a loss that diverged in
            # epoch 1, a model that fails at its first step) holds nothing to resume, and its
            # config.yaml would refuse the corrected command: it is removed at exit.
            folder_lock.keep(trial.run_dir)
        loggers.close(exit_code)
        distributed.shutdown()


def optimized_value(summary: dict, metric: str, source) -> float:
    """The number a sweeper ranks this run by (``optimized_metric``), from its metrics.json."""
    if metric not in summary:
        raise ConfigError(f"{source} has no {metric} (optimized_metric); it holds: "
                          f"{', '.join(k for k in summary if not k.endswith('_s'))}")
    return float(summary[metric])


# Set by main() for a sweep's jobs (inherited by joblib workers and submitit jobs): the sweep's
# own command, pinned to its timestamp (and sweep_summary.SWEEP_RUN_ENV, an id of this run).
SWEEP_COMMAND_ENV = "EVENT_SEG_SWEEP_COMMAND"


def resume_command(trial) -> str:
    """The command line that continues this run: its overrides, pinned to its timestamp. For a
    sweep's job, the sweep's command: it resumes this job and runs the ones still to come."""
    import os

    if _in_multirun() and os.environ.get(SWEEP_COMMAND_ENV):
        return os.environ[SWEEP_COMMAND_ENV]
    return command_line(trial_timestamp=trial.timestamp)


def command_line(trial_timestamp=None) -> str:
    """This job's command: its overrides, with ``trial_timestamp`` pinned to the value given
    (None: left out, which starts a new trial in a fresh folder)."""
    import shlex

    overrides = []
    try:
        from hydra.core.hydra_config import HydraConfig

        # Unresolved: run_name=x_${trial_timestamp} must stay an interpolation, or the command
        # would name this very folder again.
        task = OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)
        overrides = [o for o in task if not o.lstrip("+~").startswith("trial_timestamp=")]
    except ValueError:
        pass
    args = [*overrides, *([f"trial_timestamp={trial_timestamp}"] if trial_timestamp else [])]
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


# The keys most commands set, in the order --help lists them (each with its default; a key
# with allowed values and no text here lists those, from config.CHOICES, so they never drift).
MOST_USED_KEYS = (
    ("trainer.epochs", "epochs to train"),
    ("trainer.batch_size", "samples per batch (per process under torchrun)"),
    ("trainer.device", "auto | cpu | cuda | cuda:N"),
    ("trainer.precision", ""),
    ("trainer.num_workers", "DataLoader worker processes"),
    ("trainer.limit_batches", "the most batches per stage per epoch (quick runs)"),
    ("optimizer.lr", "learning rate"),
    ("model.encoder_name", "any segmentation_models_pytorch encoder"),
    ("dataset.root", "the folder of a real dataset"),
    ("dataset.modality", ""),
    ("dataset.representation", ""),
    ("dataset.num_bins", "time bins of the voxel grid and MDES"),
    ("loss.class_weights", "a list, or auto"),
    ("paths.output_root", "where run folders go"),
    ("trial_timestamp", "names the run folder; an earlier one (or latest) resumes it"),
    ("optimized_metric", "what a sweep ranks its jobs by"),
)


def train_help(config_dir: str = CONFIG_DIR) -> str:
    """``--help``: the config groups and their options as conf/ holds them, the most used keys
    with their defaults, examples, and where the rest is documented."""
    import textwrap

    import yaml
    from hydra import compose, initialize_config_dir

    conf = Path(config_dir)
    defaults = {}
    for entry in yaml.safe_load((conf / "train.yaml").read_text()).get("defaults", []):
        if isinstance(entry, dict):
            defaults.update({str(k).lstrip("/"): v for k, v in entry.items()})
    groups = sorted(str(p.parent.relative_to(conf)) for p in conf.rglob("*.yaml")
                    if p.parent != conf)
    width = max(map(len, groups)) + 2
    lines = [
        "usage: python -m event_seg.train [group=option ...] [key=value ...]  (or event-seg-train)",
        "",
        "Trains one run into <paths.output_root>/<model>_<timestamp>/ (config.yaml, train.log,",
        "checkpoints/, metrics.json). Every key is checked against the schema before anything runs.",
        "",
        "Config groups (group=option; the default in brackets):",
    ]
    for group in dict.fromkeys(groups):
        options = ", ".join(sorted(p.stem for p in (conf / group).glob("*.yaml")))
        if group in defaults:
            options += f"  [{defaults[group] or 'none'}]"
        lines += textwrap.wrap(options, 96, initial_indent=f"  {group:<{width}}",
                               subsequent_indent=" " * (width + 2), break_on_hyphens=False)
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        raw = OmegaConf.to_container(compose("train"), resolve=False)
    lines += ["", "Most used keys (key=value; the default in brackets; --cfg job prints them all):"]
    for key, what in MOST_USED_KEYS:
        value = raw
        for part in key.split("."):
            value = value[part]
        value = "null" if value is None else value
        what = what or " | ".join(_config.CHOICES[key])
        lines.append(f"  {key:<24}{what}  [{value}]")
    lines += [
        "",
        "Examples:",
        "  python -m event_seg.train model=fpn dataset.modality=rgb trainer.epochs=20",
        "  python -m event_seg.train debug=smoke                 a run that takes seconds",
        "  python -m event_seg.train -m model=unet,fpn           a sweep: one job per value",
        "  python -m event_seg.train hparams_search=optuna       an Optuna search",
        "  python -m event_seg.train trial_timestamp=latest      resume the newest run of the name",
        "",
        "Flags: -m/--multirun (a sweep), --cfg job (print the composed config, run nothing),",
        "--info [defaults|config|searchpath|plugins], --resolve, --hydra-help (Hydra's own flags).",
        "Docs: docs/configuration.md (every key), docs/run_folders.md, docs/sweeps.md,",
        "docs/reliability.md (resume and pre-emption), docs/training_toolkit.md.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """The console script and ``python -m event_seg.train``."""
    from .distributed import agree_on_timestamp, rank
    from .launch import hydra_only, settle

    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        sys.stdout.write(train_help())
        sys.exit(0)
    if hydra_only(sys.argv):  # --hydra-help, shell completion: Hydra's, about Hydra
        hydra_main()
        return
    try:
        # Checks the command in one line, pins trial_timestamp (``${now:}`` would be evaluated
        # by each SLURM requeue and each torchrun rank) and claims the run folder. Under
        # torchrun every rank checks it before the process group starts; rank 0 says why.
        sys.argv, sweep_dir = settle(sys.argv, CONFIG_DIR, main_rank=rank() == 0,
                                     agree=agree_on_timestamp)
        command = sys.argv[1:]  # the user's, with the timestamp pinned: how to resume it
        sys.argv = name_jobs_by_swept_keys(sys.argv)
        if rank() > 0:  # rank 0 writes .hydra/ for the job
            sys.argv = pin_override(sys.argv, "hydra.output_subdir=null")
    except EventSegError as e:
        if rank() > 0:
            from .distributed import leave_it_to_rank_0

            leave_it_to_rank_0(f"error: {e}")
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if sweep_dir is None or rank() > 0:
        hydra_main()
        return
    import os
    import shlex
    import signal
    import uuid

    os.environ[SWEEP_COMMAND_ENV] = " ".join(["python -m event_seg.train",
                                              *map(shlex.quote, command)])
    from .sweep_summary import SWEEP_RUN_ENV

    os.environ[SWEEP_RUN_ENV] = uuid.uuid4().hex

    def stop_sweep(signum, frame):
        # SIGTERM to the sweep's own process (SLURM, kill): end like Ctrl-C, with the summary.
        # A job training in this process has its own handler (a checkpoint, then the stop).
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop_sweep)
    code = 0
    try:
        hydra_main()
    except SystemExit as stop:  # Hydra's own report of an error, or a pre-emption
        code = stop.code if isinstance(stop.code, int) else 1
    except KeyboardInterrupt:
        code = 130
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # However the sweep ended, it lists what it did; stopped, its jobs get a moment to say so.
    if code == 2:  # refused (a mistake, one line): nothing ran that a summary would list
        sys.exit(code)
    failed = summarize_sweep(sweep_dir, stopped=code in (130, 128 + signal.SIGTERM))
    sys.exit(code or failed)


def summarize_sweep(sweep_dir: str, stopped: bool = False) -> int:
    """Prints and writes the sweep's summary; 1 when a job failed (the sweep's exit code)."""
    from .sweep_summary import failed_jobs, wait_for_running_jobs, write_summary

    try:
        if stopped:
            wait_for_running_jobs(Path(sweep_dir), timeout_s=20)
        table = write_summary(Path(sweep_dir), stopped=stopped)
    except OSError as e:
        print(f"error: could not write the sweep summary in {sweep_dir}: {e}", file=sys.stderr)
        return 1
    if table is None:
        return 0
    print(table, flush=True)
    import os

    if stopped and os.environ.get(SWEEP_COMMAND_ENV):
        print(f"Resume the sweep with:\n  {os.environ[SWEEP_COMMAND_ENV]}", flush=True)
    failed = failed_jobs(Path(sweep_dir), stopped=stopped)
    if failed:
        print(f"error: {failed} job(s) of the sweep failed; each one's train.log has its error",
              file=sys.stderr)
    return 1 if failed else 0


# Never part of a sweep job's folder name: they do not change what is trained.
NOT_IN_JOB_NAMES = ("trial_timestamp", "paths.output_root", "paths.cache_dir", "hparams_search",
                    "trainer.progress_bar", "trainer.num_workers")


def name_jobs_by_swept_keys(argv):
    """Multirun job folders are named from the overrides that differ between jobs
    (``model=fpn,optimizer.lr=0.0003``): the command's fixed overrides are left out."""
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
    """Inserts ``override`` beside the other overrides (launch.insert_override)."""
    from .launch import insert_override

    return insert_override(argv, override)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    if _in_multirun():
        return _run_sweep_job(cfg)
    from .distributed import PeerFailed, leave_it_to_rank_0, rank

    try:
        return run(cfg)
    except Preempted as stop:
        sys.exit(stop.exit_code)
    except EventSegError as e:
        # One readable line instead of a traceback: these are errors the user can fix. Under
        # torchrun every rank meets the same one (or, PeerFailed, rank 0's); rank 0 reports it.
        code = e.exit_code if isinstance(e, PeerFailed) else 2
        if rank() > 0:
            leave_it_to_rank_0(f"error: {e}", code)
        log.error("%s", e)
        sys.exit(code)
    except Exception:
        # Hydra prints the traceback on the console; train.log must keep it too.
        _log_to_files_only(logging.ERROR, "The run failed", exc_info=sys.exc_info())
        raise


_skipped = False  # set by run() when this job had finished before (see _run_sweep_job)


def _note_skipped() -> None:
    global _skipped
    _skipped = True


def _run_sweep_job(cfg: DictConfig) -> float:
    """One job of a multirun. A failure is recorded (job_status.json, its train.log) and
    returned as NaN, so every launcher runs the other jobs and the sweep ends with its
    summary (sweep_summary.py) rather than the traceback of its first failure; the sweep
    command still exits non-zero when a job failed. Optuna marks a NaN trial failed."""
    global _skipped
    from hydra.core.hydra_config import HydraConfig

    from .distributed import rank
    from .sweep_summary import JobStatus

    _skipped = False
    hydra_cfg = HydraConfig.get()
    # The summary ranks as the sweeper optimises: hydra.sweeper.direction where it says one.
    setting = str(hydra_cfg.sweeper.get("direction", "auto"))
    direction = (setting if setting in ("maximize", "minimize")
                 else _config.metric_direction(cfg.optimized_metric))
    # The overrides that set this job apart (what its folder is named by), not the sweep's own.
    shared = set(hydra_cfg.job.config.override_dirname.exclude_keys or [])
    own = [o for o in hydra_cfg.overrides.task if o.lstrip("+~").split("=", 1)[0] not in shared]
    status = (JobStatus(Path(hydra_cfg.runtime.output_dir), own, cfg.optimized_metric, direction)
              if rank() == 0 else None)
    outcome, value, error = "failed", math.nan, ""
    try:
        value = run(cfg)
        outcome = "skipped" if _skipped else "finished"
        return value
    except Preempted as stop:
        outcome, error = "interrupted", str(stop)
        sys.exit(stop.exit_code)
    except EventSegError as e:
        log.error("%s", e)  # one line, into the console and this job's train.log
        error = str(e)
        return math.nan
    except Exception as e:
        log.exception("This job failed")  # the traceback into this job's train.log
        error = f"{type(e).__name__}: {e}"
        return math.nan
    finally:
        if status is not None:
            status.ended(outcome, value if outcome in ("finished", "skipped") else None, error)
        # The job is over: its folder is free for the next job that needs it. A joblib worker
        # lives on for later batches, and an Optuna twin may run there next.
        from .engine import folder_lock

        folder_lock.release(Path(hydra_cfg.runtime.output_dir))


def _log_to_files_only(level: int, message: str, exc_info=None) -> None:
    record = log.makeRecord(log.name, level, __file__, 0, message, (), exc_info)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False


if __name__ == "__main__":
    main()
