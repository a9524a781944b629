"""GPU throughput of training at EventScape size, step alone against the real data path
(run by benchmarks/gpu.sh on a CUDA machine; ``--device cpu --quick`` is a smoke check only).

Writes an EventScape-layout synthetic set (256x512 frames, ~10^5 events per sample, enough
frames for ``--steps`` full training batches), packs it with event_seg.prepare (the prepared
cache), then measures, every figure over ``--steps`` (>= 100) counted steps:

- first epoch / second epoch of ``Trainer.fit`` (cudnn autotuning and worker start-up are paid
  in the first; the last, partial validation batch is padded, so no shape is tuned twice);
- ``voxel_grid_batch`` in G events/s: 16 x 10^5 events at 256x512 and 16 x 10^6 at 440x640,
  float (atomic adds) and deterministic (fixed point);
- loader alone: samples/s of the real DataLoader with ``--workers`` workers, from the raw files
  and from the prepared cache;
- for fp32, bf16, bf16 + channels-last, bf16 + channels-last + torch.compile: the training step
  alone (one batch built once on the GPU by the Trainer's own input builder, then
  ``Trainer.train_one_epoch`` replaying it: forward, loss, backward, clipping, AdamW, panels
  off), and end to end (``Trainer.train_one_epoch`` over the real loader, raw files and prepared
  cache); end-to-end / step-only is the share of the time the GPU does not wait for data.

    python benchmarks/bench_gpu.py [--batch 16] [--steps 100] [--workers 16] [--budget-s 270]
                                   [--no-compile] [--modes fp32,bf16] [--out FILE]
    python benchmarks/bench_gpu.py --device cpu --quick      # smoke check: NOT a GPU figure

Also: the Trainer's input builder (copy to the device + voxel grid) on one real batch.
Figures are printed beside the issue's targets. The order is fixed, compile last; a mode is
skipped (and said so) when ``--budget-s`` would be overrun, a failing section is reported and
the next one runs, and the results file is rewritten after every section, so a killed run keeps
what it had. On a CPU, or with ``--quick``, the figures are marked as not GPU figures and go to
a temporary file unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_loop_overhead import compose  # noqa: E402
from common import Result, machine  # noqa: E402

# The targets (issue 12, item 7).
TARGET_E2E = 0.9          # end-to-end >= 0.9 x step-only with 16 workers
TARGET_VOXEL = 2.0        # voxel_grid_batch >= 2 G events/s
TARGET_FIRST_EPOCH = 2.0  # first epoch <= 2 x a later one
TARGET_BF16 = 2.0         # bf16 step >= 2 x fp32 step (the earlier target of this benchmark)

MODES = {
    "fp32": ["trainer.precision=fp32", "trainer.memory_format=contiguous"],
    "bf16": ["trainer.precision=bf16", "trainer.memory_format=contiguous"],
    "bf16+channels_last": ["trainer.precision=bf16", "trainer.memory_format=channels_last"],
    "bf16+channels_last+compile": ["trainer.precision=bf16", "trainer.memory_format=channels_last",
                                   "trainer.compile=true"],
}
# bf16 autocast needs CUDA in the Trainer: the CPU smoke check runs the fp32 variants.
CPU_MODES = {
    "fp32": ["trainer.precision=fp32", "trainer.memory_format=contiguous"],
    "fp32+channels_last": ["trainer.precision=fp32", "trainer.memory_format=channels_last"],
    "fp32+channels_last+compile": ["trainer.precision=fp32",
                                   "trainer.memory_format=channels_last", "trainer.compile=true"],
}
COMPILE_GUESS_S = 150     # budget held back for a compile mode before its first figure
TRAIN_FOLDER, VAL_FOLDER = "Town01-03_train", "Town05_val"


# -------------------------------------------------------------------------------------------
# The synthetic set, in EventScape's layout (what event_seg.data.event_scapes reads)
# -------------------------------------------------------------------------------------------

def _write_frame(job) -> None:
    """One frame: RGB and label PNGs, the window's events .npz. Image content is smooth (upscaled
    noise) and labels are blocky, so the PNGs compress and decode about like real ones."""
    import cv2
    import numpy as np

    seq, index, height, width, events, seed = job
    rng = np.random.default_rng(seed)
    stem = f"01_000_{index:04d}"
    small = rng.integers(0, 256, (height // 8, width // 8, 3), np.uint8)
    rgb = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    rgb = cv2.add(rgb, rng.integers(0, 16, rgb.shape, np.uint8))
    cv2.imwrite(str(seq / "rgb" / "data" / f"{stem}_image.png"), rgb)
    tags = rng.integers(0, 13, (height // 16, width // 16), np.uint8)
    cv2.imwrite(str(seq / "semantic" / "data" / f"{stem}_gt_labelIds.png"),
                cv2.resize(tags, (width, height), interpolation=cv2.INTER_NEAREST))
    np.savez(seq / "events" / "data" / f"{stem}_events.npz",
             x=rng.integers(0, width, events).astype(np.uint16),
             y=rng.integers(0, height, events).astype(np.uint16),
             t=np.sort(rng.integers(0, 50_000_000, events)).astype(np.int64),  # 50 ms in ns
             p=rng.integers(0, 2, events).astype(np.uint8))


def write_eventscape(root: Path, train: int, val: int, height: int, width: int, events: int,
                     processes: int) -> None:
    """``train`` and ``val`` frames under <root>/{Town01-03_train,Town05_val}/Town01/sequence_0."""
    import multiprocessing

    jobs = []
    for folder, frames in ((TRAIN_FOLDER, train), (VAL_FOLDER, val)):
        seq = root / folder / "Town01" / "sequence_0"
        for modality in ("rgb", "events", "semantic"):
            (seq / modality / "data").mkdir(parents=True, exist_ok=True)
        base = 0 if folder == TRAIN_FOLDER else 1_000_000  # a seed per frame, fixed
        jobs += [(seq, i, height, width, events, base + i) for i in range(frames)]
    # Forked before torch is imported here (nothing in this process has threads yet).
    with multiprocessing.get_context("fork").Pool(max(1, processes)) as pool:
        pool.map(_write_frame, jobs, chunksize=8)


# -------------------------------------------------------------------------------------------
# Measuring
# -------------------------------------------------------------------------------------------

class Counted:
    """The real loader, counting the batches and samples it hands out and the seconds the
    training loop spends waiting in ``next()`` (the first batch of the epoch included)."""

    def __init__(self, loader):
        self.loader = loader
        self.sampler = loader.sampler  # the Trainer sets the epoch on it
        self.batches = self.samples = 0
        self.waited = 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        started = time.perf_counter()
        iterator = iter(self.loader)
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.waited += time.perf_counter() - started
            self.batches += 1
            self.samples += int(batch["mask"].shape[0])
            yield batch
            started = time.perf_counter()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Bench:
    """Shared settings, the clock against the budget, and the results so far."""

    def __init__(self, args):
        self.args = args
        self.started = args.t0
        self.sections = []   # markdown blocks, in order
        self.targets = []    # (what, value, target text, met or None)
        self.notes = []
        self.epoch = 100     # epoch numbers handed to train_one_epoch (sampler order only)
        self.slowest_epoch_s = 0.0  # the slowest timed epoch so far (budget estimates)
        self.cpu_batch = None       # one loader batch, for the step-only figures
        self.loader_rates = {}      # samples/s of the loader alone, per source
        self.failed = False         # a section failed (reported in the notes)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.args.budget_s - self.elapsed()

    def next_epoch(self) -> int:
        self.epoch += 1
        return self.epoch

    def overrides(self, cached: bool, extra=()) -> list:
        a = self.args
        return ["logger=none", "trainer.progress_bar=false", f"trainer.device={a.device}",
                f"trainer.batch_size={a.batch}", f"trainer.num_workers={a.workers}",
                "trainer.vis.num_batches=0", "trainer.inference.enabled=false",
                "trainer.epochs=100", "dataset=event_scapes", f"dataset.root={a.root}",
                f"dataset.height={a.height}", f"dataset.width={a.width}",
                # Val and test share the one evaluation folder written here.
                f"dataset.splits.test={VAL_FOLDER}",
                f"dataset.representation_cache={str(cached).lower()}",
                f"paths.cache_dir={a.cache_dir}", *extra]

    def target(self, what: str, value: float, op: str, goal: float) -> None:
        met = None if math.isnan(value) else (value >= goal if op == ">=" else value <= goal)
        self.targets.append((what, value, f"{op} {goal:g}", met))
        print(f"  target: {what} = {value:.3f} (issue target {op} {goal:g}: "
              f"{self.word(met)})", flush=True)

    def verdict(self, result: Result) -> str:
        if self.args.is_gpu_figure or not result.target:
            return result.verdict()
        return (f"{result.ratio_name} = {result.ratio:.3f} (target {result.target}: n/a, "
                f"not a GPU figure)")

    def word(self, met, markdown: bool = False) -> str:
        if not self.args.is_gpu_figure:
            return "n/a: not a GPU figure"
        if met is False:
            return "**NOT met**" if markdown else "NOT met"
        return "met" if met else "not measured"

    def add(self, title: str, body: str) -> None:
        self.sections.append(f"## {title}\n\n{body}\n")
        print(f"\n## {title}\n\n{body}\n", flush=True)
        self.write()

    def write(self, final: bool = False) -> None:
        a = self.args
        head = ["# GPU results" if a.is_gpu_figure else
                "# NOT GPU figures: smoke check of benchmarks/bench_gpu.py", ""]
        if not a.is_gpu_figure:
            head += [f"**{a.not_gpu_reason}. These numbers say nothing about GPU throughput "
                     f"and answer none of the issue's targets.**", ""]
        if not final:
            head += ["*Partial: the run had not finished when this was written.*", ""]
        head += [f"Machine: {a.machine}.", "",
                 f"Settings: Unet/resnet18, rgb+events (5-bin voxel grid, normalised), "
                 f"{a.height}x{a.width}, batch {a.batch}, {a.steps} timed steps per figure, "
                 f"{a.workers} loader workers; synthetic EventScape-layout set of "
                 f"{a.train_frames} training + {a.val_frames} validation frames, "
                 f"{a.events:,} events per sample. Written by `benchmarks/bench_gpu.py` in "
                 f"{self.elapsed():.0f} s (budget {a.budget_s:.0f} s).", ""]
        if self.targets:
            head += ["## Targets (issue 12, item 7)", "", "| figure | value | target | |",
                     "| --- | --- | --- | --- |"]
            for what, value, target, met in self.targets:
                head.append(f"| {what} | {value:.3f} | {target} | {self.word(met, True)} |")
            head.append("")
        notes = [f"- {n}" for n in self.notes]
        text = "\n".join(head) + "\n" + "\n".join(self.sections)
        if notes:
            text += "\n## Notes\n\n" + "\n".join(notes) + "\n"
        Path(a.out).write_text(text)


def build(bench: Bench, cached: bool, extra=(), splits=("train",)):
    from event_seg.data import build_data

    cfg = compose(bench.overrides(cached, extra))
    data = build_data(cfg.dataset, cfg.trainer, cfg.paths.cache_dir, seed=0, splits=splits)
    if cached:  # every sample must come from the prepared cache, not from the raw files
        reader = data.loaders["train"].dataset.dataset
        assert reader.cache is not None, "the prepared cache was not found"
        assert reader.cache.get(reader, 0) is not None, "the prepared cache misses sample 0"
    return cfg, data


def make_trainer(cfg, data, run_dir: Path):
    import torch

    from event_seg.engine.trainer import Trainer
    from event_seg.engine.trial import Trial
    from event_seg.loggers.background import BackgroundLogging
    from event_seg.loggers.base import LoggerGroup
    from event_seg.models import build_model

    torch.manual_seed(0)
    model = build_model(cfg.model, data.info)
    return Trainer(cfg, model, data, BackgroundLogging(LoggerGroup([])),
                   Trial(name="gpu", timestamp="gpu", run_dir=run_dir))


def timed_epoch(bench: Bench, trainer, train_loader, steps: int) -> tuple:
    """``Trainer.train_one_epoch`` over ``train_loader`` for ``steps`` steps, synchronised on
    both ends: (steps done, seconds). The trainer's data is restored afterwards."""
    from event_seg.data.build import DataBundle

    real_data, real_steps = trainer.data, trainer.steps_per_epoch
    trainer.data = DataBundle(trainer.info, {"train": train_loader})
    trainer.steps_per_epoch = steps
    try:
        before = trainer.global_step
        sync(trainer.device)
        started = time.perf_counter()
        trainer.train_one_epoch(bench.next_epoch())
        sync(trainer.device)
        seconds = time.perf_counter() - started
    finally:
        trainer.data, trainer.steps_per_epoch = real_data, real_steps
    return trainer.global_step - before, seconds


