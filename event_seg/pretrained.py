"""Pretrained encoder weights for any input channel count (``model.encoder_weights``).

Pretrained encoders see 3 channels (RGB); an event_seg model sees ``rgb`` (3), ``events`` (the
event representation's channels) or ``rgb+events`` (RGB first, then the events: see
data/device_input.py). Only the first convolution differs, so the weights are loaded as they
are and that convolution is adapted:

- RGB channels keep the file's RGB filters exactly;
- each event channel gets the mean of the three RGB filters times ``3 / E`` (``E`` event
  channels; see :func:`adapt_first_conv` for why).

smp's own adaptation (``encoders/_utils.py: patch_first_conv``) cycles the RGB filters over all
channels (channel 3 gets R again, 4 gets G ...) and scales every channel by ``3 / N``: the RGB
filters of an ``rgb+events`` model then no longer equal the pretrained ones, and an event bin
gets a colour filter it has no relation to.

The weights come from a file (an encoder state dict, a whole-model state dict, or an event_seg
checkpoint) or from smp's own names (``imagenet`` ...), which smp >= 0.5 fetches from the
Hugging Face Hub (repos ``smp-hub/<encoder>.<weights>`` at a pinned revision). Anything that is
not the weights of this encoder is a one-line ConfigError naming the file and what is wrong.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from .errors import ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

RGB_CHANNELS = 3
SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
SHOWN = 3  # keys named in a one-line error


def is_local_file(weights: Optional[str]) -> bool:
    """A path (has a separator, ``~`` or a weights-file suffix) rather than one of smp's names."""
    return weights is not None and (os.sep in weights or weights.startswith("~")
                                    or weights.endswith(SUFFIXES))


# ----------------------------------------------------------------------------------------------
# Reading a file


def read_state_dict(path: str, option: str) -> Tuple[Dict[str, "torch.Tensor"], Optional[dict]]:
    """``(tensors, event_seg config or None)`` of a weights file, unwrapped from a checkpoint.

    Accepts a state dict (``torch.save(encoder.state_dict())``, a ``.safetensors`` file), a
    whole-model state dict, a training checkpoint holding one under ``model`` or
    ``state_dict`` (event_seg, Lightning), and refuses anything else in one line."""
    import torch

    full = os.path.expanduser(path)
    if not os.path.isfile(full):
        raise ConfigError(f"{option}: no such file")
    if full.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return dict(load_file(full, device="cpu")), None
        except Exception as e:
            raise ConfigError(f"{option}: cannot read it as a safetensors file ({_short(e)}): "
                              f"corrupt or truncated?") from None
    try:
        obj = torch.load(full, map_location="cpu", weights_only=True)
    except Exception as e:
        import re

        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            # A pickle of Python objects (a whole nn.Module, a custom class): loading it would
            # run their code, so it is refused; the state dict is what to save.
            raise ConfigError(
                f"{option}: holds Python objects ({found.group(1)}), not only tensors "
                f"(torch.load(weights_only=True) refused it); save the weights alone: "
                f"torch.save(model.encoder.state_dict(), path)") from None
        raise ConfigError(f"{option}: cannot read it with torch.load ({_short(e)}): not a "
                          f"PyTorch weights file, or corrupt or truncated") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{option}: holds a {type(obj).__name__}, not a state dict (a dict "
                          f"of tensors); save one with torch.save(model.encoder.state_dict(), "
                          f"path)")
    config = None
    if isinstance(obj.get("model"), dict) and isinstance(obj.get("config"), dict):
        config = obj["config"]  # an event_seg checkpoint: the weights and the run's settings
        # A run with trainer.ema.decay validated, kept and tested its EMA: start from that.
        if isinstance(obj.get("ema_model"), dict):
            log.info("%s: taking the encoder of its EMA weights (the ones that run validated)",
                     option)
        obj = obj["ema_model"] if isinstance(obj.get("ema_model"), dict) else obj["model"]
    elif isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # Lightning and similar checkpoints
    elif isinstance(obj.get("model"), dict):
        obj = obj["model"]
    tensors = {str(k): v for k, v in obj.items() if torch.is_tensor(v)}
    if not tensors:
        raise ConfigError(f"{option}: holds no tensors (keys: {_keys(obj)})")
    return tensors, config


# ----------------------------------------------------------------------------------------------
# Matching the file's keys to the encoder's


