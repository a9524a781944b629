"""How evaluation predicts (``evaluate`` config node): plain, with horizontal-flip test-time
augmentation, and window by window for inputs larger than the training crop.

Every variant returns logits, which the losses and ``argmax`` take as they take the model's.
TTA averages the softmax of the two views, the sliding window the softmax of every window (and
view) covering a pixel. Of the averaged probabilities ``p`` the predictor returns the logits
``log p + mean logsumexp``: the log-normaliser (logsumexp over the classes) of the views'
logits, averaged per pixel. The softmax of those is ``p``, and where every view predicts the
same logits ``z`` (one window covering the input, TTA of a mirror-symmetric model) they are
``z`` again, so every loss scores them as it scores plain prediction: also focal, whose
per-class sigmoid depends on the logits themselves and not only on their softmax. Plain
prediction returns the model's logits as they are, so default evaluation is unchanged bit for
bit.
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

    def _views(self, model, inputs):
        """The model's logits for ``inputs`` and, with TTA, for their mirror image (mirrored
        back), in float32."""
        views = [self._model(model, inputs).float()]
        if self.tta == "hflip":
            mirrored = self._model(model, torch.flip(inputs, dims=[3])).float()
            views.append(torch.flip(mirrored, dims=[3]))
        return views

    def __call__(self, model, inputs):
        if self.plain:
            return self._model(model, inputs)
        height, width = inputs.shape[-2:]
        wh, ww = (min(self.window[0], height), min(self.window[1], width)) if self.window \
            else (height, width)
        stride = self.stride or (height, width)
        # Summed per pixel over the views covering it: the probabilities, in log space (no
        # clamp: a confident class keeps its logit), and the log-normalisers.
        log_probs = norms = None
        hits = torch.zeros((1, 1, height, width), device=inputs.device)
        for top in window_starts(height, wh, stride[0]):
            for left in window_starts(width, ww, stride[1]):
                region = (Ellipsis, slice(top, top + wh), slice(left, left + ww))
                for logits in self._views(model, inputs[region]):
                    if log_probs is None:
                        shape = (inputs.shape[0], logits.shape[1], height, width)
                        log_probs = torch.full(shape, float("-inf"), device=inputs.device)
                        norms = torch.zeros((inputs.shape[0], 1, height, width),
                                            device=inputs.device)
                    norm = torch.logsumexp(logits, dim=1, keepdim=True)
                    log_probs[region] = torch.logaddexp(log_probs[region], logits - norm)
                    norms[region] += norm
                    hits[region] += 1
        return log_probs - torch.log(hits) + norms / hits


def build_predictor(evaluate_cfg, autocast=None) -> Predictor:
    window = evaluate_cfg.sliding_window
    return Predictor(evaluate_cfg.tta, window.size, window.stride, autocast)
