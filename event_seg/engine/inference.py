"""How evaluation predicts (``evaluate`` config node): plain, with horizontal-flip test-time
augmentation, and window by window for inputs larger than the training crop.

Both variants return log-probabilities, which the losses and ``argmax`` take like logits
(``softmax(log p) = p``): TTA averages the two softmax outputs, the sliding window averages the
softmax of every window covering a pixel. Plain prediction returns the model's logits as they
are, so default evaluation is unchanged bit for bit.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch


def window_starts(length: int, size: int, stride: int) -> List[int]:
    """Window offsets along one axis: every ``stride``, plus a last window flush with the end so
    no pixel is left out; one window at 0 when the input is no larger than ``size``."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


class Predictor:
    """``predictor(model, inputs [B, C, H, W]) -> [B, classes, H, W]``."""

    def __init__(self, tta: str = "none", window: Optional[Sequence[int]] = None,
                 stride: Optional[Sequence[int]] = None, autocast: Optional[Callable] = None):
        self.tta = tta
        self.window = tuple(window) if window else None
        self.stride = (tuple(stride) if stride else
                       tuple(max(1, w // 2) for w in self.window) if self.window else None)
        self._autocast = autocast

    @property
    def plain(self) -> bool:
        return self.tta == "none" and self.window is None

    def describe(self) -> str:
        parts = []
        if self.tta != "none":
            parts.append(f"tta={self.tta}")
        if self.window:
            parts.append(f"sliding window {self.window[0]}x{self.window[1]} stride "
                         f"{self.stride[0]}x{self.stride[1]}")
        return ", ".join(parts) or "plain"

    def _model(self, model, inputs):
        if self._autocast is None:
            return model(inputs)
        with self._autocast():
            return model(inputs)

    def _probabilities(self, model, inputs):
        probs = torch.softmax(self._model(model, inputs).float(), dim=1)
        if self.tta == "hflip":
            mirrored = self._model(model, torch.flip(inputs, dims=[3])).float()
            probs = (probs + torch.flip(torch.softmax(mirrored, dim=1), dims=[3])) / 2
        return probs

    def __call__(self, model, inputs):
        if self.plain:
            return self._model(model, inputs)
        if self.window is None:
            return torch.log(self._probabilities(model, inputs).clamp_min(1e-12))
        height, width = inputs.shape[-2:]
        wh, ww = min(self.window[0], height), min(self.window[1], width)
        total = None
        hits = torch.zeros((1, 1, height, width), device=inputs.device)
        for top in window_starts(height, wh, self.stride[0]):
            for left in window_starts(width, ww, self.stride[1]):
                crop = inputs[..., top:top + wh, left:left + ww]
                probs = self._probabilities(model, crop)
                if total is None:
                    total = torch.zeros((inputs.shape[0], probs.shape[1], height, width),
                                        device=inputs.device)
                total[..., top:top + wh, left:left + ww] += probs
                hits[..., top:top + wh, left:left + ww] += 1
        return torch.log((total / hits).clamp_min(1e-12))


def build_predictor(evaluate_cfg, autocast=None) -> Predictor:
    window = evaluate_cfg.sliding_window
    return Predictor(evaluate_cfg.tta, window.size, window.stride, autocast)
