"""The training objective (``loss`` config group) over segmentation_models_pytorch.losses.

Every loss scores labelled pixels only: ``ignore_index`` pixels change nothing, whatever the
model predicts there. ``class_weights: auto`` weights each class by the inverse square root of
its pixel frequency in the train split, counted once per run (see :func:`auto_class_weights`).
"""

from __future__ import annotations

import json
import logging
import math
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


class SegmentationLoss(nn.Module):
    """``loss(logits [B, C, H, W], target [B, H, W]) -> scalar``: the configured objective, a
    mean over the batch's labelled pixels (or, for Dice, Lovasz and focal, smp's own
    reductions over them)."""

    def __init__(self, name: str, num_classes: int, ignore_index: int,
                 class_weights: Optional[Sequence[float]] = None, label_smoothing: float = 0.0,
                 focal_gamma: float = 2.0, ce_weight: float = 1.0, dice_weight: float = 1.0):
        super().__init__()
        from segmentation_models_pytorch import losses

        self.name = name
        self.ignore_index = ignore_index
        weight = (torch.tensor(list(class_weights), dtype=torch.float32)
                  if class_weights is not None else None)
        # smp wants the weights as a list; buffers follow the module to the device.
        listed = None if class_weights is None else [float(w) for w in class_weights]
        self.parts: List[tuple] = []
        if name in ("ce", "ce+dice"):
            self.ce = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index,
                                          label_smoothing=label_smoothing)
            self.parts.append((self.ce, 1.0 if name == "ce" else ce_weight))
        if name in ("dice", "ce+dice"):
            self.dice = losses.DiceLoss("multiclass", from_logits=True, ignore_index=ignore_index,
                                        class_weights=listed)
            self.parts.append((self.dice, 1.0 if name == "dice" else dice_weight))
        if name == "focal":
            self.focal = losses.FocalLoss("multiclass", gamma=focal_gamma,
                                          ignore_index=ignore_index, class_weights=listed)
            self.parts.append((self.focal, 1.0))
        if name == "lovasz":
            self.lovasz = losses.LovaszLoss("multiclass", ignore_index=ignore_index)
            self.parts.append((self.lovasz, 1.0))
        if not self.parts:
            raise ValueError(f"unknown loss {name!r}")

    def pixel_weight_sum(self, target: torch.Tensor) -> torch.Tensor:
        """What the batch's loss is a mean over: the class weight of each labelled pixel summed
        where cross-entropy is weighted (torch divides the weighted CE by that sum), else the
        number of labelled pixels (an integer tensor). A split's loss is the sum over its
        batches of ``loss * pixel_weight_sum`` divided by the sum of ``pixel_weight_sum``: the
        mean over the split's pixels however it is cut into batches (exact for cross-entropy;
        Dice and Lovasz are batch statistics, weighted alike)."""
        labelled = target != self.ignore_index
        weight = self.ce.weight if hasattr(self, "ce") else None
        if weight is None:
            return labelled.sum()
        # Gathered for every pixel and masked, not indexed by the mask: a boolean index would
        # make the GPU wait for the host once per evaluation batch.
        safe = torch.where(labelled, target, torch.zeros_like(target)).long()
        return (weight.to(torch.float64)[safe] * labelled).sum()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # The losses compute in float32 whatever the autocast: softmax sums over many pixels.
        logits = logits.float()
        total = None
        for fn, weight in self.parts:
            if weight == 0:
                continue
            value = fn(logits, target) * weight
            total = value if total is None else total + value
        return total


def build_loss(loss_cfg, num_classes: int, ignore_index: int,
               class_weights: Optional[Sequence[float]] = None) -> SegmentationLoss:
    """The configured loss; ``class_weights`` resolves ``loss.class_weights`` (a list, or the
    counted weights for ``auto``)."""
    if class_weights is None and loss_cfg.class_weights is not None \
            and loss_cfg.class_weights != "auto":
        class_weights = [float(w) for w in loss_cfg.class_weights]
    return SegmentationLoss(loss_cfg.name, num_classes, ignore_index, class_weights,
                            label_smoothing=loss_cfg.label_smoothing,
                            focal_gamma=loss_cfg.focal_gamma, ce_weight=loss_cfg.ce_weight,
                            dice_weight=loss_cfg.dice_weight)


