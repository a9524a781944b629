"""Reader for DSEC-Semantic (ESS, Sun et al. 2022).

::

    <root>/<split folder>/zurich_city_XX_y/
        semantic/timestamps.txt                      one int64 (microseconds) per label
        semantic/{11classes,19classes}/data/NNNNNN.png
        events/left/events.h5                        events/{x,y,t,p}, t_offset, ms_to_idx
        events/left/rectify_map.h5                   rectify_map (480, 640, 2)   (optional)

``events.h5`` is Blosc/ZSTD-compressed, so ``hdf5plugin`` is imported before ``h5py`` opens it.
Files are opened lazily, once per DataLoader worker (h5py handles do not survive a fork).
Event time ``t`` (microseconds) plus ``t_offset`` is the label clock. The window before each
label is either a fixed duration or a fixed number of events, found through ``ms_to_idx``
(the index of the first event at or after each millisecond) and refined with a binary search.
Events are checked against the 640 x 480 sensor (coordinates outside it are a ``DatasetError``
naming the file) and those in the bottom 40 rows are dropped to match the 640 x 440 labels; the
representation (built on the training device) normalises time over the events kept. With
``rectify``, coordinates go through ``rectify_map`` and are rounded to the nearest pixel (ESS
interpolates bilinearly instead); events landing off the sensor are dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..errors import DatasetError
from .event_scapes import read_label
from .sample import RawEventsDataset

log = logging.getLogger(__name__)

SENSOR_HEIGHT, SENSOR_WIDTH = 480, 640
LABEL_HEIGHT = 440


@dataclass(frozen=True)
class DsecFrame:
    id: str
    sequence: Path
    label: Path
    timestamp_us: int


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetError(f"DSEC {what} not found: {path}")
    return path


def index_split(split_dir: Path, sequences: Optional[Sequence[str]], classes: int):
    """Labelled frames of the listed sequences (all under ``split_dir`` when None)."""
    if not split_dir.is_dir():
        raise DatasetError(f"split folder not found: {split_dir}")
    names = sorted(p.name for p in split_dir.iterdir() if p.is_dir()) if sequences is None \
        else list(sequences)
    if not names:
        raise DatasetError(f"no sequences under {split_dir}")
    frames: List[DsecFrame] = []
    for name in names:
        seq = split_dir / name
        _require(seq, "sequence folder")
        _require(seq / "events" / "left" / "events.h5", "event file")
        label_dir = _require(seq / "semantic" / f"{classes}classes" / "data",
                             f"{classes}-class label folder")
        stamps_file = _require(seq / "semantic" / "timestamps.txt", "label timestamps")
        try:
            stamps = np.loadtxt(stamps_file, dtype=np.int64, ndmin=1)
        except ValueError as e:
            raise DatasetError(f"{stamps_file} does not hold one integer timestamp (us) per "
                               f"line: {' '.join(str(e).split())[:120]}") from None
        labels = sorted(label_dir.glob("*.png"))
        if len(labels) != len(stamps):
            raise DatasetError(f"{seq.name}: {len(labels)} label images but {len(stamps)} "
                               f"timestamps in {stamps_file} (incomplete download?)")
        frames += [DsecFrame(f"{name}/{p.stem}", seq, p, int(t)) for p, t in zip(labels, stamps)]
    return frames, 0


def window_indices(t: np.ndarray, ms_to_idx: np.ndarray, t_end: int, duration_us: Optional[int],
                   num_events: Optional[int]):
    """``[start, end)`` of the events before ``t_end`` (local microseconds).

    ``ms_to_idx`` narrows each binary search to one millisecond of events, so no search touches
    more than a millisecond of the (often billion-event) file.
    """
    def index_at(t_us: int) -> int:
        ms = int(np.clip(t_us // 1000, 0, len(ms_to_idx) - 1))
        lo = int(ms_to_idx[ms])
        hi = int(ms_to_idx[ms + 1]) if ms + 1 < len(ms_to_idx) else len(t)
        return lo + int(np.searchsorted(t[lo:hi], t_us, side="left"))

    end = index_at(t_end) if t_end >= 0 else 0
    if num_events is not None:
        return max(0, end - num_events), end
    return index_at(max(t_end - duration_us, 0)), end


class DsecSemanticDataset(RawEventsDataset):
    time_unit = "us"  # events.h5 `t`, as the DSEC format documents it

    def __init__(self, frames, representation: str, num_bins: int, normalize_events: bool,
                 label_map, ignore_index: int, duration_ms: Optional[float],
                 num_events: Optional[int], rectify: bool, transform=None):
        super().__init__(frames, representation, num_bins, normalize_events, label_map,
                         ignore_index, transform)
        self.duration_us = None if duration_ms is None else int(round(duration_ms * 1000))
        self.num_events = num_events
        self.rectify = rectify
        self._files = {}  # per-process cache of open h5 files (opened lazily, in the worker)

    def __getstate__(self):  # never ship open h5 handles to DataLoader workers
        state = dict(self.__dict__)
        state["_files"] = {}
        return state

    def _open(self, seq: Path):
        if seq not in self._files:
            import hdf5plugin  # noqa: F401  (registers Blosc/ZSTD before h5py reads)
            import h5py

            path = seq / "events" / "left" / "events.h5"
            try:
                f = h5py.File(path, "r")
            except OSError as e:
                raise DatasetError(f"cannot open {path}: {e}") from None
            rect = None
            if self.rectify:
                rect_path = _require(seq / "events" / "left" / "rectify_map.h5", "rectify map")
                with h5py.File(rect_path, "r") as r:
                    rect = r["rectify_map"][()]
            try:  # small per-sequence tables, read once
                index = (f["ms_to_idx"][()], int(f["t_offset"][()]))
            except (KeyError, OSError) as e:
                raise DatasetError(f"{path} lacks ms_to_idx or t_offset ({e})") from None
            try:  # dataset handles, looked up once (a lookup per sample costs ~0.3 ms each)
                arrays = {k: f[f"events/{k}"] for k in ("x", "y", "t", "p")}
            except KeyError as e:
                raise DatasetError(f"{path} lacks {e}; expected events/{{x,y,t,p}}, t_offset, "
                                   f"ms_to_idx") from None
            self._files[seq] = (path, arrays, rect, index)
        return self._files[seq]

    def read_events(self, frame: DsecFrame) -> dict:
        path, arrays, _, (ms_to_idx, t_offset) = self._open(frame.sequence)
        try:
            # Binary searches read only the slices they touch; the window is then read once.
            start, end = window_indices(arrays["t"], ms_to_idx, frame.timestamp_us - t_offset,
                                        self.duration_us, self.num_events)
            events = {k: a[start:end] for k, a in arrays.items()}
        except OSError as e:  # e.g. "required filter 'Blosc' is not registered"
            raise DatasetError(f"cannot read {path}: {e}") from None
        except KeyError as e:
            raise DatasetError(f"{path} lacks {e}; expected events/{{x,y,t,p}}, t_offset, "
                               f"ms_to_idx") from None
        return events

    def rectified(self, frame: DsecFrame, events: dict) -> dict:
        """Checked sensor coordinates through ``rectify_map``, rounded; off-sensor ones dropped."""
        rect = self._open(frame.sequence)[2]
        if rect is None or not len(events["x"]):
            return events
        xy = rect[events["y"], events["x"]]
        with np.errstate(invalid="ignore"):  # NaN entries of the map: dropped below
            x, y = np.rint(xy[:, 0]), np.rint(xy[:, 1])
            keep = (x >= 0) & (x < SENSOR_WIDTH) & (y >= 0) & (y < SENSOR_HEIGHT)
        return {"x": x[keep].astype(np.int16), "y": y[keep].astype(np.int16),
                "t": events["t"][keep], "p": events["p"][keep]}

    def sources(self, index: int) -> list:
        frame = self.frames[index]
        left = frame.sequence / "events" / "left"
        # Everything that shapes the sample: the events, the label, the label times that place
        # the window and, when used, the rectification map.
        files = [left / "events.h5", frame.label, frame.sequence / "semantic" / "timestamps.txt"]
        return files + [left / "rectify_map.h5"] if self.rectify else files

    def window_events(self, index: int, shape=None) -> dict:
        from .events import compact_events

        frame = self.frames[index]
        raw = self.read_events(frame)
        path = frame.sequence / "events" / "left" / "events.h5"
        events = compact_events(raw["x"], raw["y"], raw["t"], raw["p"], SENSOR_HEIGHT,
                                SENSOR_WIDTH, f"{path} (window before {frame.timestamp_us} us)")
        events = self.rectified(frame, events)
        # The labels cover the top 440 rows of the sensor: events below them are dropped.
        inside = events["y"] < LABEL_HEIGHT
        if not inside.all():
            events = {k: v[inside] for k, v in events.items()}
        return events

    def read_mask(self, index: int) -> np.ndarray:
        frame = self.frames[index]
        return self.class_mask(read_label(frame.label), frame.label)

    def read(self, index: int) -> dict:
        frame = self.frames[index]
        tags = read_label(frame.label)
        if tags.shape != (LABEL_HEIGHT, SENSOR_WIDTH):
            raise DatasetError(f"label {frame.label} is {tags.shape}; DSEC labels are "
                               f"{LABEL_HEIGHT}x{SENSOR_WIDTH}")
        events = self.window_events(index, (LABEL_HEIGHT, SENSOR_WIDTH))
        # No RGB aligned to the event camera ships with DSEC-Semantic: the sample has none, and
        # the modality check refuses rgb and rgb+events before training.
        return {"rgb": None, "mask": self.class_mask(tags, frame.label), "events": events, "id": frame.id}
