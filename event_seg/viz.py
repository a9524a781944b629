"""Pictures for people: colourised masks, event frames and side-by-side panels.

Everything here is numpy uint8 HWC in, numpy uint8 HWC out, and knows nothing of loggers.
"""

from __future__ import annotations

from typing import Sequence

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
