"""Segmentation metrics from a torchmetrics confusion matrix (accumulated on the device)."""

from __future__ import annotations

from typing import Dict, List


class SegmentationMetrics:
    """Mean IoU, frequency-weighted mean IoU, per-class IoU and pixel accuracy.

    Classes absent from both prediction and target in the whole evaluation are left out of the
    mean (their IoU is undefined), as mmsegmentation and most papers do.
    """

    def __init__(self, num_classes: int, ignore_index: int, class_names: List[str], device):
        from torchmetrics.classification import MulticlassConfusionMatrix

        self.class_names = class_names
        self.last_confusion = None  # set by compute(): the (reduced) matrix, for images
        # Summed over DDP ranks by the caller (compute's reduce): torchmetrics' own sync would
        # be a collective that ranks with uneven shares must reach in step.
        self.confusion = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index,
                                                   validate_args=False,
                                                   sync_on_compute=False).to(device)

    def update(self, logits, target) -> None:
        self.confusion.update(logits.argmax(dim=1), target)

    def reset(self) -> None:
        self.confusion.reset()

    def compute(self, prefix: str, reduce=None) -> Dict[str, float]:
        """``reduce`` sums the confusion matrix over DDP ranks (in place) when given."""
        import torch

        cm = self.confusion.confmat.clone()  # rows: target, columns: prediction
        if reduce is not None:
            cm = reduce(cm)
        cm = cm.double()
        self.last_confusion = cm.cpu().numpy()  # rows: target, columns: prediction
        tp = cm.diag()
        target_count = cm.sum(dim=1)
        union = target_count + cm.sum(dim=0) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        total = target_count.sum().clamp(min=1)
        valid = ~torch.isnan(iou)
        freq = target_count / total
        out = {
            f"{prefix}_mean_iou": float(iou[valid].mean()) if valid.any() else 0.0,
            f"{prefix}_weighted_mean_iou": float((freq[valid] * iou[valid]).sum()),
            f"{prefix}_pixel_accuracy": float(tp.sum() / total),
        }
        for name, value in zip(self.class_names, iou.tolist()):
            out[f"{prefix}_iou/{name}"] = value
        return out
