"""Joint transforms on compact samples: one random draw moves RGB, mask and events together.

albumentations draws every geometric parameter and applies it to RGB (uint8) and the mask
(uint8, nearest neighbour); its recorded parameters (``save_applied_params``) then move the
window's events by their coordinates (events that leave the frame are dropped) and, where a
sample carries a dense event tensor (DDD17, or a dense entry of the prepared cache), warp that
tensor the way the image was warped. No dense float tensor is built for raw events on the CPU:
the representation is made on the training device from the moved events. Photometric jitter
touches RGB only; RGB normalisation happens on the device (see device_input.py).
Evaluation splits are deterministic (centred pad/crop only).
"""

from __future__ import annotations

import numpy as np

# ImageNet statistics: encoders are usually initialised for them, and they centre RGB near 0.
RGB_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
RGB_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255


class JointTransform:
    """Geometric (flip, pad/crop to ``size``, the ``strong`` affine) and photometric transforms.

    With ``size=(height, width)`` every sample is padded up to it (RGB and events with 0, the
    mask with ``ignore_index``, so padding is never scored) and cropped down to it: at random
    when training, centred otherwise.
    """

    def __init__(self, train: bool, hflip: float = 0.5, seed: int = 0, size=None,
                 ignore_index: int = 255, affine_p: float = 0.0, scale=(0.9, 1.1),
                 rotate_deg: float = 5.0, translate: float = 0.05, photometric_p: float = 0.0):
        import albumentations as A
        import cv2

        geometric = []
        if train and affine_p > 0:
            # A dense event tensor is interpolated like an image; the mask by nearest neighbour;
            # uncovered borders become 0 (RGB, events) and ignore (mask).
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
        self.last_applied = []  # the geometric parameters of the last call (see move_events)
        # albumentations draws from its own generator: seed it, or runs are not repeatable.
        self.pipeline = (A.Compose(geometric, seed=seed, save_applied_params=True)
                         if geometric else None)
        # Photometric jitter is a separate pipeline on RGB alone: events are not light.
        self.photometric = (A.Compose([A.RandomBrightnessContrast(p=1.0),
                                       A.RandomGamma(p=0.5)], p=photometric_p, seed=seed + 1)
                            if train and photometric_p > 0 else None)

    def reseed(self, seed: int) -> None:
        """Called per sample (sampling.SeededSamples): draws follow (seed, epoch, index)."""
        if self.pipeline is not None:
            self.pipeline.set_random_seed(seed)
        if self.photometric is not None:
            self.photometric.set_random_seed(seed + 1)

    def __call__(self, rgb, mask, events=None, dense=None):
        """``rgb`` uint8 HWC (None: the sample has no frame), ``mask`` uint8 HW, ``events`` the
        compact window events (see events.compact_events) or None, ``dense`` an event tensor
        CHW or None -> the same four, moved."""
        self.last_applied = []
        if self.pipeline is not None:
            # The draws depend only on the frame size: a one-byte-per-pixel stand-in serves a
            # sample without RGB.
            image = rgb if rgb is not None else np.zeros(mask.shape + (1,), np.uint8)
            out = self.pipeline(image=image, mask=mask)
            applied = self.last_applied = out["applied_transforms"]
            rgb = out["image"] if rgb is not None else None
            mask = out["mask"]
            if events is not None:
                events = move_events(events, applied)
            if dense is not None:
                dense = move_dense(dense, applied)
        if self.photometric is not None and rgb is not None:
            rgb = self.photometric(image=rgb)["image"]
        return rgb, mask, events, dense


def changes_the_events(applied) -> bool:
    """True when the recorded transforms drop or displace events non-uniformly (a crop that
    cuts the frame, an affine): a representation built before them then differs from one built
    from the moved events (its time and value normalisation saw other events). Flips and
    padding commute with building the representation."""
    for name, params in applied:
        if name == "Affine":
            return True
        if name in ("RandomCrop", "CenterCrop"):
            height, width = params["shape"][:2]
            if tuple(params["crop_coords"]) != (0, 0, width, height):
                return True
    return False


