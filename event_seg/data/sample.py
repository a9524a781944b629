"""The one sample contract every reader returns (see DESIGN.md)."""

from __future__ import annotations

from typing import Optional

import numpy as np


def make_sample(rgb, mask: np.ndarray, sample_id: str, events: Optional[dict] = None,
                dense: Optional[np.ndarray] = None, transform=None) -> dict:
    """The compact sample every reader returns (see DESIGN.md), after the joint transform.

    ``rgb``: uint8 ``[H, W, 3]`` or None (no frame ships with the dataset); ``mask``: uint8
    ``[H, W]`` class ids (``ignore_index`` where unlabelled); ``events``: the window's raw events
    in small dtypes (see events.compact_events) or None; ``dense``: an event tensor ``[C, H, W]``
    where the dataset ships one (or the prepared cache holds one), else None. The model input
    is built from these on the training device (device_input.py).
    """
    if mask.dtype != np.uint8:
        mask = mask.astype(np.uint8)
    if transform is not None:
        rgb, mask, events, dense = transform(rgb, mask, events, dense)
    sample = {"mask": np.ascontiguousarray(mask), "id": sample_id}
    if rgb is not None:
        sample["rgb"] = np.ascontiguousarray(rgb)
    if events is not None:
        sample["events"] = events
    if dense is not None:
        sample["dense"] = np.ascontiguousarray(dense)
    return sample


class CompactReader:
    """What every reader shares: the frame list, the label mapping, the joint transform and the
    prepared cache. A reader implements ``read(index)`` (the untransformed compact sample:
    ``rgb``, ``mask``, ``events`` or ``dense``, ``id``) and ``sources(index)`` (the files that
    sample is read from, which key its cache entry)."""

    def __init__(self, frames, label_map, ignore_index: int, transform=None):
        self.frames = list(frames)
        self.label_map = label_map
        self.ignore_index = ignore_index
        self.transform = transform
        self.cache = None  # a PackedSplit of the prepared cache, set by build_data

    def __len__(self) -> int:
        return len(self.frames)

    def read(self, index: int) -> dict:
        raise NotImplementedError

    def sources(self, index: int) -> list:
        raise NotImplementedError

    def sample_id(self, index: int) -> str:
        return self.frames[index].id

    # True where ``dense`` is built from raw events (the prepared cache may store it so); False
    # where the dataset ships dense tensors (DDD17): those are the input as they are.
    dense_from_events = False

    def __getitem__(self, index: int) -> dict:
        raw = self.cache.get(self, index) if self.cache is not None else None
        if raw is None:
            raw = self.read(index)
        sample = make_sample(raw["rgb"], raw["mask"], raw["id"], raw.get("events"),
                             raw.get("dense"), self.transform)
        if "dense" in sample and self.dense_from_events and self.transform is not None:
            from .transforms import changes_the_events, move_events

            applied = self.transform.last_applied
            if changes_the_events(applied):
                # A representation cached before a crop or an affine is not the one built from
                # the moved events: bin this sample's events as the raw path does (exact).
                events = self.window_events(index, raw["mask"].shape)
                sample["events"] = move_events(events, applied)
                del sample["dense"]
        return sample

    def window_events(self, index: int, shape) -> dict:
        """The compact events of sample ``index`` alone (see events.compact_events)."""
        raise NotImplementedError

    def read_mask(self, index: int) -> np.ndarray:
        """The un-augmented class mask of sample ``index`` (class_weights=auto counts these).
        Readers whose labels are files of their own override it to read the label alone."""
        return self.read(index)["mask"]

    num_classes = None  # set by build.split_dataset: class ids of the mask are checked against it

    def class_mask(self, tags: np.ndarray, source) -> np.ndarray:
        """The uint8 class mask of a label image; an id beyond the classes that is not the
        ignore index is a ``DatasetError`` naming ``source`` (it would otherwise be an index
        error inside the loss, or a device-side assert on a GPU)."""
        if getattr(self, "_labels", None) is None:
            from .labels import LabelMapper

            self._labels = LabelMapper(self.label_map, self.ignore_index)
        mask = self._labels(tags)
        if self.num_classes is not None and self.label_map is None:
            bad = (mask >= self.num_classes) & (mask != self.ignore_index)
            if bad.any():
                from ..errors import DatasetError

                ids = sorted(set(np.unique(mask[bad]).tolist()))[:5]
                raise DatasetError(f"{source}: label ids {ids} are beyond the "
                                   f"{self.num_classes} classes of dataset.class_names and not "
                                   f"dataset.ignore_index={self.ignore_index}")
        return mask


class RawEventsDataset(CompactReader):
    """A reader of raw window events: the representation settings travel with it (the device
    builds the tensor; the prepared cache may store it dense)."""

    dense_from_events = True

    # The unit of the raw stamps ("us", "ns", ... : events.SECONDS_PER_TICK), None if unknown.
    # Events keep the format's own tick (exact integer offsets); the time surface converts its
    # decay constant to this unit instead (events.tau_in_ticks). A format that documents its
    # unit sets it here; one that does not detects it (EventScapesDataset).
    time_unit = None

    def __init__(self, frames, representation: str, num_bins: int, normalize_events: bool,
                 label_map, ignore_index: int, transform=None):
        super().__init__(frames, label_map, ignore_index, transform)
        self.representation = representation
        self.num_bins = num_bins
        self.normalize_events = normalize_events


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

    @property
    def time_unit(self):
        return getattr(self.dataset, "time_unit", None)

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


def sample_event_tensor(sample: dict, representation: str, num_bins: int,
                        normalize: bool = False, tau=None) -> np.ndarray:
    """The event tensor ``[C, H, W]`` (float32) of one compact sample, built with the numpy
    reference functions: what the device builds for it in a batch (notebooks, tests). ``tau``:
    the time surface's decay constant in the unit of the stamps (events.tau_in_ticks)."""
    if "dense" in sample:
        return np.asarray(sample["dense"], dtype=np.float32)
    from .events import events_to_tensor

    height, width = sample["mask"].shape
    return events_to_tensor(sample["events"], representation, num_bins, height, width,
                            normalize=normalize, tau=tau)
