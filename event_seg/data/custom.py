"""Your own reader, named by ``dataset._target_`` (see docs/custom_model_and_dataset.md).

It is built once per split as ``Reader(split_dir=, split=, transform=, representation=,
num_bins=, normalize_events=, label_map=, ignore_index=, **dataset.kwargs)`` and must return the
compact samples of the built-in readers (sample.make_sample; subclassing
sample.RawEventsDataset gives the transform, the label mapping and the class-id check for free).
Every sample it returns is checked against that contract here, cheaply (dtypes, shapes, the
range of event coordinates and class ids): a wrong one is a one-line DatasetError naming the
reader, the sample and what is wrong, not an error deep in collate or a device-side assert.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import numpy as np

from ..errors import DatasetError

DOC = "docs/custom_model_and_dataset.md"
TIME_DTYPES = (np.int32, np.int64, np.float32)


def build_reader(dataset_cfg, split: str, split_dir: Path, transform):
    """The reader of one split and how many frames it skipped (its ``skipped`` attribute)."""
    from ..targets import build

    label_map = None if dataset_cfg.label_map is None else [int(v) for v in dataset_cfg.label_map]
    reader = build(dataset_cfg, "dataset", split_dir=Path(split_dir), split=split,
                   transform=transform, representation=str(dataset_cfg.representation),
                   num_bins=int(dataset_cfg.num_bins),
                   normalize_events=bool(dataset_cfg.normalize_events), label_map=label_map,
                   ignore_index=int(dataset_cfg.ignore_index))
    name = dataset_cfg._target_
    if not (hasattr(reader, "__len__") and hasattr(reader, "__getitem__")):
        raise DatasetError(f"dataset._target_={name} returned a {type(reader).__name__}, which "
                           f"has no __len__ and __getitem__ (a map-style dataset; see {DOC})")
    if len(reader) == 0:
        raise DatasetError(f"dataset._target_={name} found no samples for split {split} in "
                           f"{split_dir}")
    return reader, int(getattr(reader, "skipped", 0) or 0)


@dataclass(frozen=True)
class SampleSpec:
    """What every sample of this dataset must look like after the transform."""

    reader: str
    height: int
    width: int
    modality: str
    representation: str
    event_channels: int
    num_classes: int
    ignore_index: int

    @classmethod
    def of(cls, dataset_cfg, event_channels: int) -> "SampleSpec":
        return cls(str(dataset_cfg._target_), int(dataset_cfg.height), int(dataset_cfg.width),
                   str(dataset_cfg.modality), str(dataset_cfg.representation), int(event_channels),
                   len(dataset_cfg.class_names), int(dataset_cfg.ignore_index))


class CheckedSamples:
    """A ``_target_`` reader whose every sample is checked (see :func:`check_sample`). Attribute
    reads (``transform``, ``frames`` ...) go to the reader, so the samplers and SkipCorrupt see
    it as they see a built-in one."""

    def __init__(self, reader, spec: SampleSpec):
        self.reader = reader
        self.spec = spec

    def __len__(self) -> int:
        return len(self.reader)

    def __getattr__(self, name):
        if name in ("reader", "spec"):  # not set yet (unpickling in a worker): no recursion
            raise AttributeError(name)
        return getattr(self.reader, name)

    def __getitem__(self, index: int) -> dict:
        sample = self.reader[index]
        check_sample(sample, self.spec, index)
        return sample


def check_sample(sample, spec: SampleSpec, index: int) -> None:
    """Raises a one-line DatasetError where ``sample`` breaks the contract (DESIGN.md, Sample):
    ``mask`` uint8 ``[H, W]`` at the dataset's size, ``rgb`` uint8 ``[H, W, 3]`` (needed by the
    RGB modalities), raw ``events`` (x, y int16 inside the frame, t int32/int64/float32,
    p int8, one length) or a ``dense`` float tensor ``[C, H, W]`` (needed by the event
    modalities), and a str ``id``."""
    H, W = spec.height, spec.width

    def fail(what: str) -> None:
        sid = sample.get("id") if isinstance(sample, dict) else None
        raise DatasetError(f"dataset._target_={spec.reader}: sample {index}"
                           f"{f' (id {sid!r})' if sid is not None else ''} {what} (the sample "
                           f"contract: {DOC})")

    if not isinstance(sample, dict):
        fail(f"is a {type(sample).__name__}, not a dict (build it with sample.make_sample)")
    if not isinstance(sample.get("id"), str):
        fail(f"has id {sample.get('id')!r}; expected a str naming the sample")
    mask = sample.get("mask")
    _array(fail, "mask", mask, np.uint8, (H, W), "class ids, ignore_index where unlabelled")
    rgb = sample.get("rgb")
    if rgb is not None:
        _array(fail, "rgb", rgb, np.uint8, (H, W, 3), "the frame, RGB order")
    elif spec.modality != "events":
        fail(f"has no rgb, which dataset.modality={spec.modality} needs")
    events, dense = sample.get("events"), sample.get("dense")
    if spec.modality != "rgb":
        if events is None and dense is None:
            fail(f"has neither events nor dense, and dataset.modality={spec.modality} needs one")
        if spec.representation == "precomputed" and events is not None:
            fail("has raw events, but dataset.representation=precomputed reads dense tensors")
    if events is not None:
        _events(fail, events, H, W)
    if dense is not None:
        if not isinstance(dense, np.ndarray) or dense.dtype.kind != "f":
            fail(f"has dense {_describe(dense)}; expected a float array [C, H, W]")
        if dense.shape != (spec.event_channels, H, W):
            fail(f"has dense of shape {list(dense.shape)}; expected "
                 f"{[spec.event_channels, H, W]} (dataset.event_channels x height x width)")
    beyond = (mask >= spec.num_classes) & (mask != spec.ignore_index)
    if beyond.any():
        ids = sorted(set(np.unique(mask[beyond]).tolist()))[:5]
        fail(f"has class ids {ids} in its mask, beyond the {spec.num_classes} classes of "
             f"dataset.class_names and not dataset.ignore_index={spec.ignore_index}")


def _array(fail, name: str, value, dtype, shape, meaning: str) -> None:
    if not isinstance(value, np.ndarray) or value.dtype != dtype or value.shape != shape:
        fail(f"has {name} {_describe(value)}; expected {np.dtype(dtype).name} {list(shape)} "
             f"({meaning}; the dataset's height x width after the transform)")


def _events(fail, events, height: int, width: int) -> None:
    if not isinstance(events, dict) or not all(k in events for k in "xytp"):
        fail(f"has events {_describe(events)}; expected a dict with x, y, t, p "
             f"(events.compact_events makes one)")
    x, y, t, p = (events[k] for k in "xytp")
    wanted = (("x", x, (np.int16,)), ("y", y, (np.int16,)), ("t", t, TIME_DTYPES),
              ("p", p, (np.int8,)))
    for name, a, dtypes in wanted:
        if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype not in dtypes:
            fail(f"has events[{name!r}] {_describe(a)}; expected a 1-D "
                 f"{' or '.join(np.dtype(d).name for d in dtypes)} array (events.compact_events "
                 f"converts raw events)")
    if not (len(x) == len(y) == len(t) == len(p)):
        fail(f"has events of unequal lengths (x {len(x)}, y {len(y)}, t {len(t)}, p {len(p)})")
    if len(p) and ((p != 1) & (p != -1)).any():
        fail(f"has polarities {sorted(set(np.unique(p).tolist()))[:4]}; expected -1 and +1 "
             f"(events.compact_events maps 0/1 to -1/+1)")
    if len(x) and (x.min() < 0 or y.min() < 0 or x.max() >= width or y.max() >= height):
        fail(f"has events outside the {height}x{width} frame (x in [{x.min()}, {x.max()}], y in "
             f"[{y.min()}, {y.max()}])")


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype.name} {list(value.shape)}"
    return f"of type {type(value).__name__}"


def checked(reader, dataset_cfg, event_channels: int) -> CheckedSamples:
    return CheckedSamples(reader, SampleSpec.of(dataset_cfg, event_channels))
