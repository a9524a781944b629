"""From a collated batch of compact samples to the model input, on the training device.

The batch crosses to the device as it left the loader (uint8 frames and masks, packed events),
and the dense input is built there: the event representation by a torch scatter
(events.events_to_tensor_batch), RGB normalisation, the concatenation the modality asks for
and the memory layout the model runs in. None of it tracks gradients. On a GPU this takes
well under a millisecond per batch; on the CPU it is the same work the loader workers used to do
per sample, done once per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .events import events_to_tensor_batch, tau_in_ticks

@dataclass
class DeviceBatch:
    """What one batch became on the device. ``events`` (the representation, ``[B, C, H, W]``)
    is kept for the panels; ``samples`` is the number of real samples (``inputs`` may be
    padded past it)."""

    inputs: torch.Tensor
    target: torch.Tensor
    events: Optional[torch.Tensor]
    samples: int


class ModelInputBuilder:
    """``builder(batch) -> DeviceBatch`` for one dataset and device.

    Args:
        info: the DatasetInfo (modality, representation, bins, channels, ignore index).
        normalize_events: the dataset's ``normalize_events``.
        channels_last: lay the input out channels-last (what a channels-last model wants).
        deterministic: accumulate the voxel grid in fixed point (reproducible on CUDA).
        pad_to: pad a smaller batch up to this many samples (inputs zero, target ignore), so a
            GPU sees one input shape (cudnn.benchmark tunes per shape; compile retraces).
    """

    def __init__(self, info, device, normalize_events: bool, channels_last: bool = False,
                 deterministic: bool = False, pad_to: Optional[int] = None):
        self.info = info
        self.device = torch.device(device)
        self.normalize_events = normalize_events
        self.channels_last = channels_last
        self.deterministic = deterministic
        self.pad_to = pad_to
        # Event stamps arrive in the dataset's own tick (info.time_unit); the time surface's
        # decay constant is converted to it once here, not every event to seconds per batch.
        self.tau = (tau_in_ticks(info.time_surface_tau_ms, info.time_unit)
                    if info.representation == "time_surface" else None)

    @torch.no_grad()
    def __call__(self, batch: dict, pad: bool = False) -> DeviceBatch:
        from .transforms import normalize_rgb

        non_blocking = self.device.type == "cuda"
        moved = {k: v.to(self.device, non_blocking=non_blocking) for k, v in batch.items()
                 if torch.is_tensor(v)}
        target = moved["mask"].long()
        size, height, width = target.shape
        modality = self.info.modality
        rgb = normalize_rgb(moved["rgb"]) if "rgb" in moved and modality != "events" else None
        events = self._events(moved, size, height, width) if modality != "rgb" else None
        if modality == "rgb":
            if rgb is None:
                raise ValueError("dataset.modality=rgb but the samples carry no RGB frame")
            inputs = rgb
        elif modality == "events":
            inputs = events
        else:
            if rgb is None:
                raise ValueError("dataset.modality=rgb+events but the samples carry no RGB frame")
            inputs = torch.cat([rgb, events], dim=1)
        if pad and self.pad_to and size < self.pad_to:
            missing = self.pad_to - size
            inputs = torch.cat([inputs, inputs.new_zeros((missing,) + inputs.shape[1:])])
            target = torch.cat([target, target.new_full((missing, height, width),
                                                        self.info.ignore_index)])
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        inputs = inputs.contiguous(memory_format=memory_format)
        return DeviceBatch(inputs, target, events, size)

    def _events(self, moved: dict, size: int, height: int, width: int) -> torch.Tensor:
        info = self.info
        if "events_count" in moved:
            counts = moved["events_count"]
            packed = {"x": moved["events_x"], "y": moved["events_y"], "t": moved["events_t"],
                      "p": moved["events_p"],
                      # The batch index, rebuilt from the per-sample counts.
                      "batch_index": torch.repeat_interleave(
                          torch.arange(size, device=self.device), counts,
                          output_size=moved["events_x"].shape[0])}
            events = events_to_tensor_batch(packed, size, info.representation, info.num_bins,
                                            height, width, normalize=self.normalize_events,
                                            deterministic=self.deterministic, tau=self.tau)
        else:
            events = torch.zeros(size, info.event_channels, height, width, device=self.device)
        if "dense" in moved:
            events[moved["dense_index"]] = moved["dense"].float()
        return events
