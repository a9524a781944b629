"""ESIM-style event simulation from rendered frames (vectorised over pixels).

Each pixel keeps a reference log intensity ``L_ref`` (the level of its last event). Between two
rendered frames (``L0`` at ``t0``, ``L1`` at ``t1``) it fires one event for every contrast level
``L_ref + s*C*k`` (``s`` the sign of the change) that lies between ``L0`` and ``L1``, stamped by
linear interpolation in time. Large changes give several events. ``C`` has a small per-pixel
Gaussian spread, as real sensors do. Linear interpolation only holds for small per-frame changes,
so callers render several sub-frames between labelled frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOG_EPS = 1e-3


def log_intensity(rgb: np.ndarray) -> np.ndarray:
    """``log(gray/255 + eps)`` for a uint8 or float ``[H, W, 3]`` image in 0..255 (or ``[H, W]``)."""
    img = np.asarray(rgb, dtype=np.float32)
    gray = img if img.ndim == 2 else img @ np.array([0.2989, 0.587, 0.114], dtype=np.float32)
    return np.log(gray / 255.0 + LOG_EPS)


@dataclass
class Events:
    """Events as flat arrays, sorted by time: x, y uint16; t int64 (nanoseconds); p bool."""

    x: np.ndarray
    y: np.ndarray
    t: np.ndarray
    p: np.ndarray

    def __len__(self) -> int:
        return int(self.t.size)

    @staticmethod
    def concatenate(chunks: list["Events"]) -> "Events":
        if not chunks:
            return Events(np.zeros(0, np.uint16), np.zeros(0, np.uint16), np.zeros(0, np.int64),
                          np.zeros(0, bool))
        ev = Events(*(np.concatenate([getattr(c, k) for c in chunks]) for k in "xytp"))
        order = np.argsort(ev.t, kind="stable")
        return Events(ev.x[order], ev.y[order], ev.t[order], ev.p[order])


class EventSimulator:
    """Stateful per-pixel simulator; feed it frames in time order with :meth:`step`.

    Args:
        first_frame: the frame that initialises the reference levels (``[H, W, 3]`` or ``[H, W]``).
        contrast_threshold: mean contrast threshold ``C`` in log intensity (CARLA uses 0.3).
        threshold_sigma: per-pixel standard deviation of ``C`` (clipped to stay >= 0.05).
        noise_rate: background events per pixel per second (random polarity and time).
        seed: seeds the threshold spread and the noise, so a simulation is reproducible.
    """

    def __init__(self, first_frame: np.ndarray, contrast_threshold: float = 0.25,
                 threshold_sigma: float = 0.03, noise_rate: float = 0.0, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.level = log_intensity(first_frame).astype(np.float64)
        self.ref = self.level.copy()
        shape = self.level.shape
        self.height, self.width = shape
        spread = (self.rng.normal(0.0, threshold_sigma, size=shape) if threshold_sigma > 0
                  else np.zeros(shape))
        self.threshold = np.maximum(contrast_threshold + spread, 0.05)  # one per pixel
        self.noise_rate = noise_rate

    def step(self, frame: np.ndarray, t0_ns: int, t1_ns: int) -> Events:
        """Events between the previous frame (at ``t0_ns``) and ``frame`` (at ``t1_ns``)."""
        new_level = log_intensity(frame).astype(np.float64)
        signal = self._crossings(self.level, new_level, t0_ns, t1_ns)
        self.level = new_level
        chunks = [signal]
        if self.noise_rate > 0:
            chunks.append(self._noise(t0_ns, t1_ns))
        return Events.concatenate(chunks)

    def _crossings(self, l0: np.ndarray, l1: np.ndarray, t0: int, t1: int) -> Events:
        delta = l1 - self.ref
        sign = np.sign(delta)
        # Number of whole thresholds between the reference and the new level, per pixel.
        count = np.floor(np.abs(delta) / self.threshold).astype(np.int64).ravel()
        total = int(count.sum())
        flat = np.flatnonzero(count)
        if total == 0:
            return Events.concatenate([])
        pix = np.repeat(flat, count[flat])
        # k = 1..count within each pixel's run of events.
        starts = np.repeat(np.cumsum(count[flat]) - count[flat], count[flat])
        k = np.arange(total) - starts + 1
        s = sign.ravel()[pix]
        c = self.threshold.ravel()[pix]
        level = self.ref.ravel()[pix] + s * c * k
        a, b = l0.ravel()[pix], l1.ravel()[pix]
        change = b - a
        # The reference sits within one threshold of l0, so each level lies between l0 and l1;
        # the clip only absorbs floating-point error.
        frac = np.clip(np.divide(level - a, change, out=np.ones_like(change), where=change != 0),
                       0.0, 1.0)
        t = (t0 + frac * (t1 - t0)).astype(np.int64)
        self.ref += (sign * count.reshape(sign.shape)) * self.threshold
        y, x = np.divmod(pix, self.width)
        return Events(x.astype(np.uint16), y.astype(np.uint16), t, s > 0)

    def _noise(self, t0: int, t1: int) -> Events:
        expected = self.noise_rate * self.height * self.width * (t1 - t0) * 1e-9
        n = int(self.rng.poisson(expected))
        return Events(
            self.rng.integers(0, self.width, n).astype(np.uint16),
            self.rng.integers(0, self.height, n).astype(np.uint16),
            self.rng.integers(t0, max(t1, t0 + 1), n).astype(np.int64),
            self.rng.random(n) < 0.5,
        )
