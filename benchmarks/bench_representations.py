"""Event representations: our voxel grid and histogram against tonic's numpy functions on the
same events (uniform random, 640x480, 5 bins), with a check that ours equals the rpg formula.

    .venv/bin/python benchmarks/bench_representations.py [--quick]

tonic (the `bench` extra) differs from the rpg convention by its time scaling (B instead of
B - 1), so correctness is checked against the formula written out in float64, not against tonic.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import Result, best_of  # noqa: E402

WIDTH, HEIGHT, BINS = 640, 480, 5


def make_events(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"x": rng.integers(0, WIDTH, n).astype(np.uint16),
            "y": rng.integers(0, HEIGHT, n).astype(np.uint16),
            "t": np.sort(rng.integers(0, 50_000, n)).astype(np.int64),  # 50 ms in microseconds
            "p": rng.integers(0, 2, n).astype(np.uint8)}


def rpg_formula(ev: dict) -> np.ndarray:
    """The rpg voxel grid written out plainly in float64 (np.add.at, no tricks)."""
    t = ev["t"].astype(np.float64)
    tn = (BINS - 1) * (t - t.min()) / (t.max() - t.min())
    pol = np.where(ev["p"] > 0, 1.0, -1.0)
    grid = np.zeros((BINS, HEIGHT, WIDTH))
    x, y = ev["x"].astype(np.int64), ev["y"].astype(np.int64)
    for b in range(BINS):
        w = np.maximum(0.0, 1.0 - np.abs(tn - b))
        np.add.at(grid[b], (y, x), pol * w)
    return grid


def as_tonic(ev: dict) -> np.ndarray:
    out = np.zeros(len(ev["t"]), dtype=[("x", "<i2"), ("y", "<i2"), ("t", "<i8"), ("p", "<i1")])
    for k in "xytp":
        out[k] = ev[k]
    return out


def run(quick: bool = False) -> Result:
    import tonic.functional as tf

    from event_seg.data.events import histogram, voxel_grid

    sizes = [100_000, 1_000_000] if quick else [100_000, 1_000_000, 5_000_000]
    rows, voxel_ratios, max_error = [], [], 0.0
    for n in sizes:
        ev = make_events(n)
        repeats = 3 if n >= 5_000_000 else 5
        # tonic rewrites polarity in place: each call gets its own copy, made outside the clock.
        copies = [as_tonic(ev) for _ in range(repeats)]
        ours_v = best_of(lambda: voxel_grid(ev["x"], ev["y"], ev["t"], ev["p"], BINS, HEIGHT,
                                            WIDTH), repeats)
        tonic_v = best_of(lambda: tf.to_voxel_grid_numpy(copies.pop(), (WIDTH, HEIGHT, 2), BINS),
                          repeats)
        copies = [as_tonic(ev) for _ in range(repeats)]
        ours_h = best_of(lambda: histogram(ev["x"], ev["y"], ev["p"], HEIGHT, WIDTH), repeats)
        tonic_h = best_of(lambda: tf.to_frame_numpy(copies.pop(), (WIDTH, HEIGHT, 2),
                                                    n_time_bins=1), repeats)
        if n <= 1_000_000:
            got = voxel_grid(ev["x"], ev["y"], ev["t"], ev["p"], BINS, HEIGHT, WIDTH)
            max_error = max(max_error, float(np.abs(got - rpg_formula(ev)).max()))
        voxel_ratios.append(tonic_v / ours_v)
        rows.append([f"{n:,}", n / ours_v / 1e6, n / tonic_v / 1e6, tonic_v / ours_v,
                     n / ours_h / 1e6, n / tonic_h / 1e6, tonic_h / ours_h])
    return Result(
        question="Event representations: ours vs tonic (640x480, 5 bins)",
        header=["events", "voxel ours (M ev/s)", "voxel tonic (M ev/s)", "voxel speed-up",
                "histogram ours (M ev/s)", "histogram tonic (M ev/s)", "histogram speed-up"],
        rows=rows, ratio_name="voxel grid speed-up over tonic (smallest over sizes)",
        ratio=min(voxel_ratios), target=">= 10",
        note=f"largest difference from the rpg formula (float64): {max_error:.2e}",
        extra={"max_abs_error_vs_formula": max_error})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick).print()
