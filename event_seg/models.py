"""Model factory (the model input is built in data/device_input.py)."""

from __future__ import annotations

import logging
import os

from .errors import ConfigError

log = logging.getLogger(__name__)


def build_model(model_cfg, info):
    """``smp.create_model`` with in/out channels taken from the dataset.

    ``encoder_weights`` may be null (random init), a path to a local state-dict file for the
    encoder, or a weights name smp downloads (needs internet).
    """
    import segmentation_models_pytorch as smp
    import torch

    weights = model_cfg.encoder_weights
    local_file = weights is not None and (
        os.sep in weights or weights.endswith((".pt", ".pth", ".bin", ".safetensors")))
    try:
        model = smp.create_model(
            arch=model_cfg.arch,
            encoder_name=model_cfg.encoder_name,
            encoder_weights=None if local_file else weights,
            in_channels=info.input_channels,
            classes=info.num_classes,
        )
    except (KeyError, ValueError) as e:
        # smp's words (an unknown encoder lists every valid name), shortened to one line.
        reason = " ".join(str(e).strip("'\"").split())
        raise ConfigError(f"model.arch={model_cfg.arch} with model.encoder_name="
                          f"{model_cfg.encoder_name}: {reason[:300]}") from None
    if local_file:
        path = os.path.expanduser(weights)
        if not os.path.isfile(path):
            raise ConfigError(f"model.encoder_weights={weights}: no such file")
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = model.encoder.load_state_dict(state, strict=False)
        log.info("Loaded encoder weights from %s (%d missing, %d unexpected keys)",
                 path, len(missing), len(unexpected))
    return model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
