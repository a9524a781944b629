"""Data stall: the share of the training step the loop spends waiting for its next batch, with
the default loader settings (2 workers, persistent, prefetching), in the real Trainer.

    .venv/bin/python benchmarks/bench_data_stall.py [--quick]

Two workloads: the default synthetic preset, and an EventScape-sized fixture written here in the
real on-disk layout (256x512 frames, about 10^5 events per sample, voxel grids computed in the
loader workers from raw events, no representation cache).
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


class TimedLoader:
    """Wraps a DataLoader; adds up how long each ``next()`` blocks (the first batch of an epoch
    excluded: worker start-up is paid once per run with persistent workers)."""

    def __init__(self, loader):
        self.loader, self.waited = loader, 0.0
        self.sampler = loader.sampler

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        iterator = iter(self.loader)
        index = 0
        while True:
            started = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            if index:
                self.waited += time.perf_counter() - started
            index += 1
            yield batch


def write_eventscape_fixture(root: Path, frames: int, height=256, width=512, events=100_000):
    """``frames`` labelled frames in EventScape's layout (Town01/sequence_0/{rgb,events,semantic})."""
    import cv2

    rng = np.random.default_rng(0)
    for split in ("Town01-03_train", "Town05_val"):  # the preset's split folders
        seq = root / split / "Town01" / "sequence_0"
        for modality in ("rgb", "events", "semantic"):
            (seq / modality / "data").mkdir(parents=True, exist_ok=True)
        for i in range(frames if split.endswith("train") else 2):
            stem = f"01_000_{i:04d}"
            cv2.imwrite(str(seq / "rgb" / "data" / f"{stem}_image.png"),
                        rng.integers(0, 255, (height, width, 3), np.uint8))
            cv2.imwrite(str(seq / "semantic" / "data" / f"{stem}_gt_labelIds.png"),
                        rng.integers(0, 13, (height, width), np.uint8))
            t = np.sort(rng.integers(0, 50_000, events)).astype(np.int64)
            np.savez(seq / "events" / "data" / f"{stem}_events.npz",
                     x=rng.integers(0, width, events).astype(np.uint16),
                     y=rng.integers(0, height, events).astype(np.uint16), t=t,
                     p=rng.integers(0, 2, events).astype(np.uint8))


def stall_share(overrides, steps: int) -> tuple:
    import torch

    from event_seg.data import build_data
    from event_seg.engine.trainer import Trainer
    from event_seg.engine.trial import Trial
    from event_seg.loggers.background import BackgroundLogging
    from event_seg.loggers.base import LoggerGroup
    from event_seg.models import build_model

    cfg = compose(["logger=none", "trainer.progress_bar=false", f"trainer.limit_batches={steps}",
                   *overrides])
    torch.manual_seed(0)
    data = build_data(cfg.dataset, cfg.trainer, cfg.paths.cache_dir, seed=cfg.seed,
                      splits=("train",))
    timed = TimedLoader(data.loaders["train"])
    data.loaders["train"] = timed
    model = build_model(cfg.model, data.info)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, model, data, BackgroundLogging(LoggerGroup([])),
                          Trial(name="bench", timestamp="bench", run_dir=Path(tmp)))
        trainer.train_one_epoch(1)  # warm-up: workers start, caches fill
        timed.waited = 0.0
        started = time.perf_counter()
        trainer.train_one_epoch(2)
        epoch = time.perf_counter() - started
    return timed.waited, epoch, cfg


def run(quick: bool = False) -> Result:
    rows, shares = [], []
    steps = 4 if quick else 8
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "EventScape"
        write_eventscape_fixture(root, frames=2 * steps + 2)
        workloads = {
            "synthetic preset (96x192, batch 8)": [],
            "EventScape-sized (256x512, 1e5 events, batch 4)": [
                "dataset=event_scapes", f"dataset.root={root}", "dataset.height=256",
                "dataset.width=512", "dataset.representation_cache=false",
                "trainer.batch_size=4"],
        }
        for name, overrides in workloads.items():
            waited, epoch, cfg = stall_share(overrides, steps)
            shares.append(waited / epoch)
            rows.append([name, cfg.trainer.num_workers, steps, epoch, waited, 100 * waited / epoch])
    return Result(
        question="Data stall: time the training loop waits for batches (default workers)",
        header=["workload", "workers", "steps", "epoch (s)", "waiting (s)", "waiting (%)"],
        rows=rows, ratio_name="largest waiting share", ratio=max(shares), target="<= 0.05")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick).print()
