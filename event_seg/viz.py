"""Pictures for people: colourised masks, event frames and side-by-side panels.

Everything here is numpy uint8 HWC in, numpy uint8 HWC out, and knows nothing of loggers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


def _join(images: Sequence[np.ndarray], axis: int, gap: int, fill=255) -> np.ndarray:
    """Concatenates along ``axis`` with ``gap`` pixels of ``fill`` between neighbours."""
    spacer_shape = list(images[0].shape)
    spacer_shape[axis] = gap
    spacer = np.full(spacer_shape, fill, images[0].dtype)
    parts = []
    for i, img in enumerate(images):
        parts.append(img)
        if i < len(images) - 1:
            parts.append(spacer)
    return np.concatenate(parts, axis=axis)


def side_by_side(images: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
    return _join(images, axis=1, gap=gap)


def stack_rows(rows: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
    return _join(rows, axis=0, gap=gap)


def encode_png(img: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 HWC image. Panels are mostly flat colours, for which zlib's
    run-length strategy is about as small as the default and faster; encoding is most of what
    logging images costs."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[..., ::-1], dtype=np.uint8),
                           [cv2.IMWRITE_PNG_COMPRESSION, 1,
                            cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def encode_mask_png(mask: np.ndarray) -> bytes:
    """Single-channel PNG of class ids (the form W&B mask overlays read)."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(mask, dtype=np.uint8),
                           [cv2.IMWRITE_PNG_COMPRESSION, 1,
                            cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


@dataclass
class Panels:
    """The pictures of one visualised batch.

    ``images`` holds one picture per panel with the samples stacked vertically: ``rgb``,
    ``events``, ``ground_truth``, ``prediction`` and ``grid`` (all four side by side).
    ``masks`` holds the class ids of ``ground_truth`` and ``prediction`` laid out exactly like
    the ``rgb`` panel (the gaps between samples are ``ignore_index``), for interactive overlays.
    """

    images: Dict[str, np.ndarray]
    masks: Dict[str, np.ndarray]
    class_names: List[str]
    ids: List[str]
    _png: Dict[str, bytes] = field(default_factory=dict, repr=False)

    def png(self, name: str) -> bytes:
        """The encoded panel, encoded once however many loggers ask for it."""
        if name not in self._png:
            self._png[name] = encode_png(self.images[name])
        return self._png[name]

    def mask_png(self, name: str) -> bytes:
        key = f"mask/{name}"
        if key not in self._png:
            self._png[key] = encode_mask_png(self.masks[name])
        return self._png[key]


def render_panels(rgb: np.ndarray, events: np.ndarray, mask: np.ndarray, pred: np.ndarray,
                  ids: Sequence[str], palette, class_names, ignore_index: int,
                  representation: str) -> Panels:
    """Renders a batch given as numpy arrays: rgb uint8 [B,H,W,3], events [B,C,H,W], mask and
    pred [B,H,W]."""
    columns = {"rgb": [], "events": [], "ground_truth": [], "prediction": []}
    for i in range(len(rgb)):
        columns["rgb"].append(rgb[i])
        columns["events"].append(event_frame(events[i], representation))
        columns["ground_truth"].append(colorize(mask[i], palette, ignore_index))
        columns["prediction"].append(colorize(pred[i], palette, ignore_index))
    images = {name: stack_rows(col) for name, col in columns.items()}
    images["grid"] = stack_rows([side_by_side([columns[c][i] for c in columns])
                                 for i in range(len(rgb))])
    masks = {name: _join([np.asarray(m, np.uint8) for m in ids_], axis=0, gap=2, fill=ignore_index)
             for name, ids_ in (("ground_truth", mask), ("prediction", pred))}
    return Panels(images=images, masks=masks, class_names=list(class_names),
                  ids=[str(i) for i in ids])


def panel_renderer(info):
    """``render(rgb, events, mask, pred, ids) -> Panels`` for a dataset: rgb uint8 [B,H,W,3] as
    the loader yields it, events the representation the model saw [B,C,H,W]."""

    def render(rgb, events, mask, pred, ids) -> Panels:
        return render_panels(rgb, events, mask, pred, ids, info.palette, info.class_names,
                             info.ignore_index, info.representation)

    return render
