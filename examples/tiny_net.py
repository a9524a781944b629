"""A small encoder-decoder: the worked example of your own model (``model._target_``).

event_seg builds it as ``TinyNet(in_channels=..., classes=..., **model.kwargs)``: the input
channels follow ``dataset.modality`` and the representation (RGB first, then the event
channels), the classes follow ``dataset.class_names``. ``forward`` takes the model input
``[B, in_channels, H, W]`` (float32; H and W multiples of 32) and returns logits
``[B, classes, H, W]`` (before softmax). Nothing else is asked of a model.

    python -m event_seg.train hydra.searchpath=[file://examples/conf] model=tiny_net
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyNet(nn.Module):
    """Two stride-2 stages down, two up with skip connections, a 1x1 classifier.

    Args:
        in_channels: input channels (given by event_seg from the dataset).
        classes: output classes (given by event_seg from the dataset).
        width: channels of the first stage (``model.kwargs.width``); the second has twice.
    """

    def __init__(self, in_channels: int, classes: int, width: int = 16):
        super().__init__()
        self.stem = conv_bn_relu(in_channels, width)
        self.down1 = conv_bn_relu(width, width, stride=2)
        self.down2 = conv_bn_relu(width, 2 * width, stride=2)
        self.up2 = conv_bn_relu(2 * width + width, width)
        self.up1 = conv_bn_relu(width + width, width)
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        full = self.stem(x)
        half = self.down1(full)
        quarter = self.down2(half)
        up = nn.functional.interpolate(quarter, size=half.shape[-2:], mode="bilinear",
                                       align_corners=False)
        half = self.up2(torch.cat([up, half], dim=1))
        up = nn.functional.interpolate(half, size=full.shape[-2:], mode="bilinear",
                                       align_corners=False)
        return self.head(self.up1(torch.cat([up, full], dim=1)))