def step_only(bench: Bench, trainer, cpu_batch, built, steps: int) -> tuple:
    """``Trainer.train_one_epoch`` replaying one batch already built on the device: the
    Trainer's own step (forward, loss, backward, clipping, optimizer, schedule, deferred
    non-finite check), without the loader and without building the input."""
    real_inputs = trainer.inputs
    trainer.inputs = lambda batch, pad=False: built
    try:
        done, seconds = timed_epoch(bench, trainer, [cpu_batch] * steps, steps)
    finally:
        trainer.inputs = real_inputs
    assert done == steps, f"timed {done} steps, expected {steps}"
    return done * built.samples, seconds


def end_to_end(bench: Bench, trainer, loader) -> tuple:
    """``Trainer.train_one_epoch`` over the real loader: (samples, seconds, waiting seconds)."""
    counted = Counted(loader)
    done, seconds = timed_epoch(bench, trainer, counted, len(loader))
    steps, batch = bench.args.steps, bench.args.batch
    assert done == counted.batches == steps, (done, counted.batches, steps)
    assert counted.samples == steps * batch, (counted.samples, steps * batch)
    return counted.samples, seconds, counted.waited


# -------------------------------------------------------------------------------------------
# The sections
# -------------------------------------------------------------------------------------------

def section_prepare(bench: Bench) -> None:
    from event_seg.prepare import prepare

    a = bench.args
    started = time.perf_counter()
    done = prepare(compose(bench.overrides(True)))
    seconds = time.perf_counter() - started
    a.prepare_s = seconds
    counts = done["train"]
    bench.notes.append(
        f"Data: written in {a.generate_s:.1f} s with {a.gen_processes} processes; the prepared "
        f"cache (event_seg.prepare, {a.workers} workers) took {seconds:.1f} s: "
        f"{counts['samples']} training samples, {counts['raw_events']} stored as raw events, "
        f"{counts['dense_events']} as float16 grids, {counts['bytes'] / 2 ** 20:.0f} MiB.")


