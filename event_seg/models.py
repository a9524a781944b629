"""Model factory (the model input is built in data/device_input.py).

A model is an smp architecture (``model.arch``, ``model.encoder_name``) or your own
``nn.Module`` named by ``model._target_`` (targets.py); either gets its input channels and
classes from the dataset and the extra arguments in ``model.kwargs``. ``model.encoder_weights``
loads pretrained encoder weights into either (pretrained.py).
"""

from __future__ import annotations

import logging

from .errors import ConfigError

log = logging.getLogger(__name__)


def build_model(model_cfg, info):
    """The configured model for the dataset ``info`` (input channels, classes, frame size).

    ``encoder_weights`` may be null (random init), a path to a weights file (an encoder state
    dict, a whole-model state dict or an event_seg checkpoint; its first convolution is adapted
    to the input channels), or a name of smp's weights (``imagenet`` ...: fetched from the
    Hugging Face Hub or its cache, then adapted the same way).
    """
    from .pretrained import is_local_file, load_encoder_weights, named_weights, read_state_dict

    target = model_cfg.get("_target_")
    if target:
        model = build_target_model(model_cfg, info)
        encoder, encoder_desc = getattr(model, "encoder", None), f"encoder of {target}"
    else:
        model = build_smp_model(model_cfg, info)
        encoder, encoder_desc = model.encoder, f"{model_cfg.encoder_name} encoder"
    weights = model_cfg.encoder_weights
    if weights is None:
        return model
    option = f"model.encoder_weights={weights}"
    if encoder is None:
        raise ConfigError(f"{option}: {target} has no .encoder submodule to load it into; a "
                          f"_target_ model loads its own weights (pass a path in model.kwargs)")
    source = None
    if is_local_file(weights):
        tensors, file_config = read_state_dict(weights, option)
    elif target:
        raise ConfigError(f"{option} names smp's weights for model.encoder_name; a _target_ "
                          f"model takes a weights file: model.encoder_weights=/path/encoder.pth")
    else:
        (tensors, source), file_config = named_weights(model_cfg, info.num_classes, option), None
    load_encoder_weights(encoder, tensors, info, option, encoder_desc, file_config, source)
    return model


def build_smp_model(model_cfg, info):
    """``smp.create_model`` with random weights; ``model.kwargs`` are the architecture's
    further arguments (``decoder_channels``, ``decoder_attention_type`` ...)."""
    import inspect

    import segmentation_models_pytorch as smp

    from .targets import plain

    check_encoder_name(str(model_cfg.encoder_name))
    kwargs = plain(model_cfg.get("kwargs"))
    arch_class = getattr(smp, str(model_cfg.arch), None)
    if kwargs and arch_class is not None and not str(model_cfg.encoder_name).startswith("tu-"):
        # smp passes unknown keywords on to the encoder, and only timm (``tu-``) encoders read
        # them: for the others a misspelt key would vanish without a word.
        named = [n for n, p in inspect.signature(arch_class).parameters.items()
                 if p.kind is not inspect.Parameter.VAR_KEYWORD]
        for key in kwargs:
            if key in ("encoder_name", "encoder_weights", "in_channels", "classes"):
                raise ConfigError(f"model.kwargs.{key}: set by event_seg (model.{key} or the "
                                  f"dataset); remove it from model.kwargs")
            if key not in named:
                raise ConfigError(f"model.kwargs.{key}: {model_cfg.arch} takes no argument "
                                  f"{key!r}; its arguments: {', '.join(named)}")
    try:
        return smp.create_model(arch=model_cfg.arch, encoder_name=model_cfg.encoder_name,
                                encoder_weights=None, in_channels=info.input_channels,
                                classes=info.num_classes, **kwargs)
    except (KeyError, ValueError) as e:
        # smp's words (an unknown encoder lists every valid name), shortened to one line.
        reason = " ".join(str(e).strip("'\"").split())
        raise ConfigError(f"model.arch={model_cfg.arch} with model.encoder_name="
                          f"{model_cfg.encoder_name}: {reason[:300]}") from None


def build_target_model(model_cfg, info, probe: bool = True):
    """``Target(in_channels=..., classes=..., **model.kwargs)``, checked once on a zero input
    of the dataset's frame size (batch 1, eval mode, no gradient): it must be an ``nn.Module``
    returning logits ``[B, classes, H, W]`` (a wrong shape would otherwise surface as a loss
    error naming nothing of the model). The command check (:func:`check_model`) runs it in
    train mode too."""
    import torch

    from .targets import build

    target = model_cfg._target_
    model = build(model_cfg, "model", in_channels=info.input_channels, classes=info.num_classes)
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model._target_={target} returned a {type(model).__name__}, not a "
                          f"torch.nn.Module")
    height, width = getattr(info, "height", None), getattr(info, "width", None)
    if probe and height and width:
        was_training = model.training
        try:
            dry_run(model, model_cfg, info, "eval", 1)
        finally:
            model.train(was_training)
    return model


