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
    """Net polarity per pixel on white: positive events red, negative blue, strength by count
    (the time surface: the more recent polarity, strength by its recency)."""
    events = np.asarray(events, np.float32)
    if representation == "histogram":
        net = events[1] - events[0]
    elif representation == "time_surface":  # (negative, positive) decays in [0, 1]
        net = np.where(events[1] >= events[0], events[1], -events[0])
    else:  # voxel grid, MDES: the sum over channels is a signed event count (MDES: weighted
        net = events.sum(axis=0)  # by recency, a recent event counts in more channels)
    if representation == "time_surface":
        scale = 1.0  # an absolute scale: 1 is an event at the window's end
    else:
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


def confusion_image(confusion: np.ndarray, class_names: Sequence[str], title: str = "",
                    cell: int = 36) -> np.ndarray:
    """A row-normalised confusion matrix as an RGB picture: rows are the true classes, columns
    the predicted ones, each cell shaded and labelled by the share of its row's pixels (in %),
    class names on both axes. A class without labelled pixels has an empty row (shown as '-')."""
    from PIL import Image, ImageDraw, ImageFont

    cm = np.asarray(confusion, dtype=np.float64)
    n = len(class_names)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    font = ImageFont.load_default(size=max(10, cell // 3))
    label_w = int(max(font.getlength(str(c)) for c in class_names)) + 12
    top = label_w + (20 if title else 4)
    left = label_w + 22  # + the "true" axis caption
    img = Image.new("RGB", (left + n * cell + 6, top + n * cell + 24), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    for i in range(n):
        for j in range(n):
            v = share[i, j]
            shade = int(255 - 200 * v)  # white (0%) to dark blue (100%)
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1],
                           fill=(shade, shade, 255) if rows[i, 0] > 0 else (235, 235, 235),
                           outline=(200, 200, 200))
            text = "-" if rows[i, 0] == 0 else f"{100 * v:.0f}"
            colour = "white" if v > 0.6 else "black"
            draw.text((x0 + cell / 2, y0 + cell / 2), text, fill=colour, font=font, anchor="mm")
        draw.text((left - 4, top + i * cell + cell / 2), str(class_names[i]), fill="black",
                  font=font, anchor="rm")
    # Column names, written horizontally on a strip and turned upright.
    strip = Image.new("RGB", (label_w, n * cell), "white")
    sdraw = ImageDraw.Draw(strip)
    for j in range(n):
        sdraw.text((4, j * cell + cell / 2), str(class_names[j]), fill="black", font=font,
                   anchor="lm")
    img.paste(strip.rotate(90, expand=True), (left, top - label_w))
    draw.text((left + n * cell / 2, top + n * cell + 12), "predicted", fill="black", font=font,
              anchor="mm")
    side = Image.new("RGB", (n * cell, 16), "white")
    ImageDraw.Draw(side).text((n * cell / 2, 8), "true", fill="black", font=font, anchor="mm")
    img.paste(side.rotate(90, expand=True), (2, top))
    return np.asarray(img)
