"""The input pipeline as it was before compact samples (commit 7409302, the parent of cc7ecae),
rebuilt here so that bench_input_pipeline.py can time it beside the new one.

What the old readers did per sample, on the loader's CPU:

- EventScape: decode the RGB PNG (channels flipped to RGB), decode the label PNG and map it to
  int64 classes, load the ``.npz`` events, build the numpy voxel grid (normalised non-zero
  cells) at the frame size, transpose it HWC and hand RGB, grid and mask to albumentations
  (the grid as an extra image target), normalise RGB to float32, transpose back to CHW.
- DSEC-Semantic: the same with the window's events read from ``events.h5`` (the grid binned at
  the 480 x 640 sensor and cut to the 440 label rows) and an all-zero RGB frame standing in.
- Optionally the old representation cache: one float32 ``.npy`` per sample, keyed by the event
  file's identity (path, size, mtime; plus the label time for DSEC).
- The default torch collate stacks the float32 arrays; the old trainer then concatenated RGB and
  events on the device (:func:`legacy_model_input`).

The numpy functions are pinned here (not imported from event_seg) so that later work on the
library cannot move the baseline. Only the untimed frame indexing is taken from the library.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

import numpy as np

RGB_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
RGB_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255
DSEC_SENSOR = (480, 640)
DSEC_LABEL_HEIGHT = 440


# ---------------------------------------------------------------------------------------------
# The numpy representation of the old loader (event_seg/data/events.py at 7409302)
# ---------------------------------------------------------------------------------------------

_SIGN = np.array([-1.0, 1.0], dtype=np.float32)


def _signed_polarity(p: np.ndarray) -> np.ndarray:
    if p.dtype == np.bool_ or p.dtype == np.uint8 and p.size and p.max() <= 1:
        return _SIGN[p.view(np.uint8)]
    return np.where(p.astype(np.float32) > 0, 1.0, -1.0).astype(np.float32)


def _pixel_index(x, y, height: int, width: int) -> np.ndarray:
    if x.size:
        low = 0 if x.dtype.kind == "u" and y.dtype.kind == "u" else min(x.min(), y.min())
        if low < 0 or x.max() >= width or y.max() >= height:
            raise ValueError("event coordinates out of range")
    pix = y.astype(np.intp)
    pix *= width
    pix += x.astype(np.intp, copy=False)
    return pix


def _normalize_nonzero(grid: np.ndarray) -> np.ndarray:
    grid = np.array(grid, dtype=np.float32, copy=True)
    nonzero = grid != 0
    if not nonzero.any():
        return grid
    values = grid[nonzero]
    mean, std = values.mean(), values.std()
    grid[nonzero] = (values - mean) / std if std > 0 else values - mean
    return grid


def voxel_grid(x, y, t, p, num_bins: int, height: int, width: int,
               normalize: bool = False) -> np.ndarray:
    """The rpg voxel grid, float32 ``[num_bins, height, width]``, as the old loader built it."""
    t = np.asarray(t)
    if t.size == 0:
        return np.zeros((num_bins, height, width), dtype=np.float32)
    pix = _pixel_index(np.asarray(x), np.asarray(y), height, width)
    t0 = t.min()
    span = float(t.max() - t0)
    tn = (t - t0).astype(np.float32)
    tn *= np.float32((num_bins - 1) / span) if span > 0 else np.float32(0)
    left = tn.astype(np.int32)
    right = tn
    right -= left
    right *= _signed_polarity(p)
    plane = height * width
    cells = left.astype(np.intp)
    cells *= plane
    cells += pix
    grid = np.zeros((num_bins + 1) * plane, dtype=np.float32)
    np.add.at(grid, cells, _signed_polarity(p) - right)
    cells += plane
    np.add.at(grid, cells, right)
    grid = grid[:num_bins * plane].reshape(num_bins, height, width)
    return _normalize_nonzero(grid) if normalize else grid


def events_to_tensor(events: dict, representation: str, num_bins: int, height: int, width: int,
                     normalize: bool) -> np.ndarray:
    if representation != "voxel_grid":
        raise NotImplementedError("the benchmark times the voxel grid only")
    return voxel_grid(events["x"], events["y"], events["t"], events["p"], num_bins, height,
                      width, normalize=normalize)


def remap_labels(tags: np.ndarray, label_map, ignore_index: int) -> np.ndarray:
    """Old label mapping: an int64 mask."""
    if label_map is None:
        return tags.astype(np.int64)
    size = 256 if tags.dtype == np.uint8 else max(int(tags.max()) + 1, len(label_map))
    lut = np.full(size, ignore_index, dtype=np.int64)
    lut[:len(label_map)] = np.asarray(label_map, dtype=np.int64)
    return lut[tags]


# ---------------------------------------------------------------------------------------------
# Transform and sample contract (event_seg/data/transforms.py, sample.py at 7409302)
# ---------------------------------------------------------------------------------------------

class LegacyJointTransform:
    """albumentations over (rgb uint8 HWC, events float32 HWC as an extra image, mask), then
    RGB normalised to float32 (the old default augmentation: pad/crop to ``size``, hflip)."""

    def __init__(self, train: bool, hflip: float = 0.5, seed: int = 0, size=None,
                 ignore_index: int = 255):
        import albumentations as A
        import cv2

        geometric = []
        if size is not None:
            height, width = size
            geometric += [A.PadIfNeeded(height, width, border_mode=cv2.BORDER_CONSTANT, fill=0,
                                        fill_mask=ignore_index),
                          (A.RandomCrop if train else A.CenterCrop)(height, width)]
        if train and hflip > 0:
            geometric.append(A.HorizontalFlip(p=hflip))
        self.pipeline = (A.Compose(geometric, additional_targets={"events": "image"}, seed=seed)
                         if geometric else None)

    def reseed(self, seed: int) -> None:
        if self.pipeline is not None:
            self.pipeline.set_random_seed(seed)

    def __call__(self, rgb, events, mask):
        if self.pipeline is not None:
            out = self.pipeline(image=rgb, events=events, mask=mask)
            rgb, events, mask = out["image"], out["events"], out["mask"]
        rgb = (rgb.astype(np.float32) - RGB_MEAN) / RGB_STD
        return rgb, events, mask


def make_sample(rgb, events_hwc, mask, sample_id: str, transform=None) -> dict:
    if transform is not None:
        rgb, events_hwc, mask = transform(rgb, events_hwc, mask)
    return {"rgb": np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32),
            "events": np.ascontiguousarray(events_hwc.transpose(2, 0, 1), dtype=np.float32),
            "mask": np.asarray(mask).astype(np.int64),
            "id": sample_id}


# ---------------------------------------------------------------------------------------------
# The old representation cache (event_seg/data/cache.py at 7409302): one .npy per sample
# ---------------------------------------------------------------------------------------------

def file_identity(path) -> str:
    st = os.stat(path)
    return f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"


class NpyCache:
    def __init__(self, folder: Path, writable: bool = False):
        self.dir = Path(folder)
        self.writable = writable

    def path(self, source: str) -> Path:
        return self.dir / f"{hashlib.sha256(source.encode()).hexdigest()[:24]}.npy"

    def load(self, source: str) -> Optional[np.ndarray]:
        path = self.path(source)
        if not path.is_file():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except Exception:
            return None

    def store(self, source: str, tensor: np.ndarray) -> None:
        import tempfile

        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.ascontiguousarray(tensor, dtype=np.float32))
        os.replace(tmp, self.path(source))


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------

class _LegacyReader:
    def __init__(self, frames, num_bins: int, normalize_events: bool, label_map,
                 ignore_index: int, transform=None, cache: Optional[NpyCache] = None):
        self.frames = list(frames)
        self.representation = "voxel_grid"
        self.num_bins = num_bins
        self.normalize_events = normalize_events
        self.label_map = label_map
        self.ignore_index = ignore_index
        self.transform = transform
        self.cache = cache

    def __len__(self) -> int:
        return len(self.frames)

    def cached_event_tensor(self, source: str, compute) -> np.ndarray:
        if self.cache is not None:
            tensor = self.cache.load(source)
            if tensor is not None:
                return tensor
        tensor = compute()
        if self.cache is not None and self.cache.writable:
            self.cache.store(source, tensor)
        return tensor

    def event_tensor(self, events: dict, height: int, width: int) -> np.ndarray:
        return events_to_tensor(events, self.representation, self.num_bins, height, width,
                                self.normalize_events)


def _read_label(path: Path) -> np.ndarray:
    import cv2

    tags = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if tags is None:
        raise FileNotFoundError(path)
    return tags[..., 0] if tags.ndim == 3 else tags


class LegacyEventScapes(_LegacyReader):
    """``frames``: event_seg.data.event_scapes.index_split's FrameFiles."""

    def __getitem__(self, index: int) -> dict:
        import cv2

        f = self.frames[index]
        img = cv2.imread(str(f.rgb), cv2.IMREAD_COLOR)
        rgb = np.ascontiguousarray(img[..., ::-1])
        height, width = rgb.shape[:2]
        mask = remap_labels(_read_label(f.label), self.label_map, self.ignore_index)

        def compute():
            with np.load(f.events) as npz:
                events = {k: npz[k] for k in ("x", "y", "t", "p")}
            return self.event_tensor(events, height, width)

        events = self.cached_event_tensor(file_identity(f.events), compute)
        events = np.ascontiguousarray(events.transpose(1, 2, 0))
        return make_sample(rgb, events, mask, f.id, self.transform)