def described(model_cfg) -> str:
    """``model._target_=pkg.Net`` or ``model.arch=PAN (model.encoder_name=resnet18)``."""
    if model_cfg.get("_target_"):
        return f"model._target_={model_cfg._target_}"
    return f"model.arch={model_cfg.arch} (model.encoder_name={model_cfg.encoder_name})"


def dry_run(model, model_cfg, info, mode: str, batch: int) -> None:
    """One forward pass of zeros ``[batch, in_channels, height, width]`` in ``mode`` (train or
    eval), without gradients, on the device the model's parameters lie on (``meta`` for the
    command check). A failure, or an output that is not the logits ``[batch, classes, H, W]``,
    is one ConfigError naming the model, the input and the mode. In train mode BatchNorm
    statistics move: run it on a model built for the check, or in eval mode."""
    import torch

    height, width, channels = info.height, info.width, info.input_channels
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    given = [batch, channels, height, width]
    expected = [batch, info.num_classes, height, width]
    what, in_mode = described(model_cfg), "" if mode == "eval" else f" in {mode} mode"
    model.train(mode == "train")
    try:
        with torch.no_grad():
            out = model(torch.zeros(given, device=device))
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        if model_cfg.get("_target_"):
            raise ConfigError(f"{what} failed on a {given} input{in_mode} (model.kwargs="
                              f"{dict(model_cfg.get('kwargs') or {})}): {type(e).__name__}: "
                              f"{first}{_batch_hint(mode, batch)}") from None
        raise ConfigError(f"{what} cannot run on a {height}x{width} input (dataset.height x "
                          f"dataset.width) in {mode} mode: {type(e).__name__}: {first}"
                          f"{_batch_hint(mode, batch)}") from None
    if isinstance(out, (tuple, list)):
        raise ConfigError(
            f"{what} returned a {type(out).__name__} in {mode} mode for a {given} input; "
            f"event_seg needs the logits tensor {expected} ([batch, classes, height, width], "
            f"before softmax) in train and eval mode, and trains no auxiliary output: return "
            f"the logits alone (see docs/custom_model_and_dataset.md)")
    if not torch.is_tensor(out) or list(out.shape) != expected:
        got = list(out.shape) if torch.is_tensor(out) else f"a {type(out).__name__}"
        raise ConfigError(
            f"{what} returned {got} for a {given} input{in_mode}; event_seg needs the logits "
            f"{expected} ([batch, classes, height, width], before softmax)")


def _batch_hint(mode: str, batch: int) -> str:
    return "" if mode == "eval" or batch > 1 else " (trainer.batch_size=1; 2 or more may work)"


def check_model(cfg) -> None:
    """The command check's dry run (launch.py, before any folder or data exists): the encoder
    name, then the configured model built without weights and run once in train mode (batch
    min(2, trainer.batch_size): BatchNorm after pooling needs two samples) and once in eval
    mode (batch 1) at ``dataset.height`` x ``dataset.width``.

    It runs on the ``meta`` device first: shapes only, no memory and next to no time (a DSEC
    sized Unet takes seconds on a CPU, tenths on meta). Where that fails, the verdict is a
    real CPU pass: a model may do what meta tensors cannot (``.item()``, numpy)."""
    from types import SimpleNamespace

    import torch
    from omegaconf import OmegaConf

    from .data.build import event_channels, input_channels

    if not cfg.model.get("_target_"):
        check_encoder_name(str(cfg.model.encoder_name))
    dataset = cfg.dataset
    info = SimpleNamespace(input_channels=input_channels(dataset.modality, event_channels(dataset)),
                           num_classes=len(dataset.class_names), height=int(dataset.height),
                           width=int(dataset.width))
    train_batch = min(2, int(cfg.trainer.batch_size))
    # The command check and the run's own start (train.run: a swept group option or a sampled
    # value reaches only the latter) check one config twice in one process: pay once.
    key = repr((OmegaConf.to_container(cfg.model, resolve=True), sorted(vars(info).items()),
                train_batch))
    if key in _PASSED:
        return
    meta = _meta_model(cfg.model, info)
    if meta is not None:
        try:
            _check_on(torch.device("meta"), cfg.model, info, train_batch, meta)
            _PASSED.add(key)
            return
        except Exception:  # noqa: BLE001  (meta is a shortcut for a pass, never a verdict)
            pass
    try:
        _check_on(torch.device("cpu"), cfg.model, info, train_batch)
    except ConfigError as e:
        raise ConfigError(f"{e}{_working_size(cfg.model, info, train_batch)}") from None
    _PASSED.add(key)