def section_epochs(bench: Bench) -> None:
    """Trainer.fit for two epochs (train + validation each), the device's default precision and
    layout, prepared cache: epoch 1 time / epoch 2 time. Runs first, in a fresh process state,
    so the first epoch pays what a real run's first epoch pays."""
    a = bench.args
    cfg, data = build(bench, True, ["trainer.epochs=2", "trainer.precision=auto",
                                    "trainer.memory_format=auto"], splits=("train", "val"))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(cfg, data, Path(tmp))
        trainer.fit()
        times = list(trainer.epoch_times)
        desc = f"{trainer.precision}, {'channels-last' if trainer.channels_last else 'contiguous'}"
        del trainer
    del data
    import gc

    gc.collect()  # the persistent workers of both loaders go now
    assert len(times) == 2, times
    ratio = times[0] / times[1]
    val_batches = math.ceil(a.val_frames / a.batch)
    result = Result(
        question="", header=["epoch", "seconds", "train steps", "val batches (last partial)"],
        rows=[[1, times[0], a.steps, val_batches], [2, times[1], a.steps, val_batches]],
        ratio_name="epoch 1 / epoch 2", ratio=ratio, target=f"<= {TARGET_FIRST_EPOCH:g}")
    bench.target("first epoch / second epoch (Trainer.fit)", ratio, "<=", TARGET_FIRST_EPOCH)
    bench.add("First epoch against a later one",
              f"`Trainer.fit`, 2 epochs, {desc}, no compile, prepared cache, {a.workers} "
              f"workers (started in epoch 1, persistent). Validation has {a.val_frames} frames: "
              f"its last batch is partial (padded to {a.batch} on a GPU, so cudnn sees one "
              f"shape).\n\n{result.table()}\n\n"
              f"**{bench.verdict(result)}**")


