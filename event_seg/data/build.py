"""From a dataset config to DataLoaders and the DatasetInfo that drives the model and loggers."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional

from .event_scapes import DatasetError, EventScapesDataset, index_split
from .collate import collate_compact
from .events import representation_channels
from .sample import SkipCorrupt
from .sampling import EpochSampler, SeededSamples
from .transforms import JointTransform

log = logging.getLogger(__name__)

RGB_CHANNELS = 3


@dataclass
class DatasetInfo:
    name: str
    class_names: List[str]
    palette: List[List[int]]
    ignore_index: int
    split_sizes: Dict[str, int]
    representation: str
    num_bins: int
    modality: str
    event_channels: int
    input_channels: int
    root: str
    skipped_frames: Dict[str, int] = field(default_factory=dict)
    time_unit: Optional[str] = None  # unit of the raw event timestamps (the reader's), if known
    time_surface_tau_ms: Optional[float] = None  # representation=time_surface: its decay, in ms
    height: Optional[int] = None  # the frame size every sample has after the transform
    width: Optional[int] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class DataBundle:
    info: DatasetInfo
    loaders: Dict[str, Any]  # split -> torch DataLoader (train, val and, when present, test)


def event_channels(dataset_cfg) -> int:
    if dataset_cfg.representation == "precomputed":
        return int(dataset_cfg.event_channels)
    return representation_channels(dataset_cfg.representation, dataset_cfg.num_bins)


def input_channels(modality: str, events: int) -> int:
    return {"rgb": RGB_CHANNELS, "events": events, "rgb+events": RGB_CHANNELS + events}[modality]


def split_dataset(dataset_cfg, split: str, split_dir: Path, transform):
    """The reader for ``dataset.format`` (or your own, ``dataset._target_``): returns (dataset,
    frames skipped while indexing)."""
    if dataset_cfg.get("_target_"):
        from .custom import build_reader

        return build_reader(dataset_cfg, split, split_dir, transform)
    if dataset_cfg.format == "dsec_semantic":
        from .dsec import DsecSemanticDataset
        from .dsec import index_split as index_dsec

        dsec = dataset_cfg.dsec
        frames, skipped = index_dsec(split_dir, (dsec.sequences or {}).get(split), dsec.classes)
        return DsecSemanticDataset(
            frames, dataset_cfg.representation, dataset_cfg.num_bins, dataset_cfg.normalize_events,
            dataset_cfg.label_map, dataset_cfg.ignore_index, dsec.duration_ms, dsec.num_events,
            dsec.rectify, transform), skipped
    if dataset_cfg.format == "ddd17":
        from .ddd17 import DDD17Dataset
        from .ddd17 import index_split as index_ddd17

        triples, skipped = index_ddd17(split_dir)
        return DDD17Dataset(triples, event_channels(dataset_cfg), dataset_cfg.label_map,
                            dataset_cfg.ignore_index, transform), skipped
    frames, skipped = index_split(split_dir)
    return EventScapesDataset(
        frames, dataset_cfg.representation, dataset_cfg.num_bins, dataset_cfg.normalize_events,
        dataset_cfg.label_map, dataset_cfg.ignore_index, transform), skipped


def resolve_root(dataset_cfg, cache_dir: str, progress: bool = True) -> Path:
    """The dataset folder: generated for the synthetic preset, checked to exist otherwise."""
    if dataset_cfg.name == "synthetic" and dataset_cfg.root is None:
        from .synthetic import ensure_synthetic

        params = {"height": dataset_cfg.height, "width": dataset_cfg.width,
                  **dict(dataset_cfg.synthetic)}
        return ensure_synthetic(cache_dir, params, dict(dataset_cfg.splits), progress=progress)
    if dataset_cfg.root is None:
        raise DatasetError(f"dataset.root is not set for dataset '{dataset_cfg.name}': "
                           f"pass dataset.root=/path/to/{dataset_cfg.name}")
    root = Path(dataset_cfg.root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset.root={dataset_cfg.root} does not exist or is not a folder")
    return root


def open_packed_split(dataset_cfg, root: Path, cache_dir: str, split: str):
    """The prepared cache of this split for these settings, or None (then samples are read
    from the raw files; event-seg-prepare writes the cache)."""
    from .packed_cache import PackedCache

    return PackedCache(cache_dir, dataset_cfg, root).open_split(split)


def log_packed_cache(dataset_cfg, root: Path, cache_dir: str, readers: dict) -> None:
    """One line: the prepared cache each split is read from, hit or rebuild needed, and why (a
    setting that finds no cache, a source file changed since event-seg-prepare)."""
    from .packed_cache import PackedCache, describe

    cache = PackedCache(cache_dir, dataset_cfg, root)
    found = {}  # what was found -> the splits that found it, in order
    for split, reader in readers.items():
        found.setdefault(describe(cache, split, reader.cache, reader), []).append(split)
    rerun = any(not state.startswith("hit") for state in found)
    log.info("Prepared cache %s: %s%s", cache.dir,
             "; ".join(f"{', '.join(splits)} {state}" for state, splits in found.items()),
             " (run event-seg-prepare with these settings to build it)" if rerun else "")


def build_data(dataset_cfg, trainer_cfg, cache_dir: str, seed: int = 0,
               splits=("train", "val", "test"), rank: int = 0,
               world_size: int = 1, evaluation: bool = False) -> DataBundle:
    """Loaders of compact batches for the configured splits (see collate.py), read from the
    prepared cache where it holds a sample as it is now, else from the raw files. Under DDP
    each ``rank`` of ``world_size`` loads its own share (see sampling.EpochSampler).

    The train split is augmented, shuffled and cut to whole batches; with ``evaluation`` every
    split, train included, is loaded whole, unaugmented and in order (event-seg-evaluate)."""
    import torch
    from torch.utils.data import DataLoader

    root = resolve_root(dataset_cfg, cache_dir, progress=trainer_cfg.progress_bar)
    datasets, skipped, cached = {}, {}, {}
    for split in splits:
        folder = dataset_cfg.splits.get(split)
        if folder is None:
            continue
        aug = dataset_cfg.augment
        transform = JointTransform(
            train=split == "train" and not evaluation, hflip=aug.hflip, seed=seed,
            size=(dataset_cfg.height, dataset_cfg.width), ignore_index=dataset_cfg.ignore_index,
            affine_p=aug.affine_p, scale=list(aug.scale), rotate_deg=aug.rotate_deg,
            translate=aug.translate, photometric_p=aug.photometric_p)
        datasets[split], n_skipped = split_dataset(dataset_cfg, split, root / folder, transform)
        datasets[split].num_classes = len(dataset_cfg.class_names)
        if dataset_cfg.get("_target_"):
            from .custom import checked

            # Your own reader's samples are checked one by one (custom.py). The prepared cache
            # is not used for it: its key holds the built-in formats' settings, not a reader's.
            datasets[split] = checked(datasets[split], dataset_cfg, event_channels(dataset_cfg))
        elif dataset_cfg.representation_cache:
            datasets[split].cache = open_packed_split(dataset_cfg, root, cache_dir, split)
            cached[split] = datasets[split]
        if dataset_cfg.skip_corrupt:
            datasets[split] = SkipCorrupt(datasets[split])
        skipped[split] = n_skipped
        if n_skipped:
            log.info("%s: skipped %d frames without an events file", split, n_skipped)
    if cached:
        log_packed_cache(dataset_cfg, root, cache_dir, cached)
    # Each reader reports the unit of its raw stamps (DSEC documents microseconds, EventScape's
    # is detected). Only the time surface needs it: the device converts tau_ms to that unit
    # once (events.tau_in_ticks) instead of every event being rescaled.
    # Asked only where it is used or was always logged (training): EventScape's detection reads
    # a raw window, which an evaluation from the prepared cache must not.
    asked = dataset_cfg.representation == "time_surface" or ("train" in datasets
                                                              and not evaluation)
    time_unit = (getattr(datasets.get("train", next(iter(datasets.values()), None)), "time_unit",
                         None) if asked else None)
    if time_unit is not None:
        log.info("Event timestamps are in %s", time_unit)
    elif dataset_cfg.representation == "time_surface":
        reader = dataset_cfg.format or dataset_cfg._target_
        raise DatasetError(f"dataset.representation=time_surface needs the unit of the event "
                           f"timestamps, and the {reader} reader could not tell it (EventScape's "
                           f"is detected from events/data/timestamps.txt and the first windows' "
                           f"events; a reader of your own sets its time_unit attribute)")
    info = DatasetInfo(
        name=dataset_cfg.name,
        class_names=list(dataset_cfg.class_names),
        palette=[list(c) for c in dataset_cfg.palette],
        ignore_index=dataset_cfg.ignore_index,
        split_sizes={k: len(v) for k, v in datasets.items()},
        representation=dataset_cfg.representation,
        num_bins=dataset_cfg.num_bins,
        modality=dataset_cfg.modality,
        event_channels=event_channels(dataset_cfg),
        input_channels=input_channels(dataset_cfg.modality, event_channels(dataset_cfg)),
        root=str(root),
        skipped_frames=skipped,
        time_unit=time_unit,
        time_surface_tau_ms=dataset_cfg.time_surface.tau_ms,
        height=dataset_cfg.height,
        width=dataset_cfg.width,
    )
    workers = trainer_cfg.num_workers
    context = loader_context() if workers else None
    loaders = {}
    for split, ds in datasets.items():
        train = split == "train" and not evaluation
        # Order and augmentation follow (seed, epoch, index) alone: exact resume (sampling.py).
        sampler = EpochSampler(len(ds), shuffle=train, seed=seed, rank=rank,
                               world_size=world_size, even=train)
        loaders[split] = DataLoader(
            SeededSamples(ds, seed),
            batch_size=trainer_cfg.batch_size,
            sampler=sampler,
            drop_last=train and len(sampler) > trainer_cfg.batch_size,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            worker_init_fn=partial(_seed_worker, exiting=_exit_flag()) if workers else None,
            multiprocessing_context=context,
            collate_fn=collate_compact,
            # Worker base seeds are drawn from this, not from the global RNG, which belongs to
            # the model (dropout) and is restored exactly on resume.
            generator=torch.Generator().manual_seed(seed),
        )
    return DataBundle(info=info, loaders=loaders)


def loader_context():
    """The start method of the loader workers: Python's default, except inside a joblib (loky)
    worker, where the default is loky's own method, which torch's worker processes cannot use
    (a sweep's job would fail at its first batch): fork there, as the default is on Linux."""
    import multiprocessing

    if multiprocessing.get_start_method(allow_none=True) in (None, "fork", "spawn", "forkserver"):
        return None
    available = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in available else "spawn")


