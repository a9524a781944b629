"""A reader for a folder of ``.npz`` event windows and PNG labels: the worked example of your
own dataset (``dataset._target_``).

::

    <root>/<split folder>/events/<name>.npz   one window of events: arrays x, y, t, p
                                              (p 0/1 or -1/+1; t in any unit, any dtype)
    <root>/<split folder>/labels/<name>.png   class ids, one byte per pixel (255: ignore)
    <root>/<split folder>/rgb/<name>.png      the RGB frame (optional; needed by the
                                              rgb and rgb+events modalities)

A sample is a label with its events file, paired by ``<name>``; a label without one is skipped
and counted. event_seg builds the reader once per split as
``NpzFolderReader(split_dir=, split=, transform=, representation=, num_bins=,
normalize_events=, label_map=, ignore_index=, **dataset.kwargs)``.

Subclassing ``RawEventsDataset`` does the rest: ``__getitem__`` calls ``read`` and applies the
transform (flips, crops, pads, moving the events with the pixels) and builds the compact sample;
``class_mask`` maps label ids through ``dataset.label_map`` and refuses ids beyond the classes.
``read`` returns the untransformed sample: ``rgb`` uint8 [H, W, 3] or None, ``mask`` uint8
[H, W], ``events`` from ``compact_events`` (int16 x/y, small time offsets, int8 -1/+1) and a
str ``id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from event_seg.data.event_scapes import read_events, read_label, read_rgb
from event_seg.data.events import compact_events
from event_seg.data.sample import RawEventsDataset
from event_seg.errors import DatasetError


@dataclass(frozen=True)
class NpzFrame:
    id: str
    label: Path
    events: Path
    rgb: Optional[Path]


class NpzFolderReader(RawEventsDataset):
    """Args (besides what event_seg passes):
        rgb_folder: the sub-folder of RGB frames (``dataset.kwargs.rgb_folder``); frames are
            read when it exists.
        time_unit: the unit of ``t`` (``s``, ``ms``, ``us``, ``ns``), if known; the time surface
            representation needs it, the voxel grid and the histogram do not.
    """

    def __init__(self, split_dir, split, transform, representation, num_bins, normalize_events,
                 label_map, ignore_index, rgb_folder: str = "rgb",
                 time_unit: Optional[str] = None):
        split_dir = Path(split_dir)
        labels_dir = split_dir / "labels"
        if not labels_dir.is_dir():
            raise DatasetError(f"{split_dir} has no labels/ folder (expected labels/, events/ "
                               f"and optionally {rgb_folder}/)")
        frames, skipped = [], 0
        for label in sorted(labels_dir.glob("*.png")):
            events = split_dir / "events" / f"{label.stem}.npz"
            if not events.is_file():
                skipped += 1
                continue
            rgb = split_dir / rgb_folder / f"{label.stem}.png"
            frames.append(NpzFrame(f"{split}/{label.stem}", label, events,
                                   rgb if rgb.is_file() else None))
        super().__init__(frames, representation, num_bins, normalize_events, label_map,
                         ignore_index, transform)
        self.skipped = skipped  # reported by event_seg as frames skipped while indexing
        self.time_unit = time_unit

    def sources(self, index: int) -> list:
        f = self.frames[index]
        return [p for p in (f.rgb, f.label, f.events) if p is not None]

    def read(self, index: int) -> dict:
        f = self.frames[index]
        tags = read_label(f.label)
        rgb = read_rgb(f.rgb) if f.rgb is not None else None
        if rgb is not None and rgb.shape[:2] != tags.shape:
            raise DatasetError(f"{f.rgb} is {rgb.shape[:2]}, its label {f.label} {tags.shape}")
        return {"rgb": rgb, "mask": self.class_mask(tags, f.label),
                "events": self.window_events(index, tags.shape), "id": f.id}

    def window_events(self, index: int, shape) -> dict:
        f = self.frames[index]
        raw = read_events(f.events)  # x, y, t, p; a missing key or a corrupt file: DatasetError
        return compact_events(raw["x"], raw["y"], raw["t"], raw["p"], shape[0], shape[1],
                              str(f.events))
