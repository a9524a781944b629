"""GPU throughput of the training step at 256x512 (run by benchmarks/gpu.sh on a CUDA machine).

For fp32, bf16 autocast, bf16 + channels-last and bf16 + channels-last + torch.compile: images per
second of full training steps (forward, loss, backward, clipping, AdamW) through the Trainer's
own step code on batches already on the GPU, GPU busy share while the real Trainer trains an
epoch from its data loader (nvidia-smi sampled every 100 ms), and peak memory.

    .venv/bin/python benchmarks/bench_gpu.py [--batch 16] [--steps 30] [--no-compile]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_loop_overhead import compose  # noqa: E402
from common import Result, machine  # noqa: E402

MODES = {
    "fp32": ["trainer.precision=fp32", "trainer.memory_format=contiguous"],
    "bf16": ["trainer.precision=bf16", "trainer.memory_format=contiguous"],
    "bf16+channels_last": ["trainer.precision=bf16", "trainer.memory_format=channels_last"],
    "bf16+channels_last+compile": ["trainer.precision=bf16", "trainer.memory_format=channels_last",
                                   "trainer.compile=true"],
}


class Utilisation:
    """Samples nvidia-smi's GPU utilisation while running (mean over the samples)."""

    def __enter__(self):
        self.proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
             "-lms", "100", "-i", "0"], stdout=subprocess.PIPE, text=True)
        self.samples = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            if line.strip().isdigit():
                self.samples.append(int(line))

    def __exit__(self, *exc):
        self.proc.terminate()
        self.thread.join(timeout=2)

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples) / 100 if self.samples else float("nan")


def measure(mode: str, batch: int, steps: int, data_root: Path):
    import tempfile

    import torch

    from event_seg.data import build_data
    from event_seg.engine.trainer import Trainer
    from event_seg.engine.trial import Trial
    from event_seg.loggers.background import BackgroundLogging
    from event_seg.loggers.base import LoggerGroup
    from event_seg.models import build_model

    cfg = compose(["logger=none", "trainer.progress_bar=false", "trainer.device=cuda",
                   f"trainer.batch_size={batch}", "dataset=event_scapes",
                   f"dataset.root={data_root}", "dataset.height=256", "dataset.width=512",
                   "dataset.representation_cache=false", "trainer.num_workers=8",
                   f"trainer.limit_batches={steps}", *MODES[mode]])
    data = build_data(cfg.dataset, cfg.trainer, cfg.paths.cache_dir, seed=0, splits=("train",))
    model = build_model(cfg.model, data.info)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, model, data, BackgroundLogging(LoggerGroup([])),
                          Trial(name="gpu", timestamp="gpu", run_dir=Path(tmp)))
        # Throughput of the step alone: one batch, resident on the GPU, replayed.
        resident = {k: v.cuda() if torch.is_tensor(v) else v
                    for k, v in next(iter(data.loaders["train"])).items()}
        data.loaders["train"], loader = [resident] * steps, data.loaders["train"]
        trainer.train_one_epoch(1)  # warm-up (and compilation)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        trainer.train_one_epoch(2)
        torch.cuda.synchronize()
        step_rate = batch * steps / (time.perf_counter() - started)
        peak = torch.cuda.max_memory_allocated() / 2 ** 30
        # Busy share with the real loader feeding the GPU.
        data.loaders["train"] = loader
        with Utilisation() as util:
            trainer.train_one_epoch(3)
            torch.cuda.synchronize()
    return step_rate, util.mean, peak


def main() -> int:
    import torch

    from bench_data_stall import write_eventscape_fixture

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "RESULTS_GPU.md"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU visible: nothing to measure", file=sys.stderr)
        return 2
    import tempfile

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "EventScape"
        write_eventscape_fixture(root, frames=args.batch * 2 + 2)
        for mode in MODES:
            if args.no_compile and "compile" in mode:
                continue
            rate, busy, peak = measure(mode, args.batch, args.steps, root)
            rows[mode] = [mode, rate, 100 * busy, peak]
            print(f"{mode:28s} {rate:8.1f} img/s  busy {100 * busy:5.1f}%  peak {peak:.2f} GiB",
                  flush=True)
    result = Result(
        question=f"GPU training step, Unet/resnet18, 256x512, batch {args.batch}",
        header=["mode", "images/s", "GPU busy (%)", "peak memory (GiB)"],
        rows=list(rows.values()), ratio_name="bf16 / fp32 images per second",
        ratio=rows["bf16"][1] / rows["fp32"][1], target=">= 2")
    result.print()
    Path(args.out).write_text(f"# GPU results\n\nMachine: {machine()}.\n\n{result.table()}\n\n"
                              f"**{result.verdict()}**\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
