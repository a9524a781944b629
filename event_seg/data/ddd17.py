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
from .sample import CompactReader

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
    """The stored ``(H, W, channels)`` tensor as a CHW view, as it is (float32 in the release).
    Non-finite values are a ``DatasetError`` naming the file: they would reach the model
    silently and surface epochs later as a NaN loss naming nothing."""
    try:
        tensor = np.load(path, allow_pickle=False)
    except Exception as e:  # truncated or not an .npy at all
        raise DatasetError(f"cannot read event tensor {path}: {e} (corrupt or truncated?)") from None
    if tensor.ndim != 3 or tensor.shape[2] != channels:
        raise DatasetError(f"event tensor {path} has shape {tensor.shape}; expected "
                           f"(H, W, {channels})")
    if tensor.dtype.kind != "f":
        tensor = tensor.astype(np.float32)
    if not np.isfinite(tensor).all():
        raise DatasetError(f"event tensor {path} holds NaN or infinite values (corrupt file?)")
    return tensor.transpose(2, 0, 1)


class DDD17Dataset(CompactReader):
    """Triples (image, label, events) read as compact samples: the grayscale frame as uint8
    RGB, the mask as uint8, the event tensor dense and as stored."""

    def __init__(self, triples, event_channels: int, label_map, ignore_index: int,
                 transform=None):
        super().__init__(triples, label_map, ignore_index, transform)
        self.event_channels = event_channels

    @property
    def triples(self):
        return self.frames

    def sample_id(self, index: int) -> str:
        image = self.frames[index][0]
        return f"{image.parent.parent.name}/{image.stem}"

    def sources(self, index: int) -> list:
        return list(self.frames[index])

    def read_mask(self, index: int) -> np.ndarray:
        label = self.frames[index][1]
        return self.class_mask(read_label(label), label)

    def read(self, index: int) -> dict:
        image, label, events = self.frames[index]
        rgb = read_gray_as_rgb(image)
        mask = self.class_mask(read_label(label), label)
        tensor = read_event_tensor(events, self.event_channels)
        if not (rgb.shape[:2] == mask.shape == tensor.shape[1:]):
            raise DatasetError(f"DDD17 sample sizes differ: {image.name} {rgb.shape[:2]}, "
                               f"{label.name} {mask.shape}, {events.name} {tensor.shape[1:]}")
        return {"rgb": rgb, "mask": mask, "dense": tensor, "id": self.sample_id(index)}
