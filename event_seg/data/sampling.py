"""Data order and augmentation as pure functions of (seed, epoch, sample index).

Why: a run killed at any point and resumed from its last checkpoint must see exactly the batches
and the augmentations the uninterrupted run saw. DataLoader's own shuffling draws from a
generator whose state moves on every epoch, and persistent workers carry their augmentation RNG
from one epoch to the next, so neither can be restored from a checkpoint. Here nothing carries
over: the order of epoch ``e`` is a permutation seeded with ``seed + e``, and each sample's
augmentation is seeded from ``(seed, e, index)``. The result also does not depend on the number
of workers, and the same sampler shards the data across DDP ranks.
"""

from __future__ import annotations

from typing import Iterator, Tuple

import numpy as np


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 32-bit seed for one sample's augmentation in one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class EpochSampler:
    """Yields ``(index, epoch)`` keys for :class:`SeededSamples`.

    ``shuffle``: a fresh permutation per epoch, seeded with ``seed + epoch``. With several ranks
    each takes every ``world_size``-th key of the same order. Training (``even=True``) drops the
    tail that would leave ranks with different step counts (DDP needs equal ones); evaluation
    (``even=False``) keeps every sample exactly once across the ranks.
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1, even: bool = False):
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.even = rank, world_size, even
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list:
        if not self.shuffle:
            order = list(range(self.size))
        else:
            import torch

            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        if self.even:
            order = order[:len(order) - len(order) % self.world_size]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        return ((index, self.epoch) for index in self._order())

    def __len__(self) -> int:
        if self.even:
            return self.size // self.world_size
        return len(range(self.rank, self.size, self.world_size))


class SeededSamples:
    """Wraps a dataset: ``dataset[(index, epoch)]`` reseeds the augmentation for that sample
    first; a plain ``dataset[index]`` reads without reseeding (evaluation, notebooks)."""

    def __init__(self, dataset, seed: int = 0):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):  # frames, cache, transform ... of the wrapped reader
        if name == "dataset":  # not set yet (unpickling): avoid recursing
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, epoch = key
            transform = getattr(self.dataset, "transform", None)
            if transform is not None:
                transform.reseed(sample_seed(self.seed, epoch, index))
            return self.dataset[index]
        return self.dataset[key]