def section_voxel(bench: Bench) -> None:
    import torch

    from event_seg.data.events import voxel_grid_batch

    a = bench.args
    device = torch.device(a.device)
    rows, worst = [], math.inf
    for batch, events, height, width in a.voxel_cases:
        n = batch * events
        gen = torch.Generator(device=device).manual_seed(0)
        x = torch.randint(0, width, (n,), device=device, dtype=torch.int16, generator=gen)
        y = torch.randint(0, height, (n,), device=device, dtype=torch.int16, generator=gen)
        t = torch.randint(0, 50_000_000, (batch, events), device=device, dtype=torch.int32,
                          generator=gen).sort(dim=1).values.flatten()
        p = torch.randint(0, 2, (n,), device=device, dtype=torch.int8, generator=gen) * 2 - 1
        counts = torch.full((batch,), events, device=device, dtype=torch.long)
        index = torch.repeat_interleave(torch.arange(batch, device=device), counts, output_size=n)
        for name, kw in (("float", {}), ("float, normalize", {"normalize": True}),
                         ("deterministic (fixed point)", {"deterministic": True})):
            run = partial(voxel_grid_batch, x, y, t, p, index, batch, 5, height, width, **kw)
            run()  # warm-up
            times = []
            for _ in range(a.voxel_repeats):
                sync(device)
                started = time.perf_counter()
                run()
                sync(device)
                times.append(time.perf_counter() - started)
            seconds = statistics.median(times)
            rate = n / seconds / 1e9
            if name != "float, normalize":
                worst = min(worst, rate)
            rows.append([f"{batch} x {events:,}", f"{height}x{width}", name, 1000 * seconds, rate])
        del x, y, t, p, index, run
    result = Result(question="", header=["events", "frame", "accumulation", "ms (median)",
                                         "G events/s"],
                    rows=rows, ratio_name="slowest G events/s (float or deterministic)",
                    ratio=worst, target=f">= {TARGET_VOXEL:g}")
    bench.target("voxel_grid_batch G events/s (slowest case)", worst, ">=", TARGET_VOXEL)
    bench.add("voxel_grid_batch throughput",
              f"5 bins, the collate's dtypes (int16 x/y, int32 t, int8 p), the batch index "
              f"built beforehand; median of {a.voxel_repeats} calls.\n\n{result.table()}\n\n"
              f"**{bench.verdict(result)}**")


