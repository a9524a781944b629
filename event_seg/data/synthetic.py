"""The built-in synthetic dataset: procedural driving scenes, events from the ESIM simulator.

Each sequence is a street seen from a panning, forward-moving camera: sky, buildings with windows,
trees, road with moving lane markings, sidewalks, poles with signs, moving vehicles and
pedestrians. Frames are rendered at ``subframes`` times the label rate and fed to
:class:`~event_seg.data.simulator.EventSimulator`. A share of the labelled RGB frames is made very
dark or over-exposed *after* simulation: the event camera sees the scene radiance (it is HDR), the
frame camera does not, so there RGB alone is ambiguous while events still carry moving edges.
The test split is made entirely of such frames.

The set is written once, into ``<cache_dir>/synthetic/<hash of the settings>``, in the EventScape
on-disk layout (CARLA tag ids in the label PNGs) and read back by the EventScape reader.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .simulator import EventSimulator

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
SPLIT_TOWNS = {"train": (1, 2, 3), "val": (5,), "test": (5,)}
COMPLETE_MARKER = "synthetic_info.json"

# CARLA (pre-0.9.10) semantic tags used by the renderer.
SKY, BUILDING, PEDESTRIAN, POLE, ROADLINE, ROAD, SIDEWALK, VEGETATION, VEHICLE, SIGN = (
    0, 1, 4, 5, 6, 7, 8, 9, 10, 12)


@dataclass
class Sprite:
    """A moving object: world x at t=0, velocity in px/s, a parallax factor and its look."""

    kind: str
    x: float
    vx: float
    parallax: float
    params: dict = field(default_factory=dict)


class Scene:
    """One sequence's street layout; :meth:`render` draws it at any time ``t`` (seconds)."""

    def __init__(self, rng: np.random.Generator, height: int, width: int):
        H, W = height, width
        self.H, self.W = H, W
        self.horizon = H * rng.uniform(0.38, 0.5)
        self.cam_speed = W * rng.uniform(0.15, 0.35) * rng.choice([-1, 1])  # px/s at parallax 1
        self.fwd_speed = rng.uniform(1.5, 3.0)  # lane-marking phase per second
        self.vp_x = W * rng.uniform(0.4, 0.6)
        self.road_half = W * rng.uniform(0.45, 0.6)  # half width of the road at the bottom row
        self.walk = W * rng.uniform(0.15, 0.25)      # sidewalk width at the bottom row
        self.sky_top = rng.uniform(120, 200, 3)
        self.sky_bottom = np.clip(self.sky_top + rng.uniform(20, 60), 0, 255)
        self.road_color = rng.uniform(60, 100) * np.ones(3) + rng.uniform(-8, 8, 3)
        self.walk_color = rng.uniform(150, 200, 3)
        self.grass_color = np.array([rng.uniform(40, 80), rng.uniform(100, 150), rng.uniform(30, 60)])
        span = (-W, 2 * W)
        self.buildings = []
        x = span[0]
        while x < span[1]:
            w = W * rng.uniform(0.12, 0.3)
            top = self.horizon - H * rng.uniform(0.12, 0.38)
            self.buildings.append((x, x + w, top, rng.uniform(60, 200, 3)))
            x += w + W * rng.uniform(0.0, 0.08)
        self.trees = [(rng.uniform(*span), H * rng.uniform(0.06, 0.12),
                       rng.uniform(0, 0.1) * H) for _ in range(int(rng.integers(3, 7)))]
        self.poles = [(rng.uniform(*span), rng.random() < 0.5, rng.uniform(0, 255, 3))
                      for _ in range(int(rng.integers(3, 6)))]
        self.vehicles = [Sprite("vehicle", rng.uniform(-0.2 * W, 1.2 * W),
                                W * rng.uniform(0.2, 0.6) * rng.choice([-1, 1]), 1.0,
                                {"depth": rng.uniform(0.25, 0.9), "color": rng.uniform(20, 235, 3),
                                 "length": rng.uniform(1.8, 2.6)})
                         for _ in range(int(rng.integers(1, 4)))]
        self.vehicles.sort(key=lambda v: v.params["depth"])
        self.people = [Sprite("person", rng.uniform(0, W), W * rng.uniform(0.03, 0.1)
                              * rng.choice([-1, 1]), 1.0,
                              {"side": rng.choice([-1, 1]), "depth": rng.uniform(0.4, 0.95),
                               "color": rng.uniform(20, 235, 3)})
                       for _ in range(int(rng.integers(1, 4)))]

    # Geometry helpers -------------------------------------------------------------------------
    def _edge(self, Y, half_bottom):
        """Screen x offset from the vanishing point of a ground line at rows Y (0 above horizon)."""
        return np.clip((Y - self.horizon) / (self.H - self.horizon), 0, None) * half_bottom

    def render(self, t: float, scale: int = 1):
        """Returns ``(rgb float32 [H*s, W*s, 3] in 0..255, tags uint8 [H*s, W*s])`` at time t.

        Every object is drawn inside its own bounding box only, which keeps rendering a few
        milliseconds a frame (the generator renders ``subframes`` frames per label).
        """
        H, W = self.H, self.W
        canvas = _Canvas(H, W, scale)
        rgb, tags = canvas.rgb, canvas.tags
        ys = (np.arange(H * scale) + 0.5) / scale
        a = np.clip(ys / max(self.horizon, 1), 0, 1)[:, None, None]
        rgb[:] = self.sky_top * (1 - a) + self.sky_bottom * a  # sky: a vertical gradient
        cam = self.cam_speed * t

        for x0, x1, top, color in self.buildings:
            sx0, sx1 = x0 - 0.3 * cam, x1 - 0.3 * cam
            box = canvas.box(sx0, sx1, top, self.horizon + 2)
            if box is None:
                continue
            X, Y = canvas.grid(box)
            canvas.paint(box, np.ones_like(X, bool), color, BUILDING)
            windows = (((X - sx0) % 7) < 3) & (((Y - top) % 9) < 4) & (Y > top + 2)
            canvas.rgb[box][windows] = color * 0.45

        for x, radius, lift in self.trees:
            sx = x - 0.6 * cam
            cy = self.horizon - radius - lift
            box = canvas.box(sx - radius, sx + radius, cy - radius, self.horizon + 3)
            if box is None:
                continue
            X, Y = canvas.grid(box)
            canopy = (X - sx) ** 2 + ((Y - cy) * 1.2) ** 2 < radius ** 2
            trunk = (np.abs(X - sx) < max(radius * 0.15, 0.8)) & (Y >= cy)
            canvas.paint(box, canopy | trunk, self.grass_color * 0.8, VEGETATION)
            shade = 0.8 + 0.2 * np.sin(X * 1.7 + Y * 2.3)  # leaf texture
            canvas.rgb[box][canopy] *= shade[canopy, None]

        box = canvas.box(0, W, self.horizon, H)
        if box is not None:
            X, Y = canvas.grid(box)
            dx = X - self.vp_x
            road_half = self._edge(Y, self.road_half)
            walk_half = self._edge(Y, self.road_half + self.walk)
            canvas.paint(box, np.ones_like(X, bool), self.grass_color, VEGETATION)
            canvas.paint(box, np.abs(dx) < walk_half, self.walk_color, SIDEWALK)
            canvas.paint(box, np.abs(dx) < road_half, self.road_color, ROAD)
            # Lane markings: a dashed centre line and solid edge lines; dashes move with the car.
            depth = 1.0 / np.maximum(Y - self.horizon, 0.5)
            line_w = self._edge(Y, self.W * 0.012) + 0.3
            dashes = ((depth * 40.0 + self.fwd_speed * t) % 1.0) < 0.5
            centre = (np.abs(dx) < line_w) & dashes
            edges = np.abs(np.abs(dx) - road_half * 0.93) < line_w
            canvas.paint(box, centre | edges, np.array([235.0, 235.0, 220.0]), ROADLINE)

        for x, has_sign, sign_color in self.poles:
            # A pole stands on the sidewalk line that passes under its screen x (perspective).
            sx = x - cam
            frac = min(abs(sx - self.vp_x) / (self.road_half + self.walk * 0.5), 1.3)
            if frac < 0.08:
                continue
            base = self.horizon + frac * (H - self.horizon)
            top = base - H * 0.55 * frac
            half = max(0.6, 1.3 * frac)
            box = canvas.box(sx - half * 3.5, sx + half * 3.5, top, base + 1)
            if box is None:
                continue
            X, Y = canvas.grid(box)
            canvas.paint(box, (np.abs(X - sx) < half) & (Y <= base),
                         np.array([110.0, 110.0, 120.0]), POLE)
            if has_sign:
                canvas.paint(box, (np.abs(X - sx) < half * 3.5) & (Y < top + half * 5),
                             sign_color, SIGN)

        for v in self.vehicles:
            self._draw_vehicle(v, t, cam, canvas)
        for p in self.people:
            self._draw_person(p, t, cam, canvas)
        return rgb, tags

    def _draw_vehicle(self, v, t, cam, canvas):
        depth = v.params["depth"]  # 0 at the horizon, 1 at the bottom row
        bottom = self.horizon + depth * (self.H - self.horizon)
        size = depth * self.H * 0.35 + 2
        sx = v.x + v.vx * t - cam
        half_len = size * v.params["length"] / 2
        box = canvas.box(sx - half_len, sx + half_len, bottom - size, bottom + 1)
        if box is None:
            return
        X, Y = canvas.grid(box)
        body = (np.abs(X - sx) < half_len) & (Y < bottom - size * 0.15) & (Y >= bottom - size * 0.75)
        cabin = (np.abs(X - sx) < half_len * 0.6) & (Y < bottom - size * 0.7)
        wheels = np.zeros_like(body)
        for wx in (sx - half_len * 0.6, sx + half_len * 0.6):
            wheels |= (X - wx) ** 2 + (Y - (bottom - size * 0.15)) ** 2 < (size * 0.17) ** 2
        canvas.paint(box, body | cabin | wheels, v.params["color"], VEHICLE)
        canvas.rgb[box][cabin] = np.array([40.0, 50.0, 70.0])
        canvas.rgb[box][wheels] = np.array([15.0, 15.0, 15.0])

    def _draw_person(self, p, t, cam, canvas):
        depth = p.params["depth"]
        bottom = self.horizon + depth * (self.H - self.horizon)
        tall = depth * self.H * 0.4 + 3
        road = self._edge(np.float64(bottom), self.road_half)
        walk = self._edge(np.float64(bottom), self.road_half + self.walk)
        lane_x = self.vp_x + p.params["side"] * (road + walk) / 2
        sx = lane_x + ((p.x + p.vx * t - cam) % (self.W * 0.3)) - self.W * 0.15
        box = canvas.box(sx - tall * 0.15, sx + tall * 0.15, bottom - tall, bottom + 1)
        if box is None:
            return
        X, Y = canvas.grid(box)
        body = ((X - sx) / (tall * 0.14)) ** 2 + ((Y - (bottom - tall * 0.45)) / (tall * 0.42)) ** 2 < 1
        head = (X - sx) ** 2 + (Y - (bottom - tall * 0.9)) ** 2 < (tall * 0.1) ** 2
        canvas.paint(box, body | head, p.params["color"], PEDESTRIAN)


