"""Simulator: events generated per second by the ESIM-style simulator on a moving textured
scene, and the time to build the default synthetic dataset from nothing (into a temp cache).

    .venv/bin/python benchmarks/bench_simulator.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_loop_overhead import compose  # noqa: E402
from common import Result  # noqa: E402


def moving_texture(height: int, width: int, frames: int, seed: int = 0):
    """A smooth random texture sliding right by one pixel per frame, as uint8 RGB."""
    import cv2

    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (height, width + frames)).astype(np.float32),
                               (0, 0), 3)
    texture = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return [np.repeat(texture[:, k:k + width, None], 3, axis=2) for k in range(frames)]


def simulate(height: int, width: int, frames: int) -> tuple:
    from event_seg.data.simulator import EventSimulator

    images = moving_texture(height, width, frames)
    sim = EventSimulator(images[0], noise_rate=0.05, seed=0)
    started, count = time.perf_counter(), 0
    for k, image in enumerate(images[1:], start=1):
        count += len(sim.step(image, (k - 1) * 12_500_000, k * 12_500_000))
    return count, time.perf_counter() - started


def run(quick: bool = False) -> Result:
    from event_seg.data.build import resolve_root

    rows = []
    for height, width in ((96, 192), (256, 512)):
        count, seconds = simulate(height, width, 40 if quick else 100)
        rows.append([f"simulate {height}x{width}", f"{count:,} events", seconds, count / seconds / 1e6])
    rate = rows[-1][-1]
    cfg = compose([] if not quick else ["debug=smoke"])
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        resolve_root(cfg.dataset, cache, progress=False)
        build = time.perf_counter() - started
    s = cfg.dataset.synthetic
    frames = (s.train_sequences + s.val_sequences + s.test_sequences) * s.frames_per_sequence
    rows.append([f"build the {'smoke' if quick else 'default'} synthetic set "
                 f"({frames} frames, {cfg.dataset.height}x{cfg.dataset.width})", "", build, ""])
    return Result(
        question="Simulator throughput and synthetic set build time",
        header=["work", "output", "seconds", "M events/s"], rows=rows,
        ratio_name="simulator M events/s at 256x512", ratio=rate, target="",
        extra={"build_s": build})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick).print()