def section_loader(bench: Bench, sources: dict) -> dict:
    """Samples/s of the real DataLoader alone, and one CPU batch kept for the step figures."""
    from itertools import islice

    a = bench.args
    rows, rates = [], {}
    for name, (cfg, data) in sources.items():
        loader = data.loaders["train"]
        # Workers start, caches warm; then a whole epoch from a fresh iterator, counted.
        warm = list(islice(iter(loader), min(4, len(loader))))
        if bench.cpu_batch is None:
            bench.cpu_batch = warm[0]  # a batch of the raw-file loader
        del warm
        started = time.perf_counter()
        samples = batches = 0
        for batch in loader:
            samples += int(batch["mask"].shape[0])
            batches += 1
        seconds = time.perf_counter() - started
        assert batches == a.steps and samples == a.steps * a.batch, (batches, samples)
        rates[name] = samples / seconds
        rows.append([name, a.workers, batches, samples, seconds, samples / seconds])
    bench.loader_rates = rates
    result = Result(question="", header=["source", "workers", "batches", "samples", "seconds",
                                         "samples/s"],
                    rows=rows, ratio_name="prepared cache / raw files samples/s",
                    ratio=rates["prepared cache"] / rates["raw files"], target="")
    bench.add("Loader alone",
              f"The training DataLoader (shuffled, augmented, collated, pinned on CUDA) iterated "
              f"for one epoch with nothing else running; persistent workers already "
              f"started.\n\n{result.table()}\n\n**{bench.verdict(result)}**")
    return rates


