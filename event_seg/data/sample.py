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
