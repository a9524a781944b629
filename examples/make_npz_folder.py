"""Writes a small demo dataset in the layout examples/npz_folder.py reads, to try the reader:

    python examples/make_npz_folder.py /tmp/npz_demo
    python -m event_seg.train hydra.searchpath=[file://examples/conf] dataset=npz_folder \\
        dataset.root=/tmp/npz_demo model=tiny_net

Each sample is a disc moving right over a gray background: the label marks the disc (class 1),
the events fire where it arrives (p=1) and where it leaves (p=0), stamps in microseconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def write_sample(folder: Path, name: str, rng: np.random.Generator, height: int = 64,
                 width: int = 96, rgb: bool = True) -> None:
    import cv2

    yy, xx = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.25, 0.6) * width
    radius, step = rng.uniform(0.12, 0.25) * height, 3.0
    before = (yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2
    after = (yy - cy) ** 2 + (xx - cx - step) ** 2 < radius ** 2
    on_y, on_x = np.nonzero(after & ~before)     # the disc arrives: brighter
    off_y, off_x = np.nonzero(before & ~after)   # the disc leaves: darker
    x = np.concatenate([on_x, off_x]).astype(np.uint16)
    y = np.concatenate([on_y, off_y]).astype(np.uint16)
    p = np.concatenate([np.ones(len(on_x)), np.zeros(len(off_x))]).astype(np.uint8)
    t = np.sort(rng.integers(0, 50_000, len(x))).astype(np.int64)  # a 50 ms window, in us
    for sub in ("events", "labels", "rgb"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    np.savez(folder / "events" / f"{name}.npz", x=x, y=y, t=t, p=p)
    cv2.imwrite(str(folder / "labels" / f"{name}.png"), after.astype(np.uint8))
    if rgb:
        image = np.full((height, width, 3), 90, np.uint8)
        image[after] = (40, 30, 200)  # BGR on disk: a red disc
        cv2.imwrite(str(folder / "rgb" / f"{name}.png"), image)


def main(root: str, per_split: int = 8) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for i in range(per_split):
            write_sample(Path(root) / split, f"{i:04d}", rng)
    print(f"wrote {3 * per_split} samples to {root}/{{train,val,test}}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/make_npz_folder.py <folder>")
    main(sys.argv[1])
