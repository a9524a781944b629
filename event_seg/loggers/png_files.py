"""Prediction panels as plain PNG files in a folder (what ``event-seg-evaluate`` leaves behind)."""

from __future__ import annotations

from pathlib import Path

from .base import Logger


class PanelFiles(Logger):
    """Writes each batch's grid (RGB | events | ground truth | prediction, one row a sample) to
    ``<folder>/<stage>_batch_<NN>.png``, reusing the bytes the panels already encoded."""

    name = "png"

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written: list = []

    def log_images(self, stage, batch_idx, panels, epoch) -> None:
        path = self.folder / f"{stage}_batch_{batch_idx:02d}.png"
        path.write_bytes(panels.png("grid"))
        self.written.append(path)
