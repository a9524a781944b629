"""Reader for DDD17 as released with EV-SegNet (Alonso & Murillo, 2019).

::

    <root>/{train,test}/images/   grayscale frames (PNG), 346 x 200
    <root>/{train,test}/labels/   class ids 0..5 (PNG), 255 = ignore
    <root>/{train,test}/events/   precomputed event tensors (.npy), (200, 346, 6) float

The three folders are paired by sorted file name (the release names them in step). The event
tensors are used as they are: a representation of their own (per polarity: count, mean and std
of normalised timestamps), so ``dataset.representation=precomputed``. The grayscale frame is
repeated to three channels so RGB encoders and the ``rgb+events`` modality work unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np

from ..errors import DatasetError
from .event_scapes import read_label
from .labels import remap_labels
from .sample import make_sample

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MODALITY_FOLDERS = ("images", "labels", "events")


def _listing(folder: Path, suffixes) -> List[Path]:
    if not folder.is_dir():
        raise DatasetError(f"DDD17 folder not found: {folder} (expected "
                           f"{folder.parent}/{{{','.join(MODALITY_FOLDERS)}}})")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)


def index_split(split_dir: Path):
    """Triples (image, label, events) of one split, paired by sorted name; counts must agree."""
    images = _listing(split_dir / "images", IMAGE_SUFFIXES)
    labels = _listing(split_dir / "labels", IMAGE_SUFFIXES)
    events = _listing(split_dir / "events", (".npy",))
    counts = {"images": len(images), "labels": len(labels), "events": len(events)}
    if len(set(counts.values())) != 1:
        raise DatasetError(f"DDD17 split {split_dir} is incomplete: {counts} files "
                           f"(half-downloaded?); the three folders must pair one to one")
    if not images:
        raise DatasetError(f"DDD17 split {split_dir} holds no samples")
    return list(zip(images, labels, events)), 0


def read_gray_as_rgb(path: Path) -> np.ndarray:
    import cv2

    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise DatasetError(f"cannot read image {path} (missing or corrupt file)")
    return np.repeat(gray[..., None], 3, axis=2)


def read_event_tensor(path: Path, channels: int) -> np.ndarray:
    try:
        tensor = np.load(path, allow_pickle=False)
    except Exception as e:  # truncated or not an .npy at all
        raise DatasetError(f"cannot read event tensor {path}: {e} (corrupt or truncated?)") from None
    if tensor.ndim != 3 or tensor.shape[2] != channels:
        raise DatasetError(f"event tensor {path} has shape {tensor.shape}; expected "
                           f"(H, W, {channels})")
    return tensor.astype(np.float32, copy=False)


class DDD17Dataset:
    def __init__(self, triples, event_channels: int, label_map, ignore_index: int,
                 transform=None):
        self.triples = list(triples)
        self.event_channels = event_channels
        self.label_map = label_map
        self.ignore_index = ignore_index
        self.transform = transform

    def __len__(self) -> int:
        return len(self.triples)

    def __getitem__(self, index: int) -> dict:
        image, label, events = self.triples[index]
        rgb = read_gray_as_rgb(image)
        mask = remap_labels(read_label(label), self.label_map, self.ignore_index)
        tensor = read_event_tensor(events, self.event_channels)
        if not (rgb.shape[:2] == mask.shape == tensor.shape[:2]):
            raise DatasetError(f"DDD17 sample sizes differ: {image.name} {rgb.shape[:2]}, "
                               f"{label.name} {mask.shape}, {events.name} {tensor.shape[:2]}")
        return make_sample(rgb, tensor, mask, f"{image.parent.parent.name}/{image.stem}",
                           self.transform)
