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
                 ignore_index: int = 255, affine_p: float = 0.0, scale=(0.9, 1.1),
                 rotate_deg: float = 5.0, translate: float = 0.05, photometric_p: float = 0.0):
        import albumentations as A
        import cv2

        geometric = []
        if train and affine_p > 0:
            # Events are interpolated like an image; the mask by nearest neighbour; uncovered
            # borders become 0 (RGB, events) and ignore (mask).
            geometric.append(A.Affine(scale=tuple(scale), rotate=(-rotate_deg, rotate_deg),
                                      translate_percent=(-translate, translate), p=affine_p,
                                      border_mode=cv2.BORDER_CONSTANT, fill=0,
                                      fill_mask=ignore_index))
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
        # Photometric jitter is a separate pipeline on RGB alone: events are not light.
        self.photometric = (A.Compose([A.RandomBrightnessContrast(p=1.0),
                                       A.RandomGamma(p=0.5)], p=photometric_p, seed=seed + 1)
                            if train and photometric_p > 0 else None)

    def reseed(self, seed: int) -> None:
        """Called in each DataLoader worker, so workers do not repeat each other's draws."""
        if self.pipeline is not None:
            self.pipeline.set_random_seed(seed)
        if self.photometric is not None:
            self.photometric.set_random_seed(seed + 1)

    def __call__(self, rgb, events, mask):
        if self.pipeline is not None:
            out = self.pipeline(image=rgb, events=events, mask=mask)
            rgb, events, mask = out["image"], out["events"], out["mask"]
        if self.photometric is not None:
            rgb = self.photometric(image=rgb)["image"]
        rgb = (rgb.astype(np.float32) - RGB_MEAN) / RGB_STD
        return rgb, events, mask


def denormalize_rgb(rgb_chw: np.ndarray) -> np.ndarray:
    """Back to uint8 HWC for display."""
    img = rgb_chw.transpose(1, 2, 0) * RGB_STD + RGB_MEAN
    return np.clip(img, 0, 255).astype(np.uint8)