def match_keys(file_keys: List[str], encoder_keys: List[str]) -> Tuple[str, str, int]:
    """``(file prefix, encoder prefix, matches)``: the prefixes that, stripped from one side and
    added on the other, map the most file keys onto encoder keys. ``encoder.`` for a
    whole-model state dict, ``module.encoder.`` under DDP, ``model.`` for a timm state dict
    loaded into smp's ``tu-`` encoder (whose keys start with ``model.``)."""
    from collections import Counter

    encoder_set, file_set = set(encoder_keys), set(file_keys)
    votes: Counter = Counter()
    for key in file_keys:
        parts = key.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in encoder_set:
                votes[(".".join(parts[:i]) + "." if i else "", "")] += 1
    for key in encoder_keys:
        parts = key.split(".")
        # Prefixing a bare name ("weight" -> "bn1.weight") would match anything: two parts at least.
        for i in range(1, len(parts) - 1):
            if ".".join(parts[i:]) in file_set:
                votes[("", ".".join(parts[:i]) + ".")] += 1
    if not votes:
        return "", "", 0
    (file_prefix, encoder_prefix), count = votes.most_common(1)[0]
    return file_prefix, encoder_prefix, count


def stem_keys(encoder_state, file_state, in_channels: int) -> List[str]:
    """The first convolution(s): in the encoder's own order (its modules' order, the order the
    input flows), the leading 4-D weights that take 3 channels in the file and ``in_channels``
    in the encoder. Usually one (resnet ``conv1.weight``, efficientnet ``_conv_stem.weight``,
    mobilenet ``features.0.0.weight``, mit ``patch_embed1.proj.weight``); mobileone's stem has
    parallel branches, each one such weight."""
    stems = []
    for key, value in encoder_state.items():
        if value.dim() != 4 or key not in file_state:
            continue
        given = file_state[key]
        if given.dim() == 4 and given.shape[1] == RGB_CHANNELS and value.shape[1] == in_channels:
            stems.append(key)
        else:
            break
    return stems


# ----------------------------------------------------------------------------------------------
# Adapting the first convolution


def adapt_first_conv(weight, in_channels: int, modality: str):
    """The 3-channel filters ``weight [O, 3, k, k]`` for ``in_channels`` inputs.

    ``rgb+events``: channels 0-2 are the RGB filters as they are; ``events``: no RGB channels.
    Each of the ``E`` event channels is ``mean(RGB filters) * 3 / E``.

    Why the mean: an event is a brightness change, colourless; the mean of the RGB filters is
    the filter's response to brightness (to a gray image), the part of it that has a meaning
    for events. Why ``3 / E``: the event channels together then weigh what the three RGB
    filters weigh (their sum over channels equals the RGB filters' sum), so a signal present in
    every event bin, like a gray image in every colour, gets the response the pretrained layer
    gave (the scale its BatchNorm statistics were measured at) instead of ``E / 3`` times it
    (smp and timm scale by ``3 / N`` for the same reason when they repeat the RGB filters over
    ``N`` channels). For ``rgb+events`` the RGB part keeps its exact response and the events add
    theirs, nonzero only where events fired.
    """
    import torch

    rgb = RGB_CHANNELS if modality == "rgb+events" else 0
    events = in_channels - rgb
    new = torch.empty((weight.shape[0], in_channels, *weight.shape[2:]), dtype=weight.dtype)
    if rgb:
        new[:, :rgb] = weight
    if events:  # the mean in float32 also for a float16 file
        mean = weight.float().mean(dim=1, keepdim=True) * (RGB_CHANNELS / events)
        new[:, rgb:] = mean.to(weight.dtype)
    return new


def how_adapted(in_channels: int, modality: str) -> str:
    rgb = RGB_CHANNELS if modality == "rgb+events" else 0
    events = in_channels - rgb
    kept = "RGB filters kept for channels 0-2; " if rgb else ""
    return (f"{kept}the {events} event channel{'s' if events != 1 else ''} "
            f"{'are' if events != 1 else 'is'} the mean RGB filter x 3/{events}")


# ----------------------------------------------------------------------------------------------
# Loading