# ---------------------------------------------------------------------------------------------
# Replaying albumentations' recorded parameters on event coordinates and dense tensors
# ---------------------------------------------------------------------------------------------

def _select(events: dict, keep: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict:
    if keep.all():
        return {"x": x.astype(np.int16, copy=False), "y": y.astype(np.int16, copy=False),
                "t": events["t"], "p": events["p"]}
    return {"x": x[keep].astype(np.int16, copy=False), "y": y[keep].astype(np.int16, copy=False),
            "t": events["t"][keep], "p": events["p"][keep]}


def _materialise(events: dict, x_sign: int, x_off: int, y_off: int, source):
    """The composed map applied to the coordinates of events inside ``source`` (width, height).

    In int16, one pass per moved axis and none for an unmoved one, when no result can leave
    the int16 range (any frame under 16k pixels); in int32 otherwise. A DSEC window holds 10^6
    events: the passes count."""
    width, height = source
    small = width + abs(x_off) < 32768 and height + abs(y_off) < 32768
    dtype = np.int16 if small else np.int32
    x, y = events["x"], events["y"]
    if x_sign < 0:
        x = np.subtract(dtype(x_off), x, dtype=dtype)
    elif x_off or not small:
        x = np.add(x, dtype(x_off), dtype=dtype)
    if y_off or not small:
        y = np.add(y, dtype(y_off), dtype=dtype)
    return x, y


def _settle(events: dict, x_sign: int, x_off: int, y_off: int, source, frame, cut: bool) -> dict:
    """Applies the composed map to events inside ``source``; with ``cut``, drops what lies
    outside ``frame`` (both (width, height))."""
    x, y = _materialise(events, x_sign, x_off, y_off, source)
    if not cut:
        return {"x": x.astype(np.int16, copy=False), "y": y.astype(np.int16, copy=False),
                "t": events["t"], "p": events["p"]}
    width, height = frame
    return _select(events, (x >= 0) & (x < width) & (y >= 0) & (y < height), x, y)


def move_events(events: dict, applied) -> dict:
    """Applies the recorded geometric transforms to event coordinates, in order.

    Pixel ``(x, y)`` goes where the image pixel ``(x, y)`` went: flips mirror it, padding
    shifts it, crops shift it and drop what falls outside, the affine maps it through the
    matrix albumentations warped the image with and rounds to the nearest pixel.

    Flips, pads and crops compose into one integer map per axis (``x' = sign * x + offset``,
    ``y' = y + offset``) applied in one pass; events are tested against the frame only where a
    crop really cut it (before a pad or another crop moves the frame, and at the end), or after
    the affine. A 10^6-event window pays a few passes, not twenty.
    """
    x_sign, x_off, y_off = 1, 0, 0
    cut = False  # a crop removed part of the frame: events outside it are still to be dropped
    frame = None  # (width, height) after the last transform
    source = None  # (width, height) of the frame the events lie in before the composed map
    for name, params in applied:
        height, width = params["shape"][:2]  # the frame this transform received
        if source is None:
            source = (width, height)
        if cut and name != "HorizontalFlip":  # a flip keeps the frame; anything else moves it
            events = _settle(events, x_sign, x_off, y_off, source, (width, height), cut)
            x_sign, x_off, y_off, cut = 1, 0, 0, False
            source = (width, height)
        if name == "HorizontalFlip":
            x_sign, x_off = -x_sign, (width - 1) - x_off
            frame = (width, height)
        elif name == "PadIfNeeded":
            x_off += params["pad_left"]
            y_off += params["pad_top"]
            frame = (width + params["pad_left"] + params["pad_right"],
                     height + params["pad_top"] + params["pad_bottom"])
        elif name in ("RandomCrop", "CenterCrop"):
            if params.get("pad_params"):
                raise NotImplementedError(f"{name} with pad_if_needed")
            x_min, y_min, x_max, y_max = params["crop_coords"]
            x_off -= x_min
            y_off -= y_min
            cut = (x_min, y_min, x_max, y_max) != (0, 0, width, height)
            frame = (x_max - x_min, y_max - y_min)
        elif name == "Affine":
            x, y = _materialise(events, x_sign, x_off, y_off, source)
            m = np.asarray(params["matrix"], dtype=np.float64)
            new_h, new_w = params["output_shape"][:2]
            xf, yf = x.astype(np.float32), y.astype(np.float32)
            nx = np.rint(m[0, 0] * xf + m[0, 1] * yf + m[0, 2]).astype(np.int32)
            ny = np.rint(m[1, 0] * xf + m[1, 1] * yf + m[1, 2]).astype(np.int32)
            keep = (nx >= 0) & (nx < new_w) & (ny >= 0) & (ny < new_h)
            events = _select(events, keep, nx, ny)
            x_sign, x_off, y_off = 1, 0, 0
            frame = source = (new_w, new_h)
        else:  # only the transforms JointTransform builds reach here
            raise NotImplementedError(f"moving events through {name}")
    if (x_sign, x_off, y_off) == (1, 0, 0) and not cut:
        return events
    return _settle(events, x_sign, x_off, y_off, source, frame, cut)


def _pad_chw(dense: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Zero padding of a CHW tensor in one copy (a flipped view lands unflipped-contiguous):
    np.pad costs a quarter more on a DSEC-sized float16 tensor, on every cached sample."""
    c, h, w = dense.shape
    out = np.empty((c, top + h + bottom, left + w + right), dense.dtype)
    out[:, :top], out[:, top + h:] = 0, 0
    out[:, top:top + h, :left], out[:, top:top + h, left + w:] = 0, 0
    out[:, top:top + h, left:left + w] = dense
    return out


def move_dense(dense: np.ndarray, applied) -> np.ndarray:
    """Applies the recorded geometric transforms to a CHW event tensor of any float dtype
    (float16 stays float16 except through an affine, which interpolates in float32)."""
    import cv2

    for name, params in applied:
        if name == "HorizontalFlip":
            dense = dense[:, :, ::-1]
        elif name == "PadIfNeeded":
            dense = _pad_chw(dense, params["pad_top"], params["pad_bottom"],
                             params["pad_left"], params["pad_right"])
        elif name in ("RandomCrop", "CenterCrop"):
            x_min, y_min, x_max, y_max = params["crop_coords"]
            dense = dense[:, y_min:y_max, x_min:x_max]
        elif name == "Affine":
            from albumentations.augmentations.geometric import functional as fgeometric

            hwc = np.ascontiguousarray(dense.transpose(1, 2, 0), dtype=np.float32)
            hwc = fgeometric.warp_affine(hwc, np.asarray(params["matrix"]),
                                         params["interpolation"], 0, cv2.BORDER_CONSTANT,
                                         params["output_shape"][:2])
            dense = hwc.reshape(hwc.shape[:2] + (-1,)).transpose(2, 0, 1)
        else:
            raise NotImplementedError(f"moving a dense event tensor through {name}")
    return np.ascontiguousarray(dense)


def normalize_rgb(rgb_u8):
    """uint8 ``[B, H, W, 3]`` (a torch tensor, on any device) -> float32 ``[B, 3, H, W]``
    standardised with the ImageNet statistics. The result keeps the channels-last memory
    layout of its input, which is what a channels-last model wants."""
    import torch

    mean = torch.as_tensor(RGB_MEAN, device=rgb_u8.device)
    std = torch.as_tensor(RGB_STD, device=rgb_u8.device)
    return ((rgb_u8.float() - mean) / std).permute(0, 3, 1, 2)
