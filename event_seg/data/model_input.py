"""The model input of one sample, built with numpy: what a deployed (exported) model needs.

``input_spec`` records, from a checkpoint's config and dataset info, everything the input depends
on (channel order, representation, bins, normalisation, the time surface's tau and time unit);
``model_input(spec, rgb, events)`` builds one input from a frame and its window's events with the
numpy reference functions of events.py. Channel order and numbers are those the training device
builds (device_input.ModelInputBuilder): RGB standardised with the ImageNet statistics, then the
event representation.
"""

from __future__ import annotations

from typing import List

import numpy as np

def channel_layout(info, normalize_events: bool) -> List[str]:
    """What each input channel holds, in order (the order device_input.ModelInputBuilder uses)."""
    layout = []
    if info.modality != "events":
        layout += [f"{c}: (uint8 - {m:.3f}) / {s:.3f}" for c, m, s in
                   zip("RGB", *_rgb_stats())]
    if info.modality != "rgb":
        rep = info.representation
        if rep == "voxel_grid":
            what = [f"voxel_grid bin {b}" for b in range(info.num_bins)]
        elif rep == "histogram":
            what = ["histogram negative events", "histogram positive events"]
        elif rep == "time_surface":
            what = ["time_surface negative events", "time_surface positive events"]
        elif rep == "mdes":
            what = [f"mdes: the last 1/{2 ** k} of the window" for k in range(info.num_bins)]
        else:
            what = [f"{rep} channel {c}" for c in range(info.event_channels)]
        note = ""
        if rep in ("voxel_grid", "mdes") and normalize_events:
            note = " (non-zero cells standardised)"
        elif rep == "histogram" and normalize_events:
            note = " (log1p of the counts)"
        layout += [w + note for w in what]
    return layout


def _rgb_stats():
    from .transforms import RGB_MEAN, RGB_STD

    return RGB_MEAN.tolist(), RGB_STD.tolist()


def input_spec(cfg, info, height: int, width: int, name: str = "input") -> dict:
    """Everything needed to build the input without event_seg's config (export writes it to
    ``<model file>.json``); ``name`` is the input's name in the exported file."""
    normalize = bool(cfg.dataset.normalize_events)
    mean, std = _rgb_stats()
    return {"name": name, "shape": ["batch", info.input_channels, height, width],
            "dtype": "float32", "height": height, "width": width, "modality": info.modality,
            "representation": info.representation, "num_bins": info.num_bins,
            "normalize_events": normalize,
            # The time surface alone has an absolute time scale: tau, and the unit of t.
            "time_unit": getattr(info, "time_unit", None),
            "time_surface_tau_ms": (float(cfg.dataset.time_surface.tau_ms)
                                    if info.representation == "time_surface" else None),
            "rgb_mean": mean, "rgb_std": std, "channels": channel_layout(info, normalize)}


def model_input(spec: dict, rgb=None, events=None) -> np.ndarray:
    """One model input, float32 ``[channels, height, width]``, built with numpy.

    ``rgb``: uint8 ``[height, width, 3]`` in RGB order; ``events``: the ``{x, y, t, p}`` arrays of
    the window since the previous frame, coordinates in the height x width frame, ``t`` in
    ``spec["time_unit"]`` for the time surface (any unit otherwise), or, for
    ``representation=precomputed``, the event tensor itself. The same numbers the training
    device builds (device_input.ModelInputBuilder) within float32 rounding. Stack inputs on a new
    first axis for a batch."""
    from .events import events_to_tensor

    height, width = spec["height"], spec["width"]
    parts = []
    if spec["modality"] != "events":
        rgb = np.asarray(rgb)
        if rgb.shape != (height, width, 3):
            raise ValueError(f"rgb must be uint8 [{height}, {width}, 3], got {rgb.shape}")
        mean, std = np.float32(spec["rgb_mean"]), np.float32(spec["rgb_std"])
        parts.append(((rgb.astype(np.float32) - mean) / std).transpose(2, 0, 1))
    if spec["modality"] != "rgb":
        rep = spec["representation"]
        if rep == "precomputed":
            parts.append(np.asarray(events, dtype=np.float32))
        else:
            extra = {}
            if rep == "time_surface":
                from .events import tau_in_ticks

                extra["tau"] = tau_in_ticks(spec["time_surface_tau_ms"], spec["time_unit"])
            parts.append(events_to_tensor(events, rep, spec["num_bins"], height, width,
                                          normalize=spec["normalize_events"], **extra))
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