def load_encoder_weights(encoder, tensors: Dict[str, "torch.Tensor"], info, option: str,
                         encoder_desc: str, file_config: Optional[dict] = None,
                         source: Optional[str] = None) -> None:
    """Loads ``tensors`` into ``encoder``, adapting the first convolution to the dataset's
    input channels; a one-line ConfigError when they are not this encoder's weights.

    The rule: every tensor of the encoder must be in the file with its shape (BatchNorm's
    ``num_batches_tracked`` excepted: some exports drop it), the first convolution's 3 input
    channels excepted, which are adapted. Tensors the encoder lacks are ignored only where
    they form a part of the network the encoder does not have at all (a classifier head:
    torchvision's ``fc``, timm's ``classifier``, ``head``, ``conv_head``), and named in the
    log; an extra tensor inside a part the encoder has (``layer1.2`` of a resnet34 file loaded
    into a resnet18) means another architecture and is refused."""
    import torch

    in_channels, modality = info.input_channels, info.modality
    encoder_state = encoder.state_dict()
    file_prefix, encoder_prefix, count = match_keys(list(tensors), list(encoder_state))
    if count == 0:
        raise ConfigError(f"{option}: holds no keys of a {encoder_desc} (the file's keys: "
                          f"{_keys(tensors)})")
    mapped = {encoder_prefix + k[len(file_prefix):]: v for k, v in tensors.items()
              if k.startswith(file_prefix)}
    outside = len(tensors) - len(mapped)  # a whole model's decoder and head: not ours to load
    matched = [k for k in mapped if k in encoder_state]
    needed = [k for k in encoder_state if not k.endswith("num_batches_tracked")]
    missing = [k for k in needed if k not in mapped]
    if missing:
        raise ConfigError(f"{option}: lacks {len(missing)} of the {len(needed)} tensors of a "
                          f"{encoder_desc} ({_list(missing)}): saved from another architecture "
                          f"or depth?")
    parts = {_top(k[len(encoder_prefix):]) for k in matched}
    extra = [k for k in mapped if k not in encoder_state]
    foreign = [k for k in extra if _top(k[len(encoder_prefix):]) in parts]

    def as_in_file(keys):  # named as the file names them
        return _list([file_prefix + k[len(encoder_prefix):] for k in keys])

    if foreign:
        raise ConfigError(f"{option}: holds {len(foreign)} tensors a {encoder_desc} does not have "
                          f"({as_in_file(foreign)}): saved from another architecture or depth?")
    if file_config is not None:
        _check_event_seg_source(file_config, mapped, encoder_state, info, option)
    stems = stem_keys(encoder_state, mapped, in_channels)
    adapt = bool(stems) and (in_channels != RGB_CHANNELS or modality == "events")
    if file_config is not None and (file_config.get("dataset") or {}).get("modality") != "rgb":
        adapt = False  # its first convolution was trained on events already: never recoloured
    for key in matched:
        want, got = encoder_state[key].shape, mapped[key].shape
        if key in stems and adapt:
            continue
        if want != got:
            raise ConfigError(f"{option}: {key} is {list(got)} in the file but {list(want)} in a "
                              f"{encoder_desc} with {in_channels} input channels: another "
                              f"architecture?")
    state = {k: mapped[k] for k in matched}
    if adapt:
        for key in stems:
            state[key] = adapt_first_conv(mapped[key], in_channels, modality)
    with torch.no_grad():
        # nn.Module's own load: smp's encoders override load_state_dict to drop classifier keys
        # (done above) and return nothing, where the missing/unexpected report is wanted here.
        result = torch.nn.Module.load_state_dict(encoder, state, strict=False)
    left = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if left or result.unexpected_keys:  # cannot happen after the checks above: a bug if it does
        raise RuntimeError(f"encoder load left {left} missing, {result.unexpected_keys} unexpected")
    notes = []
    if adapt:
        notes.append(f"{', '.join(stems)} adapted from 3 to {in_channels} input channels "
                     f"({how_adapted(in_channels, modality)})")
    if extra:
        notes.append(f"ignored {len(extra)} tensors the encoder has no place for "
                     f"({as_in_file(extra)}: a classifier head)")
    if outside:
        whole = "an event_seg checkpoint" if file_config is not None else "a whole model"
        notes.append(f"took the {file_prefix}* part of {whole} ({outside} other tensors, its "
                     f"decoder and head, not loaded)")
    log.info("Loaded %d encoder tensors from %s%s", len(state), source or option.split("=", 1)[1],
             "; " + "; ".join(notes) if notes else "")