def measure_mode(bench: Bench, mode: str, overrides: list, sources: dict) -> dict:
    import torch

    a = bench.args
    from event_seg.data.build import DataBundle

    _, data_raw = sources["raw files"]
    cfg = compose(bench.overrides(False, overrides))

    row = {"mode": mode}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(cfg, DataBundle(data_raw.info, {"train": data_raw.loaders["train"]}),
                               Path(tmp))
        built = trainer.inputs(bench.cpu_batch)  # the Trainer's own builder, once
        started = time.perf_counter()
        step_only(bench, trainer, bench.cpu_batch, built, a.warmup)  # tuning, compiling
        row["warmup_s"] = time.perf_counter() - started
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.device)
        samples, seconds = step_only(bench, trainer, bench.cpu_batch, built, a.steps)
        row["step"] = samples / seconds
        row["peak"] = (torch.cuda.max_memory_allocated(trainer.device) / 2 ** 30
                       if trainer.device.type == "cuda" else float("nan"))
        for name, (_, data) in sources.items():
            samples, seconds, waited = end_to_end(bench, trainer, data.loaders["train"])
            row[name] = samples / seconds
            row[f"{name} wait"] = 100 * waited / seconds
        del trainer, built
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def modes_table(bench: Bench, rows: list) -> None:
    a = bench.args
    table = []
    for r in rows:
        if "error" in r:
            table.append([r["mode"], r["error"]] + [""] * 8)
            continue
        table.append([r["mode"], r["step"], r["raw files"], r["raw files"] / r["step"],
                      r["raw files wait"], r["prepared cache"], r["prepared cache"] / r["step"],
                      r["prepared cache wait"], r["peak"], r["warmup_s"]])
    header = ["mode", "step-only img/s", "end-to-end img/s, raw files", "raw / step",
              "raw: loop waits (%)", "end-to-end img/s, prepared cache", "cache / step",
              "cache: loop waits (%)", "peak GPU memory (GiB)", "warm-up (s)"]
    done = [r for r in rows if "error" not in r]
    worst = min((min(r["raw files"], r["prepared cache"]) / r["step"] for r in done),
                default=float("nan"))
    result = Result(question="", header=header, rows=table,
                    ratio_name="lowest end-to-end / step-only", ratio=worst,
                    target=f">= {TARGET_E2E:g}")
    bench.add("Training throughput: step alone and end to end",
              f"Every figure is {a.steps} counted steps of batch {a.batch} (asserted: the "
              f"steps timed are the steps divided by). Step-only: one batch built once on the "
              f"device by the Trainer's input builder, replayed through "
              f"`Trainer.train_one_epoch` (panels off). End to end: `Trainer.train_one_epoch` "
              f"over the real DataLoader ({a.workers} workers, persistent, started before), "
              f"from the raw files or from the prepared cache; the epoch's pipeline refill is "
              f"included. \"loop waits\": the share of the epoch spent in the loader's `next()`. "
              f"Warm-up: {a.warmup} step-only steps before the figures (cudnn tuning, "
              f"compilation). The loader alone gives "
              f"{bench.loader_rates.get('raw files', float('nan')):.0f} samples/s from the raw "
              f"files, {bench.loader_rates.get('prepared cache', float('nan')):.0f} from the "
              f"prepared cache.\n\n{result.table()}\n\n**{bench.verdict(result)}**")


def run_modes(bench: Bench, names: list, sources: dict, rows: list) -> None:
    a = bench.args
    modes = CPU_MODES if a.device == "cpu" else MODES
    for mode in names:
        need = 3 * bench.slowest_epoch_s + 5 + (COMPILE_GUESS_S if "compile" in mode else 0)
        if bench.left() < need:
            bench.notes.append(f"{mode}: skipped, {bench.left():.0f} s of the time budget left "
                               f"(about {need:.0f} s needed)")
            print(f"skipping {mode}: time budget", flush=True)
            continue
        print(f"\n{mode} ...", flush=True)
        try:
            row = measure_mode(bench, mode, modes[mode], sources)
            bench.slowest_epoch_s = max(bench.slowest_epoch_s,
                                        a.steps * a.batch / min(row["step"], row["raw files"],
                                                                row["prepared cache"]))
        except Exception as e:  # one failing mode (compile on a new stack) keeps the others
            traceback.print_exc()
            row = {"mode": mode, "error": f"failed: {type(e).__name__}: "
                                          f"{' '.join(str(e).split())[:200]}"}
        rows.append(row)
        modes_table(bench, rows)
        if "error" not in row:
            for name in ("raw files", "prepared cache"):
                bench.target(f"end-to-end / step-only, {mode}, {name}, {a.workers} workers",
                             row[name] / row["step"], ">=", TARGET_E2E)


