"""Renders prediction panels from a checkpoint: RGB | events | ground truth | prediction.

    .venv/bin/python scripts/prediction_panel.py outputs/<run>/checkpoints/best.pt [out.png] \
        [--split val] [--n 4]

The model and data are rebuilt from the config stored in the checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out", nargs="?", default="prediction_panel.png")
    parser.add_argument("--split", default="val")
    parser.add_argument("--n", type=int, default=4, help="samples (rows) to show")
    parser.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscaling")
    args = parser.parse_args()

    import cv2
    import torch
    from omegaconf import OmegaConf

    from event_seg.data import build_data
    from event_seg.data.device_input import ModelInputBuilder
    from event_seg.engine.checkpoint import load_checkpoint
    from event_seg.models import build_model
    from event_seg.viz import colorize, event_frame, side_by_side, stack_rows

    state = load_checkpoint(Path(args.checkpoint))
    cfg = OmegaConf.create(state["config"])
    cfg.trainer.num_workers = 0
    cfg.trainer.batch_size = args.n
    data = build_data(cfg.dataset, cfg.trainer, cfg.paths.cache_dir, splits=(args.split,))
    model = build_model(cfg.model, data.info)
    model.load_state_dict(state["model"])
    model.eval()
    batch = next(iter(data.loaders[args.split]))
    built = ModelInputBuilder(data.info, "cpu", normalize_events=cfg.dataset.normalize_events)(batch)
    with torch.no_grad():
        pred = model(built.inputs).argmax(1).numpy()
    info = data.info
    rows = []
    for i in range(min(args.n, len(pred))):
        events = (built.events[i].numpy() if built.events is not None
                  else np.zeros((1,) + pred.shape[1:], np.float32))
        rgb = batch["rgb"][i].numpy() if "rgb" in batch else np.zeros(pred.shape[1:] + (3,), np.uint8)
        rows.append(side_by_side([
            rgb,
            event_frame(events, info.representation),
            colorize(batch["mask"][i].numpy(), info.palette, info.ignore_index),
            colorize(pred[i], info.palette, info.ignore_index),
        ]))
    grid = stack_rows(rows)
    grid = np.repeat(np.repeat(grid, args.scale, 0), args.scale, 1)
    cv2.imwrite(args.out, grid[..., ::-1])
    print(f"wrote {args.out}  (columns: RGB | events | ground truth | prediction)")


if __name__ == "__main__":
    sys.exit(main())