class _Canvas:
    """RGB and tag images at ``scale`` times the frame size, painted box by box."""

    def __init__(self, height: int, width: int, scale: int):
        self.scale = scale
        self.shape = (height * scale, width * scale)
        self.rgb = np.empty(self.shape + (3,), np.float32)
        self.tags = np.zeros(self.shape, np.uint8)
        self.ys = (np.arange(self.shape[0]) + 0.5) / scale
        self.xs = (np.arange(self.shape[1]) + 0.5) / scale

    def box(self, x0, x1, y0, y1):
        """Index slices covering [x0, x1) x [y0, y1) in frame pixels, or None when off-screen."""
        s = self.scale
        c0, c1 = max(int(np.floor(x0 * s)), 0), min(int(np.ceil(x1 * s)), self.shape[1])
        r0, r1 = max(int(np.floor(y0 * s)), 0), min(int(np.ceil(y1 * s)), self.shape[0])
        if c0 >= c1 or r0 >= r1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def grid(self, box):
        return np.meshgrid(self.xs[box[1]], self.ys[box[0]])

    def paint(self, box, mask, color, tag):
        self.rgb[box][mask] = color
        self.tags[box][mask] = tag


def _downsample(img: np.ndarray, scale: int) -> np.ndarray:
    if scale == 1:
        return img
    h, w = img.shape[0] // scale, img.shape[1] // scale
    return img.reshape(h, scale, w, scale, -1).mean(axis=(1, 3))