def guarded(bench: Bench, section, *args) -> None:
    """Runs one section; a failure is reported (traceback, a note) and the next ones run."""
    try:
        section(bench, *args)
    except Exception as e:
        traceback.print_exc()
        bench.failed = True
        bench.notes.append(f"{section.__name__} failed: {type(e).__name__}: "
                           f"{' '.join(str(e).split())[:300]}")
        bench.write()


def section_input_builder(bench: Bench, sources: dict) -> None:
    """The Trainer's input builder on one real batch: host-to-device copy and the voxel grid."""
    import torch

    from event_seg.data.device_input import ModelInputBuilder

    a = bench.args
    cfg, data = sources["raw files"]
    device = torch.device(a.device)
    builder = ModelInputBuilder(data.info, device,
                                normalize_events=bool(cfg.dataset.normalize_events),
                                channels_last=device.type == "cuda")
    events = int(bench.cpu_batch["events_count"].sum())
    rows = []
    for deterministic in (False, True):
        builder.deterministic = deterministic
        builder(bench.cpu_batch)
        times = []
        for _ in range(a.voxel_repeats):
            sync(device)
            started = time.perf_counter()
            builder(bench.cpu_batch)
            sync(device)
            times.append(time.perf_counter() - started)
        seconds = statistics.median(times)
        rows.append(["fixed point" if deterministic else "float", events, 1000 * seconds,
                     events / seconds / 1e9])
    result = Result(question="", header=["voxel accumulation", "events", "ms per batch",
                                         "G events/s"],
                    rows=rows, ratio_name="float ms per batch", ratio=rows[0][2], target="")
    bench.add("Input builder on a real batch",
              f"`ModelInputBuilder` (as the Trainer calls it) on one loader batch of {a.batch}: "
              f"copy to the device, batch index, voxel grid, normalisation, RGB, concatenation; "
              f"median of {a.voxel_repeats}.\n\n{result.table()}")


