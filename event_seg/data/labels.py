"""Class names, palettes and label mappings."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def remap_labels(tags: np.ndarray, label_map: Optional[Sequence[int]], ignore_index: int) -> np.ndarray:
    """Maps raw label ids to training classes with a lookup table: a uint8 mask (masks travel
    as uint8; the config keeps classes and ``ignore_index`` below 256). Unknown ids become
    ignore.

    ``label_map[i]`` is the class of raw id ``i``; ``None`` keeps ids as they are (ids above 255
    become ignore).
    """
    if label_map is None:
        if tags.dtype == np.uint8:
            return tags
        label_map = range(256)
    size = 256 if tags.dtype == np.uint8 else max(int(tags.max()) + 1, len(label_map))
    lut = np.full(size, ignore_index, dtype=np.uint8)
    lut[: len(label_map)] = np.asarray(label_map, dtype=np.int64)
    return lut[tags]


def class_frequencies(mask: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    valid = mask[mask != ignore_index]
    return np.bincount(valid.ravel(), minlength=num_classes)[:num_classes]


class LabelMapper:
    """``remap_labels`` with the look-up table built once (a reader calls it per sample); uint8
    tags, the usual case, go through one ``cv2.LUT``."""

    def __init__(self, label_map: Optional[Sequence[int]], ignore_index: int):
        self.label_map = None if label_map is None else [int(v) for v in label_map]
        self.ignore_index = ignore_index
        self.lut = None
        if self.label_map is not None:
            self.lut = np.full(256, ignore_index, dtype=np.uint8)
            self.lut[: min(len(self.label_map), 256)] = self.label_map[:256]

    def __call__(self, tags: np.ndarray) -> np.ndarray:
        if tags.dtype == np.uint8 and self.lut is not None:
            import cv2

            return cv2.LUT(tags, self.lut)
        return remap_labels(tags, self.label_map, self.ignore_index)
