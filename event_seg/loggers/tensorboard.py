"""TensorBoard through torch's SummaryWriter: epoch scalars, config text, image panels."""

from __future__ import annotations

import json
import math

from .base import Logger


class TensorBoardLogger(Logger):
    name = "tensorboard"

    def __init__(self, trial, subdir: str = "tensorboard", start_epoch: int = 0,
                 start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = trial.run_dir / subdir
        # On resume, purge anything logged at or after the first epoch to redo, so restarted
        # epochs are not duplicated.
        self.writer = SummaryWriter(str(self.log_dir),
                                    purge_step=start_epoch + 1 if start_epoch > 0 else None)
        # Step curves have their own x-axis (the global step), so their own event file folder:
        # a purge is per folder, and the epoch purge above would drop every step after epoch 1.
        self.step_dir = self.log_dir / "steps"
        self._step_writer = None
        self._purge_step = start_step + 1 if start_step > 0 else None

    def log_config(self, config, meta) -> None:
        text = json.dumps({"meta": meta, "config": config}, indent=2, default=str)
        # Markdown code block keeps the JSON readable in TensorBoard's text tab.
        self.writer.add_text("run/config", "```\n" + text + "\n```", 0)
        self.writer.flush()

    def log_metrics(self, metrics, epoch) -> None:
        for key, value in metrics.items():
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def log_step_metrics(self, metrics, step) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if self._step_writer is None:  # opened on first use: no empty folder without curves
            self._step_writer = SummaryWriter(str(self.step_dir), purge_step=self._purge_step)
        for key, value in metrics.items():
            if value is not None and math.isfinite(value):
                self._step_writer.add_scalar(key, value, step)
        self._step_writer.flush()

    def log_figure(self, tag, png, height, width, epoch) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png)
        self.writer._get_file_writer().add_summary(
            Summary(value=[Summary.Value(tag=tag, image=image)]), epoch)
        self.writer.flush()

    def log_table(self, name, columns, rows) -> None:
        lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
        self.writer.add_text(name, "\n".join(lines), 0)
        self.writer.flush()

    def log_images(self, stage, batch_idx, panels, epoch) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        # The PNGs are encoded once in Panels and shared with other loggers; add_image would
        # re-encode them with PIL at a slower setting.
        values = []
        for panel, image in panels.images.items():
            encoded = Summary.Image(height=image.shape[0], width=image.shape[1], colorspace=3,
                                    encoded_image_string=panels.png(panel))
            values.append(Summary.Value(tag=f"{stage}/batch_{batch_idx:02d}/{panel}", image=encoded))
        self.writer._get_file_writer().add_summary(Summary(value=values), epoch)
        self.writer.flush()

    def close(self, exit_code: int = 0) -> None:
        self.writer.close()
        if self._step_writer is not None:
            self._step_writer.close()


def _cell(value) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}"
    return str(value)