# -------------------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and few steps: a smoke check, not a figure")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, help="timed steps per figure (default 100; "
                                                  "--quick 3)")
    parser.add_argument("--workers", type=int, help="loader workers (default 16; --quick: "
                                                    "the CPU count, at most 16)")
    parser.add_argument("--events", type=int, help="events per sample (default 100000)")
    parser.add_argument("--budget-s", type=float, default=270.0,
                        help="seconds this script may take; later sections are skipped to "
                             "stay within it (default 270)")
    parser.add_argument("--modes", help="comma-separated subset of the modes to measure")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--data-dir", help="where to write the synthetic set and the cache "
                                           "(default: a temporary folder, removed at the end)")
    parser.add_argument("--out", help="the results file (default benchmarks/RESULTS_GPU.md for "
                                      "a GPU run; a temporary file otherwise)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.height, args.width = (64, 128) if quick else (256, 512)
    args.batch = 2 if quick and args.batch == 16 else args.batch
    args.steps = args.steps or (3 if quick else 100)
    args.events = args.events or (2_000 if quick else 100_000)
    args.workers = args.workers or (min(16, os.cpu_count() or 1) if quick else 16)
    args.warmup = 1 if quick else 5
    args.voxel_repeats = 3 if quick else 20
    args.voxel_cases = ([(2, 10_000, 64, 128), (2, 100_000, 96, 128)] if quick else
                        [(16, 100_000, 256, 512), (16, 1_000_000, 440, 640)])
    if not quick and args.steps < 100:
        parser.error("--steps must be at least 100 (the issue's figures); use --quick for a "
                     "smoke check")
    args.train_frames = args.steps * args.batch  # exactly --steps full batches per epoch
    args.val_frames = args.batch + max(args.batch // 2, 1)  # the last batch is partial
    args.is_gpu_figure = args.device == "cuda" and not quick
    args.not_gpu_reason = ("A CPU run" if args.device == "cpu" else "A --quick run on the GPU") \
        + (" with --quick: tiny frames and data, few steps" if quick else "")
    if args.out is None:
        args.out = (str(Path(__file__).parent / "RESULTS_GPU.md") if args.is_gpu_figure else
                    str(Path(tempfile.gettempdir()) / "RESULTS_GPU.smoke.md"))
    return args


def main(argv=None) -> int:
    t0 = time.perf_counter()
    args = parse_args(argv)
    args.t0 = t0
    if not args.is_gpu_figure:
        print(f"*** {args.not_gpu_reason}: NOT a GPU figure; results go to {args.out} ***",
              flush=True)
    # gpu.sh's hard timeout sends SIGTERM: exit through the clean-up below (the temporary set
    # is a few GB). Inside Trainer.fit the Trainer's own handler stops at the next batch.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    own_dir = args.data_dir is None
    work = Path(tempfile.mkdtemp(prefix="bench_gpu_") if own_dir else args.data_dir)
    args.root, args.cache_dir = work / "EventScape", work / "cache"
    try:
        return run(args, work)
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> int:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU visible: nothing to measure (--device cpu --quick is a smoke check)",
              file=sys.stderr)
        return 2
    bench = Bench(args)
    # The writers are forked from this process: torch is imported, no CUDA context exists yet.
    stamp = work / "stamp.txt"
    key = f"{args.train_frames} {args.val_frames} {args.height} {args.width} {args.events}"
    args.gen_processes = min(32, os.cpu_count() or 1)
    started = time.perf_counter()
    if not (stamp.is_file() and stamp.read_text() == key):
        shutil.rmtree(args.root, ignore_errors=True)
        shutil.rmtree(args.cache_dir, ignore_errors=True)
        write_eventscape(args.root, args.train_frames, args.val_frames, args.height, args.width,
                         args.events, args.gen_processes)
        stamp.write_text(key)
    args.generate_s = time.perf_counter() - started
    print(f"synthetic set: {args.train_frames} + {args.val_frames} frames in "
          f"{args.generate_s:.1f} s", flush=True)

    importlib.import_module("event_seg.config")  # registers the schemas compose needs

    args.machine = machine()
    section_prepare(bench)
    bench.write()
    guarded(bench, section_epochs)  # first: its epoch 1 is the process's first CUDA work

    sources = {"raw files": build(bench, False), "prepared cache": build(bench, True)}
    guarded(bench, section_voxel)
    section_loader(bench, sources)  # the step figures need its batch: a failure ends the run
    guarded(bench, section_input_builder, sources)

    modes = CPU_MODES if args.device == "cpu" else MODES
    names = list(modes)
    if args.modes:
        names = [m.strip() for m in args.modes.split(",")]
        unknown = [m for m in names if m not in modes]
        if unknown:
            print(f"unknown mode(s) {unknown}; choose from {list(modes)}", file=sys.stderr)
            return 2
    elif args.device == "cpu":
        names = [m for m in names if "compile" not in m]  # minutes of C++ builds on a CPU
    if args.no_compile:
        names = [m for m in names if "compile" not in m]
    rows = []
    run_modes(bench, names, sources, rows)
    by_mode = {r["mode"]: r for r in rows if "error" not in r}
    if "bf16" in by_mode and "fp32" in by_mode:
        bench.target("bf16 / fp32 step-only (the earlier target)",
                     by_mode["bf16"]["step"] / by_mode["fp32"]["step"], ">=", TARGET_BF16)
    del sources
    bench.write(final=True)
    print("\n## Targets (issue 12, item 7)\n")
    for what, value, target, met in bench.targets:
        print(f"  {what}: {value:.3f} (target {target}: {bench.word(met)})")
    for note in bench.notes:
        print(f"  note: {note}")
    if not args.is_gpu_figure:
        print(f"\n*** {args.not_gpu_reason}: NOT a GPU figure ***")
    print(f"\nwritten: {args.out}  ({bench.elapsed():.0f} s)")
    return 1 if bench.failed or any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
