"""What a resumed trial may change, and what makes it another experiment.

A trial folder holds one experiment. Restarting it (same ``trial_timestamp``, ``latest``, a
requeued SLURM job, a re-run sweep) continues that experiment, so every setting that changes what
is trained must equal the one its checkpoint (or, before the first checkpoint, its
``config.yaml``) was written with. How fast or where it runs, and what is logged, may change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import ConfigError

# Settings that do not change what is trained. Everything else must match on resume.
MAY_DIFFER = (
    "logger", "paths", "run_name", "trial_timestamp",
    "trainer.num_workers", "trainer.progress_bar", "trainer.device", "trainer.precision",
    "trainer.memory_format", "trainer.compile", "trainer.log_every_n_steps", "trainer.vis",
    "trainer.inference",
    # A smoke-sized resume of a full run (or the reverse): the schedule keeps its curve.
    "trainer.limit_batches",
    # What a finished run keeps of its checkpoints; while it runs, last.pt is always whole.
    "trainer.checkpoints",
    # The way out of a stop on a NaN loss or an unreadable sample is to resume with skipping.
    "trainer.nonfinite", "dataset.skip_corrupt",
    # Checked on its own (check_epochs): more epochs stretch the schedule, fewer are refused.
    "trainer.epochs",
    # The data copied to another disk (node-local scratch on a requeue); the cache is a speed-up.
    "dataset.root", "dataset.representation_cache",
    # Only the first start reads pretrained weights; a resume takes every weight from last.pt.
    "model.encoder_weights",
    # How the final test predicts (TTA, sliding window) does not change the weights trained;
    # when to stop early is, like trainer.epochs, a question of how long.
    "evaluate", "trainer.early_stopping",
    # What a sweeper reads from the finished run, not what is trained.
    "optimized_metric",
)
SHOWN = 6  # differences listed in the one-line refusal


def flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _may_differ(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in MAY_DIFFER)


def changed_settings(saved: dict, now: dict) -> List[str]:
    """``key (before -> now)`` for each setting that changes what is trained."""
    before, after = flatten(saved), flatten(now)
    missing = object()
    defaults = schema_defaults()
    diffs = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, missing), after.get(key, missing)
        if _may_differ(key) or old == new:
            continue
        if old is missing and key in defaults and defaults[key] == new:
            # A setting added after the checkpoint was written, at the default that behaves as
            # the code that wrote it did (loss.name=ce, accumulate_grad_batches=1, ...).
            continue
        show = ["(unset)" if v is missing else v for v in (old, new)]
        diffs.append(f"{key} ({show[0]} -> {show[1]})")
    return diffs


def schema_defaults() -> Dict[str, Any]:
    """Every key the schemas give a default, flattened (``loss.name`` -> ``ce``)."""
    from omegaconf import OmegaConf

    from ..config import EvaluateConfig, LossConfig, TimeSurfaceConfig, TrainerConfig

    tree = {"trainer": TrainerConfig, "loss": LossConfig, "evaluate": EvaluateConfig,
            "dataset.time_surface": TimeSurfaceConfig}
    defaults = flatten({k: OmegaConf.to_container(OmegaConf.structured(v))
                        for k, v in tree.items()})
    # Your own model or reader (by _target_) came later too: unset meant the built-in ones.
    for group in ("model", "dataset"):
        defaults.update({f"{group}._target_": None, f"{group}.kwargs": {}})
    return defaults


def check_same_experiment(saved: dict, now: dict, source: Path, way_out: str) -> None:
    """Raises a one-line ConfigError listing what differs from ``source``'s settings."""
    diffs = changed_settings(saved, now)
    if not diffs:
        return
    listed = ", ".join(diffs[:SHOWN]) + (f" and {len(diffs) - SHOWN} more"
                                         if len(diffs) > SHOWN else "")
    raise ConfigError(f"cannot resume {source}: it was trained with other settings: {listed}. "
                      f"Resume with the same values, or {way_out}")


def check_epochs(epochs: int, saved_epoch: int, planned_epochs: Optional[int],
                 finished_epochs: Optional[int], folder: Path, way_out: str) -> None:
    """A finished trial's records are never rewritten; fewer epochs than trained is refused;
    more epochs extend only a trial whose schedule has not ended (the rest of its curve is then
    stretched, see Trainer._fit_schedule_to_remaining_epochs)."""
    if finished_epochs is not None and finished_epochs != epochs:
        raise ConfigError(
            f"{folder} finished its {finished_epochs} epochs (metrics.json); a finished trial's "
            f"records are kept as they are, so trainer.epochs={epochs} does not resume it. To "
            f"train {epochs} epochs, {way_out}")
    if saved_epoch > epochs:
        raise ConfigError(f"{folder} already trained {saved_epoch} epochs; trainer.epochs="
                          f"{epochs} is fewer. Resume with trainer.epochs={saved_epoch} or more, "
                          f"or {way_out}")
    if planned_epochs is not None and saved_epoch >= planned_epochs and epochs > saved_epoch:
        raise ConfigError(
            f"{folder} trained all {planned_epochs} epochs it planned, so its learning-rate "
            f"schedule has ended; going on to {epochs} epochs would restart it. To train "
            f"{epochs} epochs, {way_out}")
