"""Samplers for training data loaders.

:class:`ClassAwareSampler` is the class-aware sampler of the distribution-balanced loss (DBL, Wu et al. 2020,
METHODS.md §4): the ``dbl`` loss is meant to be trained with it (``--sampler class-aware``), and its rebalance weight
corrects the over-sampling of head classes that co-occur with the tail classes the sampler favours.
"""

from __future__ import annotations

import itertools
import math
from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

from mlic_edge.errors import MlicError


class _ShuffledCycle:
    """Endless iterator over ``items`` in a random order, reshuffled at every pass."""

    def __init__(self, items: np.ndarray, rng: np.random.Generator) -> None:
        self.items = np.asarray(items)
        self.rng = rng
        self.order = self.rng.permutation(self.items)
        self.position = 0

    def __next__(self) -> int:
        if self.position >= len(self.order):
            self.order = self.rng.permutation(self.items)
            self.position = 0
        item = self.order[self.position]
        self.position += 1
        return int(item)


class ClassAwareSampler(Sampler[int]):
    """Class-aware sampling (DBL): pick a class uniformly at random, then take ``num_samples_cls`` consecutive images
    from that class's own shuffled cycle over its positive images; repeat until the epoch is full.

    ``targets`` is the (N, C) label matrix of the training set ({1, 0, -1}; only 1 counts as holding the class).
    Classes with no positive image are skipped. An epoch yields ``max(1, round(max_k n_k · C / 4))`` indices (the
    reference uses C = all classes and reduce = 4). The draw is deterministic given ``seed``: the i-th pass over the
    sampler uses the generator seeded with (seed, i), so successive epochs differ but a rerun repeats them;
    :meth:`set_epoch` pins the pass number (e.g. when resuming). The reference picks classes from a shuffled cycle
    rather than uniformly at random; both give every class the same expected share.

    Under DDP (``num_replicas`` > 1) every rank draws the same seeded sequence, padded to a multiple of
    ``num_replicas``, and takes every ``num_replicas``-th index from ``rank`` on: the ranks' shares together are the
    one sequence a single process would draw, so every class is covered across ranks.
    """

    def __init__(self, targets: np.ndarray, num_samples_cls: int = 3, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0) -> None:
        labels = np.asarray(targets)
        if labels.ndim != 2 or labels.shape[0] == 0 or labels.shape[1] == 0:
            raise MlicError(f"ClassAwareSampler needs an (images, classes) target matrix, got shape {labels.shape}",
                            hint="pass the training set's targets")
        if isinstance(num_samples_cls, bool) or not isinstance(num_samples_cls, (int, np.integer)) \
                or num_samples_cls < 1:
            raise MlicError(f"num_samples_cls={num_samples_cls!r} is not valid", hint="num_samples_cls must be >= 1")
        positives = labels == 1
        self.class_images = [np.flatnonzero(positives[:, k]) for k in range(labels.shape[1])]
        self.classes = np.array([k for k, images in enumerate(self.class_images) if len(images) > 0], dtype=np.int64)
        if len(self.classes) == 0:
            raise MlicError("ClassAwareSampler found no positive label in the targets",
                            hint="use --sampler random, or check the training labels")
        self.num_samples_cls = int(num_samples_cls)
        self.seed = int(seed)
        self.epoch = 0
        max_count = max(len(images) for images in self.class_images)
        self.num_samples = max(1, int(round(max_count * labels.shape[1] / 4)))
        if not 0 <= rank < num_replicas:
            raise MlicError(f"ClassAwareSampler: rank {rank} is not in [0, {num_replicas})")
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.total_samples = math.ceil(self.num_samples / self.num_replicas) * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.total_samples // self.num_replicas

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        return itertools.islice(self._draw(rng, self.total_samples), self.rank, None, self.num_replicas)

    def _draw(self, rng: np.random.Generator, count: int) -> Iterator[int]:
        cycles = {int(k): _ShuffledCycle(self.class_images[k], rng) for k in self.classes}
        drawn = 0
        while drawn < count:
            cycle = cycles[int(self.classes[rng.integers(len(self.classes))])]
            for _ in range(min(self.num_samples_cls, count - drawn)):
                yield next(cycle)
                drawn += 1
