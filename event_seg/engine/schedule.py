"""Optimizers and per-step learning-rate schedules (pure helpers, as in nanoGPT's get_lr)."""

from __future__ import annotations

import math


def lr_factor(step: int, total_steps: int, warmup_steps: int, name: str, power: float = 0.9,
              min_lr_ratio: float = 0.0) -> float:
    """The multiplier of the base lr at ``step`` (0-based): linear warm-up, then the decay."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if name == "none":
        return 1.0
    progress = min(max(step - warmup_steps, 0) / max(total_steps - warmup_steps, 1), 1.0)
    if name == "poly":
        decay = (1.0 - progress) ** power
    elif name == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown scheduler {name!r}")
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


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


def build_scheduler(cfg, optimizer, steps_per_epoch: int, epochs: int):
    import torch

    total = max(steps_per_epoch * epochs, 1)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, total, warmup, cfg.name, cfg.get("power", 0.9),
                               cfg.get("min_lr_ratio", 0.0)))
