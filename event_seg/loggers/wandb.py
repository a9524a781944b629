"""Weights & Biases: epoch metrics, config and metadata, segmentation overlays.

W&B must never stop training (see TRACKING.md): ``wandb.init`` is bounded by ``init_timeout``
and ``quiet``; if it raises, the ``wandb-core`` side process is torn down and the error goes up
to :func:`~event_seg.loggers.base.build_loggers`, which warns once and carries on without W&B.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from typing import Optional, Sequence

from .base import Logger

log = logging.getLogger(__name__)

# W&B run ids may not contain : ; , # ? / ' \ % (and stay short).
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")
MAX_ID_LENGTH = 64
# Metrics whose W&B summary is their best (max) value rather than the last one.
MAX_SUMMARY_METRICS = ("val_mean_iou", "val_weighted_mean_iou", "inference_mean_iou",
                       "inference_weighted_mean_iou")
# Curves within an epoch (trainer.log_every_n_steps), against the global optimizer step.
STEP_METRICS = ("step/train_loss", "step/learning_rate")


def wandb_run_id(run_name: str, job: Optional[str] = None) -> str:
    """A run id derived only from the trial (its name embeds the timestamp) and, for a multirun
    job, its folder name (its swept overrides, see :mod:`event_seg.job_names`): restarting with the
    same timestamp reattaches to the same W&B run, and a sweep re-run with more values keeps each
    job's id however its job number moved. A single run's id is its (sanitised) name; a job's is
    ``<run name>-<8 hex chars>``, a sha1 of both names (W&B ids may not contain the ``,`` of a
    folder name)."""
    safe = _ID_UNSAFE.sub("-", run_name)
    if job is not None:
        digest = hashlib.sha1(f"{run_name}\n{job}".encode()).hexdigest()[:8]
        # The digest covers the whole run name, so cutting a long one keeps ids apart.
        return f"{safe[:MAX_ID_LENGTH - 9]}-{digest}"
    if len(safe) > MAX_ID_LENGTH:
        digest = hashlib.sha1(run_name.encode()).hexdigest()[:10]
        safe = f"{safe[:MAX_ID_LENGTH - 11]}-{digest}"
    return safe


class WandbLogger(Logger):
    name = "wandb"

    def __init__(self, trial, start_epoch: int = 0, entity: Optional[str] = None,
                 project: str = "event-segmentation", name: Optional[str] = None,
                 mode: Optional[str] = None, tags: Sequence[str] = (), group: Optional[str] = None,
                 notes: Optional[str] = None, init_timeout: float = 30.0,
                 log_system_metrics: bool = True, job_type: str = "train", start_step: int = 0):
        import wandb

        self._wandb = wandb
        if group is None and trial.job_num is not None:
            group = f"sweep_{trial.timestamp}"  # every job of one -m sweep side by side
        settings = wandb.Settings(
            init_timeout=float(init_timeout),
            quiet=True,                      # no identity look-ups that stall a dead server
            x_disable_stats=not log_system_metrics,
            console="off",                   # train.log has the console; keep tqdm untouched
        )
        # A sweep job is identified by its folder (its overrides), not by its job number.
        job = trial.run_dir.name if trial.job_num is not None else None
        self.run_id = wandb_run_id(trial.name, job)
        identity = dict(name=name or trial.display_name, id=self.run_id, group=group,
                        resume="allow")
        if os.environ.get("WANDB_SWEEP_ID"):
            # Started by `wandb agent`: the agent has chosen the run (WANDB_RUN_ID) and files it
            # under its sweep; an id of our own would start a run the sweep never hears of.
            self.run_id = os.environ.get("WANDB_RUN_ID", self.run_id)
            identity = dict(name=name, id=None, group=None, resume=None)
        try:
            self.run = wandb.init(
                entity=entity, project=project, dir=str(trial.run_dir), notes=notes,
                tags=list(tags) or None, job_type=job_type, mode=mode,
                reinit="finish_previous", settings=settings, **identity,
            )
        except BaseException:
            # A failed init leaves its wandb-core child running; take it down before going on.
            try:
                wandb.teardown()
            except Exception:
                pass
            raise
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")
        for key in MAX_SUMMARY_METRICS:
            self.run.define_metric(key, step_metric="epoch", summary="max")
        # Step curves against their own axis. Named exactly (an exact definition wins over the
        # "*" glob above), and the axis itself defined without a step of its own.
        self.run.define_metric("global_step")
        for key in STEP_METRICS:
            self.run.define_metric(key, step_metric="global_step")
        if start_epoch:
            log.info("W&B run %s resumed at epoch %d", self.run_id, start_epoch)

    def log_config(self, config, meta) -> None:
        self.run.config.update({**config, "meta": meta}, allow_val_change=True)

    def log_metrics(self, metrics, epoch) -> None:
        # Never pass step=: W&B drops steps lower than its own counter, which breaks resume.
        self.run.log({**metrics, "epoch": epoch})

    def log_step_metrics(self, metrics, step) -> None:
        self.run.log({**metrics, "global_step": step})

    def log_figure(self, tag, png, height, width, epoch) -> None:
        with tempfile.TemporaryDirectory(prefix="event_seg_figure_") as tmp:
            path = os.path.join(tmp, "figure.png")
            with open(path, "wb") as f:
                f.write(png)
            self.run.log({tag: self._wandb.Image(path), "epoch": epoch})

    def log_table(self, name, columns, rows) -> None:
        # In the summary, not the history: one table per run, shown on the run's overview.
        self.run.summary[name] = self._wandb.Table(columns=list(columns),
                                                   data=[list(r) for r in rows])

    def log_images(self, stage, batch_idx, panels, epoch) -> None:
        wandb = self._wandb
        class_labels = dict(enumerate(panels.class_names))
        # Images and masks go in as PNG files holding the bytes encoded once in Panels: from
        # arrays wandb would encode them again, slowly. W&B copies the files during run.log.
        # The overlay is the batch's RGB panel (samples stacked) with both masks on top.
        with tempfile.TemporaryDirectory(prefix="event_seg_panels_") as tmp:
            def png_file(name: str, data: bytes) -> str:
                path = os.path.join(tmp, f"{name}.png")
                with open(path, "wb") as f:
                    f.write(data)
                return path

            overlay = wandb.Image(
                png_file("rgb", panels.png("rgb")), caption=", ".join(panels.ids),
                masks={
                    "ground_truth": {"path": png_file("gt", panels.mask_png("ground_truth")),
                                     "class_labels": class_labels},
                    "predictions": {"path": png_file("pred", panels.mask_png("prediction")),
                                    "class_labels": class_labels},
                })
            prefix = f"{stage}/batch_{batch_idx:02d}"
            self.run.log({f"{prefix}/overlay": overlay,
                          f"{prefix}/grid": wandb.Image(png_file("grid", panels.png("grid"))),
                          "epoch": epoch})

    def close(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)  # non-zero: shown as failed, with the code
