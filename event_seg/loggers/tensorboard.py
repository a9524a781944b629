"""TensorBoard through torch's SummaryWriter: epoch scalars, config text, image panels."""

from __future__ import annotations

import json
import math

from .base import Logger


class TensorBoardLogger(Logger):
    name = "tensorboard"

    def __init__(self, trial, subdir: str = "tensorboard", start_epoch: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = trial.run_dir / subdir
        # On resume, purge anything logged at or after the first epoch to redo, so restarted
        # epochs are not duplicated.
        self.writer = SummaryWriter(str(self.log_dir),
                                    purge_step=start_epoch + 1 if start_epoch > 0 else None)

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
