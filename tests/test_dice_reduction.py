"""What loss=dice averages over, as conf/loss/dice.yaml and docs/training_toolkit.md state it."""

from __future__ import annotations

import torch

from event_seg.engine.losses import SegmentationLoss


def soft_dice(prob: torch.Tensor, hit: torch.Tensor) -> torch.Tensor:
    """2 |P * T| / (|P| + |T|) over every pixel of the batch."""
    return 2 * (prob * hit).sum() / (prob.sum() + hit.sum())


def test_dice_is_one_score_per_class_over_the_batch_averaged_over_all_classes():
    torch.manual_seed(0)
    classes, ignore = 4, 255
    logits = torch.randn(2, classes, 5, 6)
    target = torch.randint(0, 2, (2, 5, 6))  # classes 0 and 1 only; 2 and 3 absent
    target[0, 0, :3] = ignore
    labelled = target != ignore
    prob = logits.softmax(1) * labelled.unsqueeze(1)  # ignored pixels count for nothing
    per_class = [1 - soft_dice(prob[:, c], (target == c) & labelled) for c in (0, 1)]

    loss = SegmentationLoss("dice", classes, ignore)(logits, target)

    # The classes absent from the batch's labels add 0 but still count in the mean: the sum over
    # the present classes divided by all four, not the mean over the two present.
    assert torch.allclose(loss, sum(per_class) / classes, atol=1e-6)
    assert not torch.allclose(loss, sum(per_class) / 2, atol=1e-3)
    weighted = SegmentationLoss("dice", classes, ignore, class_weights=[1.0, 3.0, 2.0, 2.0])
    expected = (1.0 * per_class[0] + 3.0 * per_class[1]) / 8.0  # weights of all four classes
    assert torch.allclose(weighted(logits, target), expected, atol=1e-6)
