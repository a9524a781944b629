"""An exponential moving average of the model's weights (``trainer.ema.decay``).

After every optimizer step ``ema = d * ema + (1 - d) * weights`` for every floating-point
parameter and buffer (BatchNorm running statistics included, so the averaged model is
self-consistent); integer buffers (BatchNorm's step counters) are copied. The decay ramps up
as ``min(decay, (1 + n) / (10 + n))`` over the first updates (TensorFlow's ExponentialMovingAverage
with ``num_updates``): a plain 0.999 would keep the random initial weights in the average for
thousands of steps, far longer than a short run lasts.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._pairs = None

    def _tensors(self, model: nn.Module):
        if self._pairs is None or self._pairs[0] is not model:
            ema_state, state = self.model.state_dict(), model.state_dict()
            floats = [k for k, v in state.items() if v.is_floating_point()]
            others = [k for k, v in state.items() if not v.is_floating_point()]
            self._pairs = (model, [ema_state[k] for k in floats], [state[k] for k in floats],
                           [ema_state[k] for k in others], [state[k] for k in others])
        return self._pairs[1:]

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_f, model_f, ema_o, model_o = self._tensors(model)
        weight = 1.0 - self.current_decay()
        # One fused kernel launch per group of tensors on CUDA (what the optimizers use).
        torch._foreach_lerp_(ema_f, model_f, weight)
        for e, m in zip(ema_o, model_o):
            e.copy_(m)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates}

    def load(self, weights: dict, state: dict) -> None:
        self.model.load_state_dict(weights)
        self.updates = int(state["updates"])
