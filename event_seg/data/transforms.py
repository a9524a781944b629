"""Joint transforms: geometric ones act identically on RGB, the event tensor and the mask;
photometric ones (here: normalisation) touch RGB only. Evaluation splits are deterministic."""

from __future__ import annotations

import numpy as np

# ImageNet statistics: encoders are usually initialised for them, and they centre RGB near 0.
RGB_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
RGB_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255


class JointTransform:
    """Albumentations pipeline over ``(rgb uint8 HWC, events float32 HWC, mask int HW)``.

    Events ride along as an extra image target, so any channel count works and flips apply to
    all three targets with the same random draw. With ``size=(height, width)`` every sample is
    padded up to it (RGB and events with 0, the mask with ``ignore_index``, so padding is never
    scored) and cropped down to it: at random when training, centred otherwise.
    """

    def __init__(self, train: bool, hflip: float = 0.5, seed: int = 0, size=None,
                 ignore_index: int = 255):
        import albumentations as A
        import cv2

        geometric = []
        if size is not None:
            height, width = size
            geometric += [
                A.PadIfNeeded(height, width, border_mode=cv2.BORDER_CONSTANT, fill=0,
                              fill_mask=ignore_index),
                (A.RandomCrop if train else A.CenterCrop)(height, width),
            ]
        if train and hflip > 0:
            geometric.append(A.HorizontalFlip(p=hflip))
        # albumentations draws from its own generator: seed it, or runs are not repeatable.
        self.pipeline = (A.Compose(geometric, additional_targets={"events": "image"}, seed=seed)
                         if geometric else None)

    def reseed(self, seed: int) -> None:
        """Called in each DataLoader worker, so workers do not repeat each other's draws."""
        if self.pipeline is not None:
            self.pipeline.set_random_seed(seed)

    def __call__(self, rgb, events, mask):
        if self.pipeline is not None:
            out = self.pipeline(image=rgb, events=events, mask=mask)
            rgb, events, mask = out["image"], out["events"], out["mask"]
        rgb = (rgb.astype(np.float32) - RGB_MEAN) / RGB_STD
        return rgb, events, mask


def denormalize_rgb(rgb_chw: np.ndarray) -> np.ndarray:
    """Back to uint8 HWC for display."""
    img = rgb_chw.transpose(1, 2, 0) * RGB_STD + RGB_MEAN
    return np.clip(img, 0, 255).astype(np.uint8)