def degrade(rgb: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """The frame camera's view: ``normal``, ``dark`` (under-exposed, noisy) or ``bright``."""
    img = rgb.astype(np.float32)
    if kind == "dark":
        img = img * rng.uniform(0.01, 0.025) + rng.normal(0, 2.0, img.shape)
    elif kind == "bright":
        img = img * rng.uniform(3.5, 5.0) + 90 + rng.normal(0, 2.0, img.shape)
    else:
        img = img + rng.normal(0, 1.5, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def settings_hash(params: dict) -> str:
    blob = json.dumps({"version": GENERATOR_VERSION, **params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def synthetic_root(cache_dir: str, params: dict) -> Path:
    return Path(os.path.expanduser(cache_dir)) / "synthetic" / settings_hash(params)


def ensure_synthetic(cache_dir: str, params: dict, splits: dict, progress: bool = True) -> Path:
    """Returns the folder of the set with these settings, generating it on first use.

    Generation goes to a temporary sibling folder renamed into place at the end, so an interrupted
    run never leaves a half-written set that looks complete, and two processes racing on the same
    settings both end with the same, whole set.
    """
    root = synthetic_root(cache_dir, params)
    if (root / COMPLETE_MARKER).exists():
        return root
    if root.exists():  # an older crash left an incomplete folder behind
        shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        log.info("Generating the synthetic dataset into %s (once; later runs reuse it)", root)
        info = write_synthetic(tmp, params, splits, progress=progress)
        (tmp / COMPLETE_MARKER).write_text(json.dumps(info, indent=1))
        try:
            os.replace(tmp, root)
        except OSError:
            if not (root / COMPLETE_MARKER).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def write_synthetic(out: Path, params: dict, splits: dict, progress: bool = True) -> dict:
    """Renders every split into ``out`` in the EventScape layout; returns a summary.

    Sequences are independent (each seeded by split and number), so they render in parallel
    processes and the result does not depend on the process count.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm import tqdm

    jobs = [(out, params, splits, split, k)
            for split in ("train", "val", "test") for k in range(params[f"{split}_sequences"])]
    exposures = {}
    workers = min(len(jobs), os.cpu_count() or 1, 8)
    if multiprocessing.get_start_method(allow_none=True) not in (None, "fork", "spawn",
                                                                 "forkserver"):
        # Inside a joblib (loky) worker: a spawned child would be told to use the 'loky'
        # start method, which it cannot find, and die. Render here instead.
        workers = 1
    bar = tqdm(total=len(jobs), desc="synthetic scenes", unit="seq", disable=not progress)
    if workers <= 1:
        for job in jobs:
            exposures.update(_generate_sequence(job))
            bar.update()
    else:
        # spawn, not fork: the parent may already hold torch's thread pools.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            for future in as_completed([pool.submit(_generate_sequence, job) for job in jobs]):
                exposures.update(future.result())
                bar.update()
    bar.close()
    return {"generator_version": GENERATOR_VERSION, "params": params,
            "exposure": dict(sorted(exposures.items()))}


def _generate_sequence(job) -> dict:
    import cv2

    out, params, splits, split, k = job
    towns = SPLIT_TOWNS[split]
    town = towns[k % len(towns)]
    rng = np.random.default_rng([params["seed"], ("train", "val", "test").index(split), k])
    seq_dir = out / splits[split] / f"Town{town:02d}" / f"sequence_{k}"
    scene = Scene(rng, params["height"], params["width"])
    kinds = _write_sequence(seq_dir, scene, rng, params, town, k, hard_only=(split == "test"),
                            cv2=cv2)
    return {f"{split}/sequence_{k}": kinds}


def _write_sequence(seq_dir: Path, scene: Scene, rng, params, town, seq, hard_only, cv2):
    dirs = {m: seq_dir / m / "data" for m in ("rgb", "events", "semantic")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    n, sub, fps = params["frames_per_sequence"], params["subframes"], params["frame_rate"]
    ss = 2  # supersampling for smooth edges (realistic sub-pixel motion for the simulator)
    frame_ns = int(round(1e9 / fps))
    rgb0, _ = scene.render(0.0, ss)
    sim = EventSimulator(_downsample(rgb0, ss), params["contrast_threshold"],
                         params["threshold_sigma"], params["noise_rate"],
                         seed=int(rng.integers(2 ** 31)))
    stamps, bounds, kinds = [], [], []
    for i in range(n):
        t_ns = i * frame_ns
        stem = f"{town:02d}_{seq:03d}_{i:04d}"
        if i > 0:  # the first frame has no events window, as in the real release
            chunks = []
            for j in range(1, sub + 1):
                ta = (i - 1) * frame_ns + (j - 1) * frame_ns // sub
                tb = (i - 1) * frame_ns + j * frame_ns // sub
                frame, _ = scene.render(tb * 1e-9, ss)
                chunks.append(sim.step(_downsample(frame, ss), ta, tb))
            ev = chunks[0].concatenate(chunks)
            np.savez(dirs["events"] / f"{stem}_events.npz", x=ev.x, y=ev.y, t=ev.t, p=ev.p)
            bounds.append(f"{i} {(i - 1) * frame_ns * 1e-9:.9f} {t_ns * 1e-9:.9f}")
            clean = _downsample(frame, ss)
        else:
            clean = _downsample(rgb0, ss)
        _, tags = scene.render(t_ns * 1e-9, 1)
        if hard_only:
            kind = "dark" if i % 2 == 0 else "bright"
        else:
            kind = rng.choice(["dark", "bright"]) if rng.random() < params["hard_fraction"] else "normal"
        kinds.append(str(kind))
        img = degrade(clean, kind, rng)
        cv2.imwrite(str(dirs["rgb"] / f"{stem}_image.png"), img[..., ::-1])
        cv2.imwrite(str(dirs["semantic"] / f"{stem}_gt_labelIds.png"), tags)
        stamps.append(f"{i} {t_ns * 1e-9:.9f}")
    text = "\n".join(stamps) + "\n"
    for m in ("rgb", "semantic"):
        (dirs[m] / "timestamps.txt").write_text(text)
    (dirs["events"] / "timestamps.txt").write_text("\n".join(stamps[1:]) + "\n")
    (dirs["events"] / "boundary_timestamps.txt").write_text("\n".join(bounds) + "\n")
    return kinds
