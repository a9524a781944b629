"""Pictures for people: colourised masks, event frames and side-by-side panels.

Everything here is numpy uint8 HWC in, numpy uint8 HWC out, and knows nothing of loggers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np

IGNORE_COLOR = (255, 255, 255)  # no palette uses pure white, so ignored pixels stand out
POSITIVE_COLOR = np.array([220, 40, 40], np.float32)   # red: brightness went up
NEGATIVE_COLOR = np.array([40, 90, 230], np.float32)   # blue: brightness went down


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)
    lut[:] = IGNORE_COLOR
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    lut[ignore_index % 256] = IGNORE_COLOR
    return lut[np.clip(mask, 0, 255).astype(np.uint8)]


def event_frame(events: np.ndarray, representation: str) -> np.ndarray:
    """Net polarity per pixel on white: positive events red, negative blue, strength by count."""
    events = np.asarray(events, np.float32)
    if representation == "histogram":
        net = events[1] - events[0]
    else:  # voxel grid: the sum over time bins is the signed event count (up to normalisation)
        net = events.sum(axis=0)
    scale = np.percentile(np.abs(net[net != 0]), 99) if np.any(net) else 1.0
    strength = np.clip(np.abs(net) / max(scale, 1e-6), 0, 1)[..., None]
    color = np.where(net[..., None] > 0, POSITIVE_COLOR, NEGATIVE_COLOR)
    img = 255 * (1 - strength) + color * strength
    return img.astype(np.uint8)


def side_by_side(images: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
    h = max(i.shape[0] for i in images)
    spacer = np.full((h, gap, 3), 255, np.uint8)
    parts = []
    for i, img in enumerate(images):
        parts.append(img)
        if i < len(images) - 1:
            parts.append(spacer)
    return np.concatenate(parts, axis=1)


def stack_rows(rows: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
    w = max(r.shape[1] for r in rows)
    spacer = np.full((gap, w, 3), 255, np.uint8)
    parts = []
    for i, row in enumerate(rows):
        parts.append(row)
        if i < len(rows) - 1:
            parts.append(spacer)
    return np.concatenate(parts, axis=0)


@dataclass
class PanelSample:
    """One sample as W&B overlays want it: the RGB and two class-id masks."""

    id: str
    rgb: np.ndarray           # uint8 HWC
    ground_truth: np.ndarray  # uint8/int HW class ids (ignore stays ignore_index)
    prediction: np.ndarray


@dataclass
class Panels:
    """The pictures of one visualised batch.

    ``images`` holds one picture per panel with the samples stacked vertically: ``rgb``,
    ``events``, ``ground_truth``, ``prediction`` and ``grid`` (all four side by side).
    """

    images: Dict[str, np.ndarray]
    samples: List[PanelSample]
    class_names: List[str]


def render_panels(rgb: np.ndarray, events: np.ndarray, mask: np.ndarray, pred: np.ndarray,
                  ids: Sequence[str], palette, class_names, ignore_index: int,
                  representation: str) -> Panels:
    """Renders a batch given as numpy arrays: rgb uint8 [B,H,W,3], events [B,C,H,W], mask and
    pred [B,H,W]."""
    columns = {"rgb": [], "events": [], "ground_truth": [], "prediction": []}
    samples = []
    for i in range(len(rgb)):
        columns["rgb"].append(rgb[i])
        columns["events"].append(event_frame(events[i], representation))
        columns["ground_truth"].append(colorize(mask[i], palette, ignore_index))
        columns["prediction"].append(colorize(pred[i], palette, ignore_index))
        samples.append(PanelSample(str(ids[i]), rgb[i], mask[i].astype(np.uint8),
                                   pred[i].astype(np.uint8)))
    images = {name: stack_rows(col) for name, col in columns.items()}
    images["grid"] = stack_rows([side_by_side([columns[c][i] for c in columns])
                                 for i in range(len(rgb))])
    return Panels(images=images, samples=samples, class_names=list(class_names))


def panel_renderer(info):
    """``render(rgb, events, mask, pred, ids) -> Panels`` for a dataset; rgb comes normalised
    float [B,3,H,W] as the loader yields it and is turned back into displayable uint8 here."""
    from .data.transforms import denormalize_rgb

    def render(rgb, events, mask, pred, ids) -> Panels:
        rgb_u8 = np.stack([denormalize_rgb(x) for x in rgb])
        return render_panels(rgb_u8, events, mask, pred, ids, info.palette, info.class_names,
                             info.ignore_index, info.representation)

    return render