def _check_event_seg_source(config: dict, mapped, encoder_state, info, option: str) -> None:
    """An event_seg checkpoint says what it was trained with: a first convolution trained on
    other inputs than this model's cannot be adapted."""
    dataset = config.get("dataset") or {}
    modality = dataset.get("modality")
    stems = [k for k, v in encoder_state.items() if v.dim() == 4][:1]
    if not stems or stems[0] not in mapped or modality in (None, "rgb"):
        return
    channels = mapped[stems[0]].shape[1]
    if modality != info.modality or channels != info.input_channels:
        raise ConfigError(
            f"{option}: an event_seg checkpoint trained on {modality} ({channels} input "
            f"channels); this model takes {info.modality} ({info.input_channels}): only RGB "
            f"(3-channel) first convolutions are adapted, so train with the same "
            f"dataset.modality and representation, or start from RGB weights")


def _top(key: str) -> str:
    return key.split(".", 1)[0]


def _list(keys: List[str]) -> str:
    return ", ".join(keys[:SHOWN]) + (", ..." if len(keys) > SHOWN else "")


def _keys(mapping) -> str:
    keys = [str(k) for k in mapping]
    return _list(keys) if keys else "none"


def _short(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = (lines[0] if lines else "").split(". ")[0]
    return f"{type(error).__name__}: {text[:160]}" if text else type(error).__name__


# ----------------------------------------------------------------------------------------------
# smp's named weights (imagenet ...), fetched from the Hugging Face Hub


def named_weights(model_cfg, classes: int, option: str) -> Tuple[Dict[str, "torch.Tensor"], str]:
    """The encoder tensors of smp's ``encoder_weights`` name (``imagenet``, ``ssl`` ...),
    built at 3 input channels so they can be adapted like a file's. smp >= 0.5 downloads them
    from the Hugging Face Hub (``smp-hub/<encoder>.<weights>`` at a pinned revision) into the
    Hub cache (``$HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``); a cache filled
    beforehand works without network, and ``HF_HUB_OFFLINE=1`` skips the network altogether.
    Returns the tensors and where they came from (for the log)."""
    import segmentation_models_pytorch as smp

    name, weights = model_cfg.encoder_name, model_cfg.encoder_weights
    where = _hub_source(name, weights)
    try:
        model = smp.create_model(arch=model_cfg.arch, encoder_name=name, encoder_weights=weights,
                                 in_channels=RGB_CHANNELS, classes=classes,
                                 **_plain(model_cfg.get("kwargs")))
    except (KeyError, ValueError, TypeError) as e:
        if isinstance(e, OSError):  # the Hub's LocalEntryNotFoundError is a ValueError too
            raise _fetch_error(option, where, e) from None
        reason = " ".join(str(e).strip("'\"").split())
        raise ConfigError(f"{option} with model.encoder_name={name}: {reason[:300]}") from None
    except Exception as e:
        if _is_network_error(e):
            raise _fetch_error(option, where, e) from None
        raise
    return model.encoder.state_dict(), f"{weights} ({where})"


def _hub_source(name: str, weights: str) -> str:
    try:
        from segmentation_models_pytorch.encoders import encoders

        settings = encoders[name]["pretrained_settings"][weights]
        if "repo_id" in settings:
            return f"{settings['repo_id']} (revision {settings.get('revision', 'main')[:10]})"
        return settings.get("url", f"{name} {weights}")
    except Exception:
        return f"the {weights} weights of {name}"


def _is_network_error(error: Exception) -> bool:
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"OSError", "HfHubHTTPError", "OfflineModeIsEnabled", "ConnectionError",
                         "HTTPError", "URLError", "Timeout", "ConnectError"})


def _fetch_error(option: str, where: str, error: Exception) -> ConfigError:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        why = "HF_HUB_OFFLINE=1 is set and it is not in the cache"
    elif type(error).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
        why = "the Hub cannot be reached and it is not in the cache"
    else:
        why = f"not in the cache, and the Hub refused it ({_short(error)})"
    return ConfigError(
        f"{option}: cannot fetch {where} from the Hugging Face Hub: {why} "
        f"{constants.HF_HUB_CACHE}; fill that cache on a machine with network (docs/"
        f"custom_model_and_dataset.md, 'Pretrained encoders offline') or pass a file: "
        f"model.encoder_weights=/path/encoder.pth")


def _plain(node) -> dict:
    if not node:
        return {}
    from omegaconf import DictConfig, OmegaConf

    return dict(OmegaConf.to_container(node, resolve=True)) if isinstance(node, DictConfig) \
        else dict(node)
