"""Reader for the EventScape on-disk layout (RAM-Net release), also used by the synthetic set.

::

    <root>/<split folder>/TownXX/sequence_<k>/
        rgb/data/       TT_SSS_FFFF_image.png         + timestamps.txt
        events/data/    TT_SSS_FFFF_events.npz        + timestamps.txt + boundary_timestamps.txt
        semantic/data/  TT_SSS_FFFF_gt_labelIds.png

Modalities are paired by the frame index in the file names. Frames without an events file (the
first of each sequence in the release) are skipped and counted. A sample carries the
window's raw events from the ``.npz`` (x, y, t, p) in compact dtypes; the representation is
built on the training device. The voxel grid, the histogram and the MDES need no time unit;
the time surface does, and the release does not document it, so the reader detects it
(``EventScapesDataset.time_unit``).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..errors import DatasetError  # noqa: F401  (re-exported)
from .events import SECONDS_PER_TICK
from .sample import RawEventsDataset

log = logging.getLogger(__name__)

FRAME_RE = re.compile(r"^(\d+)_(\d+)_(\d+)_gt_labelIds\.png$")


@dataclass(frozen=True)
class FrameFiles:
    id: str
    rgb: Path
    events: Path
    label: Path


def index_split(split_dir: Path) -> tuple[list[FrameFiles], int]:
    """All labelled frames under one split folder, and how many were skipped for lack of events."""
    if not split_dir.is_dir():
        raise DatasetError(f"split folder not found: {split_dir}")
    sequences = sorted(p for p in split_dir.glob("*/sequence_*") if p.is_dir())
    if not sequences:
        raise DatasetError(f"no TownXX/sequence_<k> folders under {split_dir}")
    frames, skipped = [], 0
    for seq in sequences:
        sem_dir = seq / "semantic" / "data"
        if not sem_dir.is_dir():
            raise DatasetError(f"{seq} has no semantic/data folder (incomplete download?)")
        for label in sorted(sem_dir.iterdir()):
            m = FRAME_RE.match(label.name)
            if not m:
                continue
            stem = f"{m.group(1)}_{m.group(2)}_{m.group(3)}"
            rgb = seq / "rgb" / "data" / f"{stem}_image.png"
            events = seq / "events" / "data" / f"{stem}_events.npz"
            if not events.exists():
                skipped += 1
                continue
            if not rgb.exists():
                raise DatasetError(f"missing RGB frame {rgb} (paired with {label.name})")
            frames.append(FrameFiles(f"{seq.parent.name}/{seq.name}/{stem}", rgb, events, label))
    if not frames:
        raise DatasetError(f"no frames with events and labels under {split_dir}")
    return frames, skipped


TIME_UNITS = SECONDS_PER_TICK  # the units a detection may find


def detect_time_unit(tick_span: float, window_seconds: float) -> Optional[str]:
    """The unit whose reading of ``tick_span`` raw ticks comes closest (in ratio) to the window's
    duration in seconds. The release does not document the unit of ``t`` (CARLA's DVS works in
    nanoseconds), so it is detected rather than assumed."""
    if tick_span <= 0 or window_seconds <= 0:
        return None
    return min(TIME_UNITS, key=lambda u: abs(math.log(tick_span * TIME_UNITS[u] / window_seconds)))


def sniff_time_unit(frames: List[FrameFiles]) -> Optional[str]:
    """Detects the unit of ``t`` on the first frame: its events' span against the spacing of
    ``events/data/timestamps.txt`` (seconds). The time surface converts its decay constant to
    it; the other representations do not depend on it."""
    for f in frames[:5]:
        stamps_file = f.events.parent / "timestamps.txt"
        if not stamps_file.is_file():
            continue
        try:
            stamps = np.loadtxt(stamps_file, ndmin=2)
        except ValueError:  # not numbers: the unit stays unknown (it is informational)
            continue
        if stamps.shape[0] < 2:
            continue
        try:
            t = read_events(f.events)["t"]
        except DatasetError:  # reported (or skipped) when the sample itself is read
            continue
        if t.size > 1 and np.isfinite(t).all():
            return detect_time_unit(float(t.max()) - float(t.min()),
                                    float(np.median(np.diff(stamps[:, -1]))))
    return None


def read_rgb(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"cannot read image {path} (missing or corrupt file)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label(path: Path) -> np.ndarray:
    import cv2

    tags = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if tags is None:
        raise DatasetError(f"cannot read label {path} (missing or corrupt file)")
    return tags[..., 0] if tags.ndim == 3 else tags


def read_events(path: Path) -> dict:
    try:
        with np.load(path) as f:
            return {k: f[k] for k in ("x", "y", "t", "p")}
    except KeyError as e:
        raise DatasetError(f"events file {path} lacks key {e}; expected x, y, t, p") from None
    except Exception as e:  # zipfile.BadZipFile, EOFError, ValueError from a truncated file
        raise DatasetError(f"cannot read events file {path}: {e} (corrupt or truncated?)") from None


class EventScapesDataset(RawEventsDataset):
    """A map-style dataset returning compact samples (see sample.make_sample).

    Args:
        frames: the indexed frames of one split.
        representation, num_bins, normalize_events: the event tensor the device builds.
        label_map: ``label_map[tag]`` is the class of tag ``tag``; others become ``ignore_index``.
        transform: a joint transform (see transforms.py) or None.

    The events are binned at the frame size (the sensor): coordinates outside it, non-finite
    stamps or a file without x, y, t, p are a ``DatasetError`` naming the file.
    """

    @property
    def time_unit(self) -> Optional[str]:
        """The unit of ``t`` (see RawEventsDataset.time_unit), detected once from this split's
        first windows: the release does not document it."""
        if not hasattr(self, "_time_unit"):
            self._time_unit = sniff_time_unit(self.frames)
        return self._time_unit

    def sources(self, index: int) -> list:
        f = self.frames[index]
        return [f.rgb, f.label, f.events]

    def read(self, index: int) -> dict:
        f = self.frames[index]
        rgb = read_rgb(f.rgb)
        height, width = rgb.shape[:2]
        tags = read_label(f.label)
        if tags.shape != (height, width):
            raise DatasetError(f"label {f.label} is {tags.shape}, its RGB frame {height}x{width}")
        events = self.window_events(index, (height, width))
        return {"rgb": rgb, "mask": self.class_mask(tags, f.label), "events": events, "id": f.id}

    def read_mask(self, index: int) -> np.ndarray:
        f = self.frames[index]
        return self.class_mask(read_label(f.label), f.label)

    def window_events(self, index: int, shape) -> dict:
        from .events import compact_events

        f = self.frames[index]
        raw = read_events(f.events)
        return compact_events(raw["x"], raw["y"], raw["t"], raw["p"], shape[0], shape[1],
                              str(f.events))
