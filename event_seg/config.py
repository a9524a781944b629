"""Config schemas.

The dataclasses below are registered in Hydra's ConfigStore under ``schema/train`` (a group no
user selects) and ``conf/train.yaml`` starts from it. Composition therefore happens in OmegaConf's
struct mode against typed fields: a misspelt key (``trainer.epoch=3``) or a wrong type
(``trainer.epochs=ten``) fails during composition with Hydra's message naming the key, before any
data is built. Choices OmegaConf cannot express as an Enum (``rgb+events``) are checked by
:func:`validate`, which raises :class:`ConfigError` naming the key and the allowed values.

This module must stay cheap to import: it is imported before Hydra composes anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .errors import ConfigError  # noqa: F401  (re-exported)


@dataclass
class SyntheticConfig:
    seed: int = 0  # rendering and event-simulation seed (changes the generated set)
    train_sequences: int = 12  # sequences rendered for the train split
    val_sequences: int = 3  # ... for the val split
    test_sequences: int = 3  # ... for the test split
    frames_per_sequence: int = 16  # labelled frames per sequence
    subframes: int = 8
    frame_rate: float = 10.0
    contrast_threshold: float = 0.25  # log-intensity change that fires an event (ESIM's C)
    threshold_sigma: float = 0.03  # per-pixel spread of that threshold
    noise_rate: float = 0.05
    hard_fraction: float = 0.4


@dataclass
class DsecConfig:
    classes: int = 11                      # 11 or 19: which semantic/<N>classes folder to read
    duration_ms: Optional[float] = 50.0    # window before each label: a fixed duration ...
    num_events: Optional[int] = None       # ... or a fixed number of events (set one of them)
    rectify: bool = False                  # map raw coordinates through rectify_map.h5
    # Sequences per split; null reads every sequence in the split folder.
    sequences: Dict[str, Optional[List[str]]] = field(default_factory=dict)


@dataclass
class AugmentConfig:
    hflip: float = 0.5
    affine_p: float = 0.0
    # [min, max] zoom of the affine augmentation.
    scale: List[float] = field(default_factory=lambda: [0.9, 1.1])
    rotate_deg: float = 5.0  # rotation drawn from [-rotate_deg, rotate_deg] degrees
    translate: float = 0.05
    photometric_p: float = 0.0


@dataclass
class TimeSurfaceConfig:
    # Decay constant of representation=time_surface: a pixel holds exp(-age / tau) of its last
    # event. 50 ms is the length of a DSEC/ESS window (its oldest events keep e^-1 = 0.37) and
    # half a synthetic one (10 fps: e^-2 = 0.14), so a whole window stays visible and the
    # most recent events stand out. Converted to each dataset's own time unit when used.
    tau_ms: float = 50.0


@dataclass
class DatasetConfig:
    name: str = MISSING  # names the dataset in logs, run metadata and panels
    # A built-in reader (CHOICES) or null with `_target_`: your own reader class, built per split
    # with the split folder, transform and representation settings plus `kwargs` (targets.py).
    format: Optional[str] = None
    _target_: Optional[str] = None  # your own reader class (with format: null)
    kwargs: Dict[str, Any] = field(default_factory=dict)  # further arguments of that reader
    root: Optional[str] = None
    modality: str = "rgb+events"
    representation: str = "voxel_grid"
    num_bins: int = 5  # voxel_grid time bins; mdes channels
    time_surface: TimeSurfaceConfig = field(default_factory=TimeSurfaceConfig)
    # Read samples from the cache `event-seg-prepare` packs (decoded frames, labels, window
    # events) when it exists; never stale: keyed by the dataset settings and each source file's
    # path, size and modification time (a changed file is read raw again).
    representation_cache: bool = True
    # Replace unreadable samples by the next readable one (with a warning) instead of stopping.
    skip_corrupt: bool = False
    # Channel count of event tensors stored precomputed on disk (representation=precomputed).
    event_channels: Optional[int] = None
    normalize_events: bool = True
    height: int = MISSING  # frame height the model sees (crop or pad)
    width: int = MISSING  # frame width the model sees (crop or pad)
    ignore_index: int = 255  # label value no loss or metric counts
    splits: Dict[str, str] = field(default_factory=dict)  # split name -> folder under dataset.root
    label_map: Optional[List[int]] = None
    class_names: List[str] = MISSING  # one name per class id
    palette: List[List[int]] = MISSING  # one [r, g, b] per class, for panels
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Format-specific settings; presets of other formats leave them at their defaults.
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    dsec: DsecConfig = field(default_factory=DsecConfig)


@dataclass
class ModelConfig:
    name: str = MISSING  # names the run folder (<name>_<timestamp>)
    # An smp architecture (CHOICES) or null with `_target_`: any nn.Module class, built with
    # in_channels and classes from the dataset. `kwargs`: the architecture's or the class's own
    # further arguments, checked against its signature (targets.py), so the keys above keep
    # their typo check.
    arch: Optional[str] = None
    encoder_name: str = "resnet18"  # any segmentation_models_pytorch encoder (tu-<name> for timm)
    encoder_weights: Optional[str] = None
    _target_: Optional[str] = None  # your own nn.Module class (with arch: null)
    # Further arguments of the architecture or class.
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 1e-4  # decoupled (adamw) or L2 (sgd) weight decay
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw only
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only


@dataclass
class SchedulerConfig:
    name: str = "poly"
    warmup_epochs: float = 0.0  # linear warm-up from 0, in epochs (fractions allowed)
    power: float = 0.9  # exponent of the poly decay
    min_lr_ratio: float = 0.0  # final rate as a share of optimizer.lr


@dataclass
class VisConfig:
    num_batches: int = 10   # first N batches of every stage and epoch get image panels; 0: off
    max_samples: int = 4    # samples shown per visualised batch


@dataclass
class InferenceConfig:
    enabled: bool = True    # formerly enable_inference_during_training
    every_n_epochs: int = 1  # score inference_* every N epochs


@dataclass
class EmaConfig:
    # Exponential moving average of the weights: ema = decay * ema + (1 - decay) * weights after
    # every optimizer step. null: off. Validation, the best checkpoint and the test use it.
    decay: Optional[float] = None


@dataclass
class EarlyStoppingConfig:
    # Stop after this many epochs without a better val_mean_iou; null: never stop early.
    patience: Optional[int] = None
    min_delta: float = 0.0  # an improvement smaller than this does not count


@dataclass
class CheckpointsConfig:
    # What a run keeps once it has finished (docs/run_folders.md): all (last.pt and best.pt with
    # the full training state) | weights (both with the weights only) | best (best.pt alone,
    # weights only). While a run goes on, last.pt always holds the full state for a resume.
    keep: str = "all"


@dataclass
class TrainerConfig:
    epochs: int = 6  # epochs to train
    batch_size: int = 8  # samples per batch (per process under torchrun)
    num_workers: int = 2  # DataLoader worker processes
    device: str = "auto"
    precision: str = "auto"
    grad_clip_norm: Optional[float] = 1.0
    limit_batches: Optional[int] = None
    log_every_n_steps: int = 10  # the progress bar and step curves read the loss every N steps
    progress_bar: bool = True  # tqdm bars on the console
    nonfinite: str = "stop"  # a NaN/inf loss: stop (naming epoch and batch) or skip the batch
    memory_format: str = "auto"  # auto (channels_last on CUDA) | channels_last | contiguous
    compile: bool = False  # torch.compile the training model (GPU; minutes of warm-up)
    deterministic: bool = False  # reproducible GPU runs: deterministic kernels, fixed-point scatter
    vis: VisConfig = field(default_factory=VisConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    # Sum the gradients of this many batches before each optimizer (and scheduler) step.
    accumulate_grad_batches: int = 1
    ema: EmaConfig = field(default_factory=EmaConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    checkpoints: CheckpointsConfig = field(default_factory=CheckpointsConfig)


@dataclass
class PathsConfig:
    output_root: str = "outputs"  # run folders go under this folder
    cache_dir: str = "~/.cache/event_seg"


@dataclass
class LossConfig:
    name: str = "ce"  # ce | dice | focal | lovasz | ce+dice (segmentation_models_pytorch.losses)
    # Per-class weights (ce, focal, dice, ce+dice): a list with one weight per class, or "auto"
    # (inverse square root of each class's pixel frequency in the train split).
    class_weights: Optional[Any] = None
    label_smoothing: float = 0.0  # ce and the ce part of ce+dice
    focal_gamma: float = 2.0  # focal's focusing exponent
    ce_weight: float = 1.0  # ce+dice: ce_weight * ce + dice_weight * dice
    dice_weight: float = 1.0  # ce+dice only


@dataclass
class SlidingWindowConfig:
    size: Optional[List[int]] = None    # [height, width] of each window; null: whole inputs
    stride: Optional[List[int]] = None  # [height, width]; null: half the size (50% overlap)


@dataclass
class EvaluateConfig:
    tta: str = "none"  # none | hflip: average the softmax of the input and its mirror image
    sliding_window: SlidingWindowConfig = field(default_factory=SlidingWindowConfig)
    # Apply tta / sliding_window in validation (and the inference_* scores) too, not only in
    # the final test and event-seg-evaluate; slower epochs.
    in_validation: bool = False


@dataclass
class TrainConfig:
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    # One entry per chosen logger, each a `_target_` node (see conf/logger/).
    logger: Optional[Dict[str, Any]] = field(default_factory=dict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    seed: int = 42  # seeds Python, numpy and torch; sampling order and augmentation follow it
    trial_timestamp: str = MISSING
    run_name: str = MISSING
    # The number a run returns to a sweeper (and the summary ranks jobs by): a key of metrics.json.
    optimized_metric: str = "best_val_mean_iou"


def register_schemas() -> None:
    ConfigStore.instance().store(group="schema", name="train", node=TrainConfig)
    # Used by hydra.sweep.subdir in train.yaml; registered wherever this module is imported,
    # which includes every launcher process that unpickles the task function.
    from .job_names import job_dir_name

    OmegaConf.register_new_resolver("es_job_dir", job_dir_name, replace=True)


register_schemas()

# Null where the group's `_target_` builds the model or reader instead.
BUILT_BY_TARGET = ("model.arch", "dataset.format")
# The allowed values of string choices, checked by `validate`.
CHOICES: Dict[str, tuple] = {
    "dataset.modality": ("rgb", "events", "rgb+events"),
    "dataset.representation": ("voxel_grid", "histogram", "time_surface", "mdes", "precomputed"),
    "dataset.format": ("event_scapes", "ddd17", "dsec_semantic"),
    "model.arch": ("Unet", "UnetPlusPlus", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus",
                   "Linknet", "MAnet", "PAN", "UPerNet", "Segformer", "DPT"),
    "optimizer.name": ("adamw", "sgd"),
    "scheduler.name": ("poly", "cosine", "none"),
    "trainer.precision": ("auto", "fp32", "bf16", "fp16"),
    "trainer.nonfinite": ("stop", "skip"),
    "trainer.memory_format": ("auto", "channels_last", "contiguous"),
    "loss.name": ("ce", "dice", "focal", "lovasz", "ce+dice"),
    "evaluate.tta": ("none", "hflip"),
}


# What ``optimized_metric`` may name: a key every finished run writes to metrics.json. The best_val_*
# values are the best of any epoch (lowest loss, highest score); test_* score the best checkpoint.
OPTIMIZABLE = ("best_val_mean_iou", "best_val_weighted_mean_iou", "best_val_pixel_accuracy",
               "best_val_loss", "test_mean_iou", "test_weighted_mean_iou", "test_pixel_accuracy",
               "test_loss")


def check_optimized_metric(name: str, class_names: List[str]) -> None:
    allowed = [*OPTIMIZABLE, *(f"test_iou/{c}" for c in class_names)]
    if name not in allowed:
        import difflib

        close = difflib.get_close_matches(name, allowed, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"optimized_metric={name!r} is not a metric a run reports{hint}; "
                          f"choose one of: {', '.join(OPTIMIZABLE)}, test_iou/<class>")


def metric_direction(name: str) -> str:
    """``minimize`` for a loss, ``maximize`` for a score."""
    return "minimize" if name.endswith("loss") else "maximize"


# Architectures with a BatchNorm after global pooling (ASPP, PPM, PAN's attention): in training
# they need at least two samples per batch and device (measured with smp 0.6 on CPU).
NEEDS_TWO_SAMPLES = ("DeepLabV3", "DeepLabV3Plus", "PAN", "UPerNet")


def unknown_keys(cfg: DictConfig) -> List[str]:
    """Keys the schema does not know. Struct mode refuses a typo, but ``+key=value`` (what
    Hydra's own message suggests for one) adds it anyway, and nothing would ever read it."""
    found: List[str] = []

    def walk(node, schema, prefix):
        for key in node.keys():
            name = f"{prefix}{key}"
            if key not in schema.keys():
                found.append(name)
                continue
            child, expected = node._get_node(key), _structured(schema._get_node(key))
            # Only structured (dataclass) nodes have a fixed key set; Dict fields are open.
            if isinstance(child, DictConfig) and expected is not None:
                walk(child, expected, name + ".")

    walk(cfg, OmegaConf.structured(TrainConfig), "")
    found += _unknown_logger_keys(cfg)
    return [key for key in found if key != "hydra"]  # Hydra's own node, when composed with it


def _unknown_logger_keys(cfg: DictConfig) -> List[str]:
    """``logger`` is an open dict of ``_target_`` nodes: a key its class does not take would
    make that logger fail to start (and be skipped) at run time, so check the signature."""
    import importlib
    import inspect

    found = []
    for name, node in (cfg.get("logger") or {}).items():
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        if not target:
            continue
        module, _, attr = str(target).rpartition(".")
        try:
            params = inspect.signature(getattr(importlib.import_module(module), attr)).parameters
        except (ImportError, AttributeError, ValueError, TypeError):
            continue  # a user's own logger we cannot inspect: Hydra instantiates it as is
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue
        found += [f"logger.{name}.{key}" for key in node.keys()
                  if not str(key).startswith("_") and key not in params]
    return found


def refuse_unknown_keys(cfg: DictConfig) -> None:
    unknown = unknown_keys(cfg)
    if unknown:
        raise ConfigError(unknown_key_message(unknown))


def unknown_key_message(keys: List[str]) -> str:
    """``unknown config key: trainer.epoch (did you mean trainer.epochs?) ...``"""
    import difflib

    added = [k for k in keys if k.split(".")[1:2] == ["kwargs"]]
    if added:
        # Hydra's struct mode: a key the config file does not set yet needs `+` to be added.
        return (f"{added[0]} is not set in the config yet: add an argument of the model or "
                f"reader with +{added[0]}=<value> (checked against its signature)")
    schema_keys = _all_keys(OmegaConf.structured(TrainConfig))
    hints = []
    for key in keys:
        # Among the key's siblings, by its last part: every trainer key shares "trainer.".
        parent, _, leaf = key.rpartition(".")
        siblings = {k.rpartition(".")[2]: k for k in schema_keys if k.rpartition(".")[0] == parent}
        close = difflib.get_close_matches(leaf, list(siblings), n=1)
        hints.append(key + (f" (did you mean {siblings[close[0]]}?)" if close else ""))
    return (f"unknown config key{'s' if len(keys) > 1 else ''}: {', '.join(hints)}; the schema "
            f"has no such key, so nothing would read it")


def _structured(node) -> Optional[DictConfig]:
    """A schema node as a dataclass-typed config, also where its value is MISSING (``model``,
    ``dataset``, ...: filled by a group); None for open Dict fields and plain values."""
    import dataclasses

    if not isinstance(node, DictConfig):
        return None
    if OmegaConf.get_type(node) not in (dict, None):
        return node
    ref_type = node._metadata.ref_type
    return OmegaConf.structured(ref_type) if dataclasses.is_dataclass(ref_type) else None


def _all_keys(node, prefix: str = "") -> List[str]:
    keys = []
    for key in node.keys():
        child = _structured(node._get_node(key))
        if child is not None:
            keys += _all_keys(child, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def make_paths_absolute(cfg: DictConfig) -> None:
    """Stores ``dataset.root`` and ``paths.cache_dir`` as absolute paths, so the saved config
    works from any folder (event-seg-evaluate, a resume, a launcher's working directory)."""
    import os

    if cfg.dataset.root is not None:
        cfg.dataset.root = os.path.abspath(os.path.expanduser(str(cfg.dataset.root)))
    cfg.paths.cache_dir = os.path.abspath(os.path.expanduser(str(cfg.paths.cache_dir)))


def _validate_loss(loss, num_classes: int) -> None:
    weights = loss.class_weights
    if weights is not None:
        if loss.name == "lovasz":
            raise ConfigError("loss.class_weights is not used by loss=lovasz (smp's Lovasz loss "
                              "takes no class weights); drop it or pick ce, focal, dice or ce+dice")
        if isinstance(weights, str):
            if weights != "auto":
                raise ConfigError(f"loss.class_weights={weights!r} is not 'auto' or a list of "
                                  f"{num_classes} numbers")
        else:
            try:
                values = [float(w) for w in weights]
            except (TypeError, ValueError):
                raise ConfigError(f"loss.class_weights={weights!r} is not 'auto' or a list of "
                                  f"{num_classes} numbers") from None
            if (len(values) != num_classes or not all(math.isfinite(v) and v >= 0
                                                       for v in values) or not any(values)):
                raise ConfigError(f"loss.class_weights needs {num_classes} finite non-negative "
                                  f"numbers (one per dataset.class_names entry), not all zero; "
                                  f"got {len(values)}: {values}")
    if not 0.0 <= loss.label_smoothing < 1.0:
        raise ConfigError(f"loss.label_smoothing={loss.label_smoothing} must be in [0, 1)")
    if not (math.isfinite(loss.focal_gamma) and loss.focal_gamma >= 0):
        raise ConfigError(f"loss.focal_gamma={loss.focal_gamma} must be >= 0")
    ce_w, dice_w = loss.ce_weight, loss.dice_weight
    if not (math.isfinite(ce_w) and math.isfinite(dice_w) and ce_w >= 0 and dice_w >= 0
            and ce_w + dice_w > 0):
        raise ConfigError("loss.ce_weight and loss.dice_weight must be finite and >= 0, not "
                          "both 0")
    # A key the chosen loss does not read would change nothing, silently: refused by name.
    readers = {"label_smoothing": ("ce", "ce+dice"), "focal_gamma": ("focal",),
               "ce_weight": ("ce+dice",), "dice_weight": ("ce+dice",)}
    defaults = LossConfig()
    for key, names in readers.items():
        if loss.name not in names and loss[key] != getattr(defaults, key):
            raise ConfigError(f"loss.{key}={loss[key]} is not used by loss={loss.name} (only by "
                              f"{' and '.join(names)}); drop it or pick one of those")


def _validate_training_extras(trainer) -> None:
    if trainer.accumulate_grad_batches < 1:
        raise ConfigError(f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} "
                          f"must be >= 1 (1: a step per batch)")
    decay = trainer.ema.decay
    if decay is not None and not 0.0 < decay < 1.0:
        raise ConfigError(f"trainer.ema.decay={decay} must be in (0, 1), e.g. 0.999, or null "
                          f"(off)")
    patience = trainer.early_stopping.patience
    if patience is not None and patience < 1:
        raise ConfigError(f"trainer.early_stopping.patience={patience} must be >= 1 or null "
                          f"(off)")
    min_delta = trainer.early_stopping.min_delta
    if not (math.isfinite(min_delta) and min_delta >= 0):
        raise ConfigError(f"trainer.early_stopping.min_delta={min_delta} must be a number >= 0")
    if trainer.log_every_n_steps < 1:
        raise ConfigError(f"trainer.log_every_n_steps={trainer.log_every_n_steps} must be >= 1")


# trainer.checkpoints.keep, from the most kept to the least.
KEEP_CHECKPOINTS = ("all", "weights", "best")


def _validate_checkpoints(checkpoints) -> None:
    if checkpoints.keep not in KEEP_CHECKPOINTS:
        raise ConfigError(f"trainer.checkpoints.keep={checkpoints.keep!r} is not one of: "
                          f"{', '.join(KEEP_CHECKPOINTS)} (what a finished run keeps: both "
                          f"checkpoints in full, both as weights only, or best.pt's weights)")


def _validate_evaluation(evaluate) -> None:
    window = evaluate.sliding_window
    for key in ("size", "stride"):
        value = window[key]
        if value is not None and (len(value) != 2 or min(value) <= 0):
            raise ConfigError(f"evaluate.sliding_window.{key}={list(value)} must be [height, "
                              f"width], both positive")
    if window.size is not None and any(v % 32 for v in window.size):
        raise ConfigError(f"evaluate.sliding_window.size={list(window.size)} must be multiples "
                          f"of 32 (the encoder's output stride)")
    if window.stride is not None and window.size is None:
        raise ConfigError("evaluate.sliding_window.stride needs evaluate.sliding_window.size")
    if window.stride is not None and any(s > z for s, z in zip(window.stride, window.size)):
        raise ConfigError(f"evaluate.sliding_window.stride={list(window.stride)} is larger than "
                          f"the size {list(window.size)}: pixels between windows would get no "
                          f"prediction")


def validate(cfg: DictConfig) -> None:
    """Checks what the types alone cannot; raises ConfigError naming the key."""
    from omegaconf import OmegaConf

    for group in ("dataset", "model", "optimizer", "scheduler"):
        if OmegaConf.is_missing(cfg, group):
            raise ConfigError(f"no {group} is chosen (was it removed with ~{group}?): pick one "
                              f"with {group}=<option>")
    refuse_unknown_keys(cfg)
    from .targets import validate_targets

    validate_targets(cfg)  # model.arch xor model._target_, dataset.format xor dataset._target_
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value is None and key in BUILT_BY_TARGET:
            continue  # a `_target_` builds it (checked just above)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of: {', '.join(allowed)}")
    device = cfg.trainer.device
    if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise ConfigError(f"trainer.device={device!r} is not one of: auto, cpu, cuda, cuda:N")
    positive = {
        "trainer.epochs": cfg.trainer.epochs,
        "trainer.batch_size": cfg.trainer.batch_size,
        "dataset.num_bins": cfg.dataset.num_bins,
        "dataset.height": cfg.dataset.height,
        "dataset.width": cfg.dataset.width,
        "optimizer.lr": cfg.optimizer.lr,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}={value} must be positive")
    # Which frame sizes a model takes is its own (smp's Unet pads, FPN needs multiples of 32, a
    # _target_ model has no encoder stride): models.check_model's dry run decides, in one line.
    _validate_schedule(cfg.scheduler)
    _validate_precision(cfg.trainer)
    _validate_loss(cfg.loss, len(cfg.dataset.class_names))
    _validate_training_extras(cfg.trainer)
    _validate_checkpoints(cfg.trainer.checkpoints)
    check_optimized_metric(cfg.optimized_metric, list(cfg.dataset.class_names))
    splits = cfg.dataset.get("splits") or {}
    if cfg.optimized_metric.startswith("test_") and splits and "test" not in splits:
        raise ConfigError(f"optimized_metric={cfg.optimized_metric} needs a test split, and "
                          f"dataset.splits has none; optimise a best_val_* metric")
    _validate_evaluation(cfg.evaluate)
    if cfg.model.arch in NEEDS_TWO_SAMPLES and cfg.trainer.batch_size < 2:
        raise ConfigError(f"model.arch={cfg.model.arch} normalises pooled features over the batch "
                          f"and needs trainer.batch_size >= 2 (per device); got "
                          f"{cfg.trainer.batch_size}")
    if cfg.trainer.vis.num_batches < 0 or cfg.trainer.vis.max_samples < 1:
        raise ConfigError("trainer.vis.num_batches must be >= 0 and trainer.vis.max_samples >= 1")
    if cfg.trainer.inference.every_n_epochs < 1:
        raise ConfigError("trainer.inference.every_n_epochs must be >= 1")
    if cfg.trainer.num_workers < 0:
        raise ConfigError(f"trainer.num_workers={cfg.trainer.num_workers} must be >= 0")
    if cfg.trainer.limit_batches is not None and cfg.trainer.limit_batches <= 0:
        raise ConfigError("trainer.limit_batches must be a positive number or null")
    if len(cfg.dataset.palette) != len(cfg.dataset.class_names):
        raise ConfigError(
            f"dataset.palette has {len(cfg.dataset.palette)} colours for "
            f"{len(cfg.dataset.class_names)} dataset.class_names"
        )
    _validate_label_ids(cfg.dataset)
    _validate_augment(cfg.dataset.augment)
    _validate_precomputed_source(cfg.dataset)
    if cfg.dataset.representation == "precomputed" and not cfg.dataset.event_channels:
        raise ConfigError("dataset.representation=precomputed needs dataset.event_channels "
                          "(the channel count of the stored event tensors)")
    if not cfg.dataset.time_surface.tau_ms > 0:
        raise ConfigError(f"dataset.time_surface.tau_ms={cfg.dataset.time_surface.tau_ms} must "
                          f"be positive (the time surface's decay constant in milliseconds)")
    if cfg.dataset.format == "ddd17" and cfg.dataset.representation != "precomputed":
        raise ConfigError("DDD17 ships precomputed 6-channel event tensors, not raw events: use "
                          "dataset.representation=precomputed")
    if cfg.dataset.format == "dsec_semantic":
        if cfg.dataset.modality != "events":
            raise ConfigError(
                f"dataset.modality={cfg.dataset.modality}: DSEC-Semantic ships no RGB frames "
                "aligned to the event camera (its frame camera sits elsewhere and its images are "
                "not rectified to the labels), so only dataset.modality=events is possible")
        dsec = cfg.dataset.dsec
        if (dsec.duration_ms is None) == (dsec.num_events is None):
            raise ConfigError("set exactly one of dataset.dsec.duration_ms and "
                              "dataset.dsec.num_events (the other null)")
        if dsec.classes not in (11, 19):
            raise ConfigError(f"dataset.dsec.classes={dsec.classes} must be 11 or 19")
        if len(cfg.dataset.class_names) != dsec.classes:
            raise ConfigError(f"dataset.dsec.classes={dsec.classes} but dataset.class_names has "
                              f"{len(cfg.dataset.class_names)} names (use experiment=dsec_semantic_19 "
                              "for the 19-class labels)")
    for split in ("train", "val"):
        if split not in cfg.dataset.splits:
            raise ConfigError(f"dataset.splits has no '{split}' entry")


def _validate_label_ids(dataset) -> None:
    """Masks travel as uint8 (a quarter of the bytes of int64 per pixel): class ids and the
    ignore index must fit in 0..255."""
    if not 0 <= dataset.ignore_index <= 255:
        raise ConfigError(f"dataset.ignore_index={dataset.ignore_index} must be in 0..255 "
                          f"(masks are uint8; 255 is the usual choice)")
    if len(dataset.class_names) > 255:
        raise ConfigError(f"dataset.class_names has {len(dataset.class_names)} classes; at most "
                          f"255 fit a uint8 mask beside the ignore index")
    classes = len(dataset.class_names)
    bad = [v for v in (dataset.label_map or [])
           if not (0 <= v < classes or v == dataset.ignore_index)]
    if bad:
        raise ConfigError(f"dataset.label_map holds {bad[:3]}: every entry must be a class id "
                          f"below the {classes} dataset.class_names or the ignore index "
                          f"{dataset.ignore_index}")


# The formats whose readers return raw events (the representation is built from them); only
# DDD17 and a `_target_` reader returning `dense` tensors hand over stored event tensors.
RAW_EVENT_FORMATS = ("event_scapes", "dsec_semantic")


def _validate_precomputed_source(dataset) -> None:
    if dataset.representation == "precomputed" and dataset.format in RAW_EVENT_FORMATS:
        built = [r for r in CHOICES["dataset.representation"] if r != "precomputed"]
        raise ConfigError(f"dataset.representation=precomputed reads event tensors stored on "
                          f"disk, which only dataset.format=ddd17 and a dataset._target_ reader "
                          f"returning `dense` tensors ship; dataset.format={dataset.format} "
                          f"ships raw events: pick one of {', '.join(built)}")


def _validate_augment(augment) -> None:
    """The ranges albumentations accepts (its p in [0, 1]; Affine's scale a pair) and the ones
    that make sense for its ranges (it takes a reversed or negative one silently), checked
    whether or not the affine is on: a sweep may switch it on later."""
    for key in ("hflip", "affine_p", "photometric_p"):
        value = augment[key]
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ConfigError(f"dataset.augment.{key}={value} must be a probability in [0, 1]")
    scale = list(augment.scale)
    if len(scale) != 2 or not (math.isfinite(scale[0]) and math.isfinite(scale[1])
                               and 0 < scale[0] <= scale[1]):
        raise ConfigError(f"dataset.augment.scale={scale} must be a [min, max] pair with "
                          f"0 < min <= max, e.g. [0.9, 1.1] (1: unscaled)")
    # Up to 360: 180 or 360 both mean any angle, as albumentations takes them.
    if not (math.isfinite(augment.rotate_deg) and 0.0 <= augment.rotate_deg <= 360.0):
        raise ConfigError(f"dataset.augment.rotate_deg={augment.rotate_deg} must be in [0, 360] "
                          f"(degrees; the angle is drawn from [-rotate_deg, rotate_deg])")
    if not (math.isfinite(augment.translate) and 0.0 <= augment.translate < 1.0):
        raise ConfigError(f"dataset.augment.translate={augment.translate} must be in [0, 1) (a "
                          f"share of the frame size, drawn from [-translate, translate])")


def _validate_schedule(scheduler) -> None:
    if not 0.0 <= scheduler.min_lr_ratio <= 1.0:
        raise ConfigError(f"scheduler.min_lr_ratio={scheduler.min_lr_ratio} must be between 0 "
                          f"and 1 (the final rate as a share of optimizer.lr)")
    if scheduler.power <= 0:
        raise ConfigError(f"scheduler.power={scheduler.power} must be positive (0.9 is usual)")
    if scheduler.warmup_epochs < 0:
        raise ConfigError(f"scheduler.warmup_epochs={scheduler.warmup_epochs} must be >= 0")


def _validate_precision(trainer) -> None:
    """Half precision runs as CUDA autocast only: refuse it now, not after the data is built."""
    if trainer.precision in ("auto", "fp32"):
        return
    if trainer.device == "cpu":
        raise ConfigError(f"trainer.precision={trainer.precision} needs a CUDA device, and "
                          f"trainer.device=cpu; use trainer.precision=fp32 or auto on CPU")
    if trainer.device == "auto":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.precision={trainer.precision} needs a CUDA device and "
                              f"none is visible; use trainer.precision=fp32 or auto")
