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


def build_target_model(model_cfg, info):
    """``Target(in_channels=..., classes=..., **model.kwargs)``, checked once on a zero input
    of the dataset's frame size: it must be an ``nn.Module`` returning logits
    ``[B, classes, H, W]`` (a wrong shape would otherwise surface as a loss error naming
    nothing of the model)."""
    import torch

    from .targets import build

    target = model_cfg._target_
    model = build(model_cfg, "model", in_channels=info.input_channels, classes=info.num_classes)
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model._target_={target} returned a {type(model).__name__}, not a "
                          f"torch.nn.Module")
    height, width = getattr(info, "height", None), getattr(info, "width", None)
    if height and width:
        was_training = model.training
        model.eval()  # batch 1 through BatchNorm: eval mode, and no running statistic moves
        try:
            with torch.no_grad():
                out = model(torch.zeros(1, info.input_channels, height, width))
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise ConfigError(f"model._target_={target} failed on a [1, {info.input_channels}, "
                              f"{height}, {width}] input (model.kwargs="
                              f"{dict(model_cfg.get('kwargs') or {})}): {type(e).__name__}: "
                              f"{first}") from None
        finally:
            model.train(was_training)
        expected = (1, info.num_classes, height, width)
        if not torch.is_tensor(out) or tuple(out.shape) != expected:
            got = list(out.shape) if torch.is_tensor(out) else f"a {type(out).__name__}"
            given = [1, info.input_channels, height, width]
            raise ConfigError(
                f"model._target_={target} returned {got} for a {given} input; event_seg needs "
                f"the logits {list(expected)} ([batch, classes, height, width], before softmax)")
    return model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
