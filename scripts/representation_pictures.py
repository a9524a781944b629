"""Draws the four event representations of one window side by side: docs/representations.png.

    .venv/bin/python scripts/representation_pictures.py [out.png] [--seed 7] [--tau-ms 50]

One synthetic street scene (event_seg/data/synthetic.py) is rendered and fed to the ESIM-style
simulator for the 100 ms window before its fourth labelled frame (10 fps, 8 sub-frames, as the
built-in dataset is made); the window's events go through compact_events, as a reader hands them
over, and the numpy reference functions build each representation (what the device builds per
batch). One row per representation, one tile per channel:

- voxel grid and MDES (signed sums of polarity): red positive, blue negative, on white, scaled
  per row by the 99th percentile of |value|;
- histogram and time surface (one channel per polarity, negative then positive): blue for the
  negative channel, red for the positive one; the histogram scaled like the others, the time
  surface on its own absolute scale (1 = an event at the window's end).

Colour strength is the square root of the scaled value, so that single events stay visible at
this size; the tensors themselves are as the model gets them without ``normalize_events``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FRAME_RATE, SUBFRAMES, LABEL_INDEX = 10.0, 8, 3  # the window ends at the 4th labelled frame
HEIGHT, WIDTH = 96, 192                         # the synthetic preset's frame size
SUPERSAMPLE = 2                                 # smooth edges, as the generator renders them
RED, BLUE = np.array([220, 40, 40], np.float32), np.array([40, 90, 230], np.float32)
LABEL_WIDTH, CAPTION, GAP = 150, 14, 4


def simulate_window(seed: int):
    """The events (x, y, t ns, p) of the window before labelled frame LABEL_INDEX, and the
    frame at its end."""
    import cv2

    from event_seg.data.simulator import EventSimulator, Events
    from event_seg.data.synthetic import Scene

    scene = Scene(np.random.default_rng(seed), HEIGHT, WIDTH)

    def frame(t_ns: int) -> np.ndarray:
        big, _ = scene.render(t_ns * 1e-9, SUPERSAMPLE)
        return cv2.resize(big, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)  # the 2x2 mean

    frame_ns = int(round(1e9 / FRAME_RATE))
    sim = EventSimulator(frame(0), contrast_threshold=0.25, threshold_sigma=0.03,
                         noise_rate=0.05, seed=seed)
    step_ns = frame_ns // SUBFRAMES
    window = []
    # The simulator runs from t = 0 so that its reference levels have settled; only the last
    # window's events are kept.
    for j in range(1, LABEL_INDEX * SUBFRAMES + 1):
        events = sim.step(frame(j * step_ns), (j - 1) * step_ns, j * step_ns)
        if j > (LABEL_INDEX - 1) * SUBFRAMES:
            window.append(events)
    events = Events.concatenate(window)
    return events, np.clip(frame(LABEL_INDEX * frame_ns), 0, 255).astype(np.uint8)


def _paint(strength: np.ndarray, color) -> np.ndarray:
    strength = np.sqrt(np.clip(strength, 0, 1))[..., None]
    tile = (255 * (1 - strength) + color * strength).astype(np.uint8)
    tile[[0, -1], :] = tile[:, [0, -1]] = 190  # a thin frame: white tiles on a white page
    return tile


def signed_tile(values: np.ndarray, scale: float) -> np.ndarray:
    color = np.where(values[..., None] > 0, RED, BLUE)
    return _paint(np.abs(values) / max(scale, 1e-6), color)


def polarity_tile(values: np.ndarray, scale: float, color: np.ndarray) -> np.ndarray:
    return _paint(values / max(scale, 1e-6), color)


def robust_scale(tensor: np.ndarray) -> float:
    values = np.abs(tensor[tensor != 0])
    return float(np.percentile(values, 99)) if values.size else 1.0


def text(img: np.ndarray, line: str, x: int, y: int, size: float = 0.38) -> None:
    import cv2

    cv2.putText(img, line, (x, y), cv2.FONT_HERSHEY_SIMPLEX, size, (30, 30, 30), 1, cv2.LINE_AA)


def row_image(label: list, tiles: list, captions: list, columns: int) -> np.ndarray:
    """One representation: its name on the left, a captioned tile per channel."""
    height = CAPTION + HEIGHT
    img = np.full((height, LABEL_WIDTH + columns * (WIDTH + GAP), 3), 255, np.uint8)
    for i, line in enumerate(label):
        text(img, line, 4, CAPTION + 16 + 15 * i, 0.42 if i == 0 else 0.36)
    for c, (tile, caption) in enumerate(zip(tiles, captions)):
        x = LABEL_WIDTH + c * (WIDTH + GAP)
        img[CAPTION:, x:x + WIDTH] = tile
        text(img, caption, x + 2, CAPTION - 3, 0.36)
    return img


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(REPO / "docs" / "representations.png"))
    parser.add_argument("--seed", type=int, default=7, help="the synthetic scene")
    parser.add_argument("--bins", type=int, default=5, help="voxel-grid bins and MDES channels")
    parser.add_argument("--tau-ms", type=float, default=50.0, help="time-surface decay")
    args = parser.parse_args()

    import cv2

    from event_seg.data.events import compact_events, events_to_tensor, tau_in_ticks

    raw, rgb = simulate_window(args.seed)
    # As a reader hands them over: int16 coordinates, offsets from the window's first stamp in
    # the simulator's unit (ns), polarity -1/+1.
    events = compact_events(raw.x, raw.y, raw.t, raw.p, HEIGHT, WIDTH, "simulated window")
    span_ms = (int(raw.t.max()) - int(raw.t.min())) * 1e-6
    bins, tau = args.bins, tau_in_ticks(args.tau_ms, "ns")

    def build(representation: str, normalize: bool = False) -> np.ndarray:
        return events_to_tensor(events, representation, bins, HEIGHT, WIDTH,
                                normalize=normalize, tau=tau)

    columns = max(bins, 2)
    rows = [row_image(["frame at the", "window's end", f"{len(raw.t)} events,",
                       f"{span_ms:.0f} ms window"], [rgb], ["RGB frame"], columns)]
    grid = build("voxel_grid")
    scale = robust_scale(grid)
    rows.append(row_image(["voxel_grid", f"{bins} bins", "signed, bilinear", "in time"],
                          [signed_tile(g, scale) for g in grid],
                          [f"bin {b}" + (" (oldest)" if b == 0 else " (newest)"
                                         if b == bins - 1 else "") for b in range(bins)],
                          columns))
    counts = build("histogram")
    scale = robust_scale(counts)
    rows.append(row_image(["histogram", "2 channels", "counts per", "polarity"],
                          [polarity_tile(counts[0], scale, BLUE),
                           polarity_tile(counts[1], scale, RED)],
                          ["negative", "positive"], columns))
    surface = build("time_surface")
    rows.append(row_image(["time_surface", "2 channels", "exp(-age / tau)",
                           f"tau {args.tau_ms:g} ms"],
                          [polarity_tile(surface[0], 1.0, BLUE),
                           polarity_tile(surface[1], 1.0, RED)],
                          ["negative (1 = at the end)", "positive"], columns))
    stack = build("mdes")
    scale = robust_scale(stack)
    rows.append(row_image(["mdes", f"{bins} channels", "nested windows", "ending at the end"],
                          [signed_tile(s, scale) for s in stack],
                          ["k=0: whole window"] + [f"k={k}: last 1/{2 ** k}"
                                                   for k in range(1, bins)], columns))
    gap = np.full((GAP, rows[0].shape[1], 3), 255, np.uint8)
    picture = np.concatenate([part for r in rows for part in (r, gap)][:-1])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), picture[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"{out}: {picture.shape[1]}x{picture.shape[0]}, {out.stat().st_size / 1024:.0f} KiB, "
          f"{len(raw.t)} events over {span_ms:.1f} ms")


if __name__ == "__main__":
    main()