# ---------------------------------------------------------------------------------------------
# class_weights: auto
# ---------------------------------------------------------------------------------------------

def weights_from_counts(counts: np.ndarray) -> List[float]:
    """Inverse square root of each class's pixel frequency, scaled so the pixel-weighted mean
    weight is 1 (the loss keeps the scale of unweighted cross-entropy on the train split, so
    learning rates tuned without weights still fit). A class absent from the train split gets
    the largest weight of the present ones: it never occurs in training, and in validation it
    counts as much as the rarest class that does."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.sum() <= 0:
        raise ValueError("the train split has no labelled pixel")
    freq = counts / counts.sum()
    present = freq > 0
    weights = np.zeros_like(freq)
    weights[present] = 1.0 / np.sqrt(freq[present])
    weights /= float((freq * weights).sum())
    weights[~present] = weights[present].max()
    return [float(w) for w in weights]


def count_class_pixels(reader, num_classes: int, ignore_index: int, rank: int = 0,
                       world_size: int = 1, progress: bool = True) -> np.ndarray:
    """Pixels per class over the labels of ``reader`` (un-augmented), this rank's share of the
    samples only (the caller sums over ranks). Reads labels alone where the reader can."""
    counts = np.zeros(num_classes, dtype=np.int64)
    indices = range(rank, len(reader), world_size)
    if progress and rank == 0:
        from tqdm import tqdm

        indices = tqdm(indices, desc="class_weights=auto: counting label pixels", leave=False,
                       unit="label")
    # A reader of your own may have no read_mask: its un-augmented read(), else its sample.
    read_mask = getattr(reader, "read_mask", None) or (
        (lambda i: reader.read(i)["mask"]) if hasattr(reader, "read") else
        (lambda i: reader[i]["mask"]))
    for i in indices:
        mask = np.asarray(read_mask(i)).ravel()
        mask = mask[mask != ignore_index]
        counts += np.bincount(mask, minlength=num_classes)[:num_classes]
    return counts


def saved_class_weights(path, class_names=None) -> Optional[List[float]]:
    """The weights a run counted (its ``class_weights.json``), or None when there is no such
    file or it was counted for other classes."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    if class_names is not None and saved.get("class_names") != list(class_names):
        return None
    return [float(w) for w in saved["weights"]]


def auto_class_weights(reader, info, cache_file, dist, device="cpu",
                       progress: bool = True) -> List[float]:
    """The ``auto`` weights of the train split: counted once per run (sharded over the ranks)
    and kept in ``cache_file`` (the run folder's ``class_weights.json``), so a resume reuses
    them instead of reading every label again."""
    saved = saved_class_weights(cache_file, info.class_names)
    if saved is not None:
        return saved
    counts = count_class_pixels(reader, info.num_classes, info.ignore_index, dist.rank,
                                dist.world_size, progress=progress and dist.is_main)
    if dist.enabled:  # each rank counted its share; NCCL reduces device tensors only
        counts = dist.sum_(torch.tensor(counts, dtype=torch.float64, device=device)).cpu().numpy()
    weights = weights_from_counts(counts)
    if dist.is_main:
        from .trial import write_text_atomic

        write_text_atomic(cache_file, json.dumps({
            "rule": "inverse square root of pixel frequency, pixel-weighted mean 1",
            "class_names": list(info.class_names), "pixels": [int(c) for c in counts],
            "weights": weights}, indent=2))
    log.info("loss.class_weights=auto (inverse sqrt pixel frequency of %d train labels): %s",
             len(reader), ", ".join(f"{n} {w:.3g}" for n, w in zip(info.class_names, weights)))
    if any(not math.isfinite(w) for w in weights):
        raise ValueError(f"class weights are not finite: {weights}")
    return weights
