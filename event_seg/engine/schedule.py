"""Optimizers and per-step learning-rate schedules (pure helpers, as in nanoGPT's get_lr)."""

from __future__ import annotations

import math
from typing import Optional


def lr_factor(step: int, total_steps: int, warmup_steps: int, name: str, power: float = 0.9,
              min_lr_ratio: float = 0.0, anchor_step: Optional[int] = None,
              anchor_progress: float = 0.0) -> float:
    """The multiplier of the base lr at ``step`` (0-based): linear warm-up, then the decay.

    The decay's progress runs from ``anchor_progress`` at ``anchor_step`` (by default 0 at the
    end of the warm-up) to 1 at ``total_steps``; a stretched schedule moves the anchor (see
    :meth:`StepSchedule.stretch`).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if name == "none":
        return 1.0
    start = warmup_steps if anchor_step is None else anchor_step
    progress = min(max(step - start, 0) / max(total_steps - start, 1), 1.0)
    if anchor_progress:
        progress = anchor_progress + (1.0 - anchor_progress) * progress
    if name == "poly":
        decay = (1.0 - progress) ** power
    elif name == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown scheduler {name!r}")
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


class StepSchedule:
    """The learning rate of every step of one trial, a pure function of the global step.

    Unlike ``LambdaLR``, whose lambda is not saved, the whole plan (curve, warm-up, total steps,
    base rates) is in :meth:`state_dict`: a resumed trial restores it from the checkpoint and goes
    on step for step, whatever the scheduler settings or ``trainer.limit_batches`` say now. Call
    :meth:`apply` with the number of steps taken so far; the optimizer then holds the rate of the
    next step (as ``LambdaLR`` does after ``step()``).
    """

    KEYS = ("name", "power", "min_lr_ratio", "warmup_steps", "total_steps", "anchor_step",
            "anchor_progress", "base_lrs")

    def __init__(self, optimizer, name: str, total_steps: int, warmup_steps: int = 0,
                 power: float = 0.9, min_lr_ratio: float = 0.0):
        self.optimizer = optimizer
        self.name, self.power, self.min_lr_ratio = name, float(power), float(min_lr_ratio)
        self.warmup_steps, self.total_steps = int(warmup_steps), max(int(total_steps), 1)
        self.anchor_step, self.anchor_progress = self.warmup_steps, 0.0
        self.base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        self.apply(0)

    def factor(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.warmup_steps, self.name, self.power,
                         self.min_lr_ratio, self.anchor_step, self.anchor_progress)

    def apply(self, step: int) -> float:
        """Sets every parameter group's rate for step ``step``; returns the first one."""
        factor = self.factor(step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        return self.optimizer.param_groups[0]["lr"]

    def stretch(self, step: int, total_steps: int) -> None:
        """Re-plans the steps from ``step`` on to end at ``total_steps``: the decay goes on from
        where it is now, drawn out (or squeezed) to the new end, so the rate never jumps and
        no step before the end gets a zero rate. Used when a resumed trial has more epochs, or
        another number of steps per epoch, than its checkpoint planned for."""
        if step >= self.warmup_steps and self.name != "none":
            progress = min(max(step - self.anchor_step, 0)
                           / max(self.total_steps - self.anchor_step, 1), 1.0)
            self.anchor_progress = self.anchor_progress + (1.0 - self.anchor_progress) * progress
            self.anchor_step = step
        self.total_steps = max(int(total_steps), 1)

    def state_dict(self) -> dict:
        return {key: getattr(self, key) for key in self.KEYS}

    def load_state_dict(self, state: dict) -> bool:
        """Takes the checkpoint's plan; False for a checkpoint written before plans were saved
        (a ``LambdaLR`` state), which keeps the plan built from the config."""
        if not all(key in state for key in self.KEYS):
            return False
        for key in self.KEYS:
            setattr(self, key, list(state[key]) if key == "base_lrs" else state[key])
        return True


def build_optimizer(cfg, model):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                 betas=tuple(cfg.betas))
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def build_scheduler(cfg, optimizer, steps_per_epoch: int, epochs: int) -> StepSchedule:
    return StepSchedule(optimizer, cfg.name, total_steps=steps_per_epoch * epochs,
                        warmup_steps=int(round(cfg.warmup_epochs * steps_per_epoch)),
                        power=cfg.get("power", 0.9), min_lr_ratio=cfg.get("min_lr_ratio", 0.0))