_EXIT_FLAG = None  # shared with this process's loader workers; raised as it exits


def _exit_flag():
    """A flag the loader workers read: 1 once this process starts to exit. multiprocessing's
    exit function SIGTERMs every daemonic child (the loader workers) and waits for it; from the
    flag on, a worker honours that SIGTERM. Raised by a finalizer that function runs first
    (exit priority >= 0), wherever it is called from: the main process's atexit, or the end of
    a multiprocessing child such as a joblib worker running a sweep's jobs, which calls it
    before any atexit handler (a flag raised there would leave it waiting on its workers)."""
    global _EXIT_FLAG
    if _EXIT_FLAG is None:
        import multiprocessing
        import multiprocessing.util

        _EXIT_FLAG = multiprocessing.RawValue("b", 0)
        multiprocessing.util.Finalize(None, _raise_exit_flag, exitpriority=100)
    return _EXIT_FLAG


def _raise_exit_flag() -> None:
    _EXIT_FLAG.value = 1
    # A worker that has not yet installed its handlers (a spawned one still importing, on a
    # busy machine) dies of that SIGTERM instead; torch's SIGCHLD check would take that for a
    # crash and raise from the exit function. Every worker's end is intended from here on.
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def _seed_worker(worker_id: int, exiting=None) -> None:
    # A scheduler's SIGTERM (SLURM signals every process of the job) and Ctrl-C's SIGINT (the
    # terminal's whole process group) reach the workers too: dying of them would crash the main
    # process's next fetch before it stops at the batch boundary (engine/preemption.py). The
    # main process alone decides: its workers exit when it closes its loaders, when it exits
    # (the SIGTERM its exit sends them is honoured, `exiting`), or when it is gone (torch's
    # worker loop watches its parent).
    import signal

    def on_sigterm(signum, frame):
        if exiting is None or exiting.value:
            # Exit status 0: torch's SIGCHLD check in the exiting main process takes a worker
            # killed by a signal for a crash and raises there.
            os._exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Workers inherit torch's per-worker seed; numpy and random follow it, so any reader that
    # draws from them differs between workers. Augmentation is seeded per sample (sampling.py).
    import random

    import numpy as np
    import torch

    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)