class LegacyDsec(_LegacyReader):
    """``frames``: event_seg.data.dsec.index_split's DsecFrames; a fixed-duration window."""

    def __init__(self, *args, duration_ms: float = 50.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.duration_us = int(round(duration_ms * 1000))
        self._files = {}

    def _open(self, seq: Path):
        if seq not in self._files:
            import hdf5plugin  # noqa: F401
            import h5py

            f = h5py.File(seq / "events" / "left" / "events.h5", "r")
            self._files[seq] = (f, f["ms_to_idx"][()], int(f["t_offset"][()]))
        return self._files[seq]

    def read_events(self, frame) -> dict:
        f, ms_to_idx, t_offset = self._open(frame.sequence)
        from event_seg.data.dsec import window_indices

        start, end = window_indices(f["events/t"], ms_to_idx, frame.timestamp_us - t_offset,
                                    self.duration_us, None)
        return {k: f[f"events/{k}"][start:end] for k in ("x", "y", "t", "p")}

    def __getitem__(self, index: int) -> dict:
        frame = self.frames[index]
        tags = _read_label(frame.label)
        mask = remap_labels(tags, self.label_map, self.ignore_index)
        source = (f"{file_identity(frame.sequence / 'events' / 'left' / 'events.h5')}"
                  f"|{frame.timestamp_us}")
        tensor = self.cached_event_tensor(
            source, lambda: self.event_tensor(self.read_events(frame), *DSEC_SENSOR))
        events = np.ascontiguousarray(tensor[:, :DSEC_LABEL_HEIGHT].transpose(1, 2, 0))
        rgb = np.zeros((DSEC_LABEL_HEIGHT, DSEC_SENSOR[1], 3), np.uint8)
        return make_sample(rgb, events, mask, frame.id, self.transform)


# ---------------------------------------------------------------------------------------------
# Loader and device side
# ---------------------------------------------------------------------------------------------

def legacy_loader(dataset, batch_size: int, seed: int = 0, train: bool = True):
    """The old build_data loader (num_workers=0): the same sampler and per-sample seeding as
    today, torch's default collate."""
    import torch
    from torch.utils.data import DataLoader

    from event_seg.data.sampling import EpochSampler, SeededSamples

    sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, even=train)
    return DataLoader(SeededSamples(dataset, seed), batch_size=batch_size, sampler=sampler,
                      drop_last=train and len(sampler) > batch_size, num_workers=0,
                      generator=torch.Generator().manual_seed(seed))


def legacy_model_input(batch: dict, modality: str, device="cpu"):
    """What the old trainer did with a batch: move it, concatenate the modality's inputs."""
    import torch

    moved = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
    if modality == "rgb":
        inputs = moved["rgb"]
    elif modality == "events":
        inputs = moved["events"]
    else:
        inputs = torch.cat([moved["rgb"], moved["events"]], dim=1)
    return inputs, moved["mask"]