_PASSED: set = set()  # check_model's passed configs in this process


def _meta_model(model_cfg, info):
    """The model on the meta device, or None where even a CPU build fails (the CPU check then
    names why). Built on meta where it can be; a model whose constructor needs real values
    (mit_b* encoders call ``.item()``) is built on the CPU and moved."""
    import torch

    meta, cpu = torch.device("meta"), torch.device("cpu")
    try:
        with meta:
            return _build_bare(model_cfg, info, meta)
    except Exception:  # noqa: BLE001
        pass
    try:
        with cpu:
            return _build_bare(model_cfg, info, cpu).to(meta)
    except Exception:  # noqa: BLE001
        return None


def _check_on(device, model_cfg, info, train_batch: int, model=None) -> None:
    import torch

    with torch.device(device):
        if model is None:
            model = _build_bare(model_cfg, info, device)
        for mode, batch in (("train", train_batch), ("eval", 1)):
            dry_run(model, model_cfg, info, mode, batch)


def _build_bare(model_cfg, info, device):
    """The model without weights, on ``device`` (a ``torch.device`` context must be active)."""
    try:
        if model_cfg.get("_target_"):
            model = build_target_model(model_cfg, info, probe=False)
        else:
            model = build_smp_model(model_cfg, info)
    except ConfigError:
        raise
    except Exception as e:  # a timm encoder smp cannot use, an architecture's own refusal
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError(f"{described(model_cfg)} could not be built: {type(e).__name__}: "
                          f"{first}") from None
    # smp makes the first convolution for other than 3 input channels with a device-less
    # constructor: on the CPU, whatever the default device.
    return model.to(device)


def _working_size(model_cfg, info, train_batch: int) -> str:
    """``; it runs at dataset.height=128 dataset.width=128``: the first frame on which the
    model passes (on meta, built once, at most 16 sizes tried), or nothing."""
    import torch

    meta, model = torch.device("meta"), _meta_model(model_cfg, info)
    if model is None:
        return ""
    sizes = []
    # First each side rounded up to a multiple of an output stride (48x80 -> 64x96 for a
    # stride-32 decoder), then both raised to a floor (PAN's pyramid needs 128 or more).
    for stride in (8, 16, 32):
        size = tuple(-(-side // stride) * stride for side in (info.height, info.width))
        if size != (info.height, info.width) and size not in sizes:
            sizes.append(size)
    for k in range(1, 33):
        size = (max(info.height, 32 * k), max(info.width, 32 * k))
        if size != (info.height, info.width) and size not in sizes:
            sizes.append(size)
    for height, width in sizes[:16]:
        try:
            _check_on(meta, model_cfg, type(info)(**{**vars(info), "height": height,
                                                    "width": width}), train_batch, model)
        except Exception:  # noqa: BLE001
            continue
        return f"; it runs at dataset.height={height} dataset.width={width}"
    return ""


def check_encoder_name(name: str) -> None:
    """``model.encoder_name`` must be one of smp's encoders or ``tu-<a timm model>``: one line
    with a did-you-mean and a visibly cut list, before anything is built."""
    import difflib

    if name.startswith("tu-"):
        import timm

        if timm.is_model(name[3:]):
            return
        close = difflib.get_close_matches(name[3:], timm.list_models(), n=1)
        hint = f" (did you mean tu-{close[0]}?)" if close else ""
        raise ConfigError(f"model.encoder_name={name}: timm has no model {name[3:]}{hint}; "
                          f"timm.list_models() lists them")
    from segmentation_models_pytorch import encoders

    names = list(encoders.get_encoder_names())
    # smp still maps a few deprecated ``timm-`` names onto timm (``timm-regnetx_002``).
    legacy = getattr(encoders, "is_equivalent_to_timm_universal", lambda n: False)
    if name in names or legacy(name):
        return
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    shown = 12
    listed = ", ".join(names[:shown]) + (f", ... and {len(names) - shown} more"
                                         if len(names) > shown else "")
    raise ConfigError(f"model.encoder_name={name} is not an encoder of "
                      f"segmentation_models_pytorch{hint}; choose one of: {listed} "
                      f"(segmentation_models_pytorch.encoders.get_encoder_names()), or "
                      f"tu-<timm model>")


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
