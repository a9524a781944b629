"""The one sample contract every reader returns (see DESIGN.md)."""

from __future__ import annotations

import numpy as np


def make_sample(rgb: np.ndarray, events_hwc: np.ndarray, mask: np.ndarray, sample_id: str,
                transform=None) -> dict:
    """``rgb`` uint8 HWC, ``events_hwc`` float HWC, ``mask`` int HW -> the sample dict:
    ``rgb`` float32 [3,H,W], ``events`` float32 [C,H,W], ``mask`` int64 [H,W], ``id`` str."""
    if transform is not None:
        rgb, events_hwc, mask = transform(rgb, events_hwc, mask)
    return {
        "rgb": np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32),
        "events": np.ascontiguousarray(events_hwc.transpose(2, 0, 1), dtype=np.float32),
        "mask": np.asarray(mask).astype(np.int64),
        "id": sample_id,
    }


class RawEventsDataset:
    """What every reader that bins raw events shares: the frame list, the representation to
    build, the label mapping and the joint transform. Subclasses implement ``__getitem__``."""

    def __init__(self, frames, representation: str, num_bins: int, normalize_events: bool,
                 label_map, ignore_index: int, transform=None):
        self.frames = list(frames)
        self.representation = representation
        self.num_bins = num_bins
        self.normalize_events = normalize_events
        self.label_map = label_map
        self.ignore_index = ignore_index
        self.transform = transform
        self.cache = None  # a RepresentationCache, set by build_data / event-seg-prepare

    def __len__(self) -> int:
        return len(self.frames)

    def cached_event_tensor(self, source: str, compute) -> np.ndarray:
        """The tensor from the representation cache when it holds one for ``source``;
        otherwise ``compute()`` (and store it when the cache is being prepared)."""
        if self.cache is not None:
            tensor = self.cache.load(source)
            if tensor is not None:
                return tensor
        tensor = compute()
        if self.cache is not None and self.cache.writable:
            self.cache.store(source, tensor)
        return tensor

    def event_tensor(self, events: dict, height: int, width: int) -> np.ndarray:
        from .events import events_to_tensor

        return events_to_tensor(events, self.representation, self.num_bins, height, width,
                                normalize=self.normalize_events)

    def class_mask(self, tags: np.ndarray) -> np.ndarray:
        from .labels import remap_labels

        return remap_labels(tags, self.label_map, self.ignore_index)


class SkipCorrupt:
    """``dataset.skip_corrupt=true``: a sample whose files cannot be read is replaced by the next
    readable one, with a warning naming the file and how many were skipped so far (per loader
    process). Off by default: a corrupt file should stop a run, not quietly shrink the data."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.bad: set = set()

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def transform(self):  # DataLoader workers reseed it (see build._seed_worker)
        return getattr(self.dataset, "transform", None)

    @property
    def frames(self):
        return getattr(self.dataset, "frames", None)

    def __getitem__(self, index: int) -> dict:
        import logging

        from ..errors import DatasetError

        n = len(self.dataset)
        for offset in range(n):
            j = (index + offset) % n
            if j in self.bad:
                continue
            try:
                return self.dataset[j]
            except DatasetError as e:
                self.bad.add(j)
                logging.getLogger(__name__).warning(
                    "Skipping a corrupt sample (%d skipped so far): %s", len(self.bad), e)
        raise DatasetError("dataset.skip_corrupt: every sample of this split is unreadable")
