"""Collate for compact samples: stack the frames, pack the events of a batch into flat arrays.

A batch is a dict of torch tensors (pinned by the DataLoader on CUDA machines):

- ``rgb`` uint8 ``[B, H, W, 3]`` (absent when no sample of the dataset has a frame),
- ``mask`` uint8 ``[B, H, W]``,
- ``events_x``, ``events_y`` int16, ``events_t`` (int32, int64 or float32 offsets inside each
  sample's window), ``events_p`` int8 -1/+1: every sample's events one after the other, no
  padding to the longest sample; ``events_count`` int64 ``[B]`` says how many belong to each
  sample (the batch index is rebuilt from it on the device, 8 bytes per sample instead of up to
  8 per event),
- ``dense`` ``[K, C, H, W]`` and ``dense_index`` int64 ``[K]``: the samples that carry a dense
  event tensor instead of raw events (DDD17; dense entries of the prepared cache),
- ``id``: the sample ids, a list of str.
"""

from __future__ import annotations

import numpy as np

EVENT_KEYS = ("x", "y", "t", "p")


def _stack(arrays):
    import torch

    return torch.from_numpy(np.stack(arrays))


def collate_compact(samples: list) -> dict:
    import torch

    batch = {"mask": _stack([s["mask"] for s in samples]), "id": [s["id"] for s in samples]}
    if all("rgb" in s for s in samples):
        batch["rgb"] = _stack([s["rgb"] for s in samples])
    raw = [s.get("events") for s in samples]
    if any(e is not None for e in raw):
        empty = {"x": np.zeros(0, np.int16), "y": np.zeros(0, np.int16),
                 "t": np.zeros(0, np.int32), "p": np.zeros(0, np.int8)}
        raw = [e if e is not None else empty for e in raw]
        for key in EVENT_KEYS:
            # concatenate promotes time offsets that differ in width between samples
            batch[f"events_{key}"] = torch.from_numpy(np.concatenate([e[key] for e in raw]))
        batch["events_count"] = torch.tensor([len(e["x"]) for e in raw], dtype=torch.int64)
    dense = [(i, s["dense"]) for i, s in enumerate(samples) if "dense" in s]
    if dense:
        batch["dense"] = _stack([d for _, d in dense])
        batch["dense_index"] = torch.tensor([i for i, _ in dense], dtype=torch.int64)
    return batch


def batch_nbytes(batch: dict) -> int:
    """Bytes of every tensor of a collated batch (what crosses to the device)."""
    import torch

    return sum(v.numel() * v.element_size() for v in batch.values() if torch.is_tensor(v))
