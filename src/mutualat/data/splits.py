"""Held-out validation splits and class-balanced subsets, chosen by a seed.

Both keep the examples' original order and depend on (labels, size, seed) alone, so a run
that names the same seed holds out the same examples on any machine.
"""

from __future__ import annotations

import numpy as np

from mutualat.data.formats import ArraySplit
from mutualat.errors import ConfigError


def train_val_split(
    split: ArraySplit, val_fraction: float, seed: int
) -> tuple[ArraySplit, ArraySplit]:
    """(train, val): ``val_fraction`` of each class held out, chosen by ``seed``.

    The paper chooses α on 20% of the training set held out this way, so that the test set
    never takes part in a choice. Both parts keep the examples' original order.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    held_out = []
    for label in np.unique(split.labels):
        members = np.flatnonzero(split.labels == label)
        held_out.append(rng.permutation(members)[: int(len(members) * val_fraction + 0.5)])
    val_index = np.sort(np.concatenate(held_out))
    keep = np.ones(len(split), dtype=bool)
    keep[val_index] = False
    if len(val_index) == 0 or not keep.any():
        raise ConfigError(
            f"val_fraction {val_fraction} of {len(split)} examples leaves a split empty"
        )
    return split.take(np.flatnonzero(keep)), split.take(val_index)


def balanced_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices into ``labels``, as even across classes as the classes allow, sorted.

    Each class is shuffled by ``seed``; then the first of every class are taken, then the
    second of every class, and so on, so a class that runs out leaves its share to others.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    _, shuffled = np.unique(labels[order], return_inverse=True)
    grouped = np.argsort(shuffled, kind="stable")  # by class, shuffled within each class
    counts = np.bincount(shuffled)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    rank = np.empty(len(labels), dtype=np.int64)
    rank[grouped] = np.arange(len(labels)) - starts  # position within its class
    return np.sort(order[np.argsort(rank, kind="stable")[:n]])


def subset(split: ArraySplit, n: int | None, seed: int) -> ArraySplit:
    """A seeded, class-balanced subset of ``n`` examples (all of them if ``n`` is None or
    at least the split's size), in the original order; for CPU-scale runs."""
    if n is None or n >= len(split):
        return split
    if n < 1:
        raise ConfigError(f"subset size must be positive, got {n}")
    return split.take(balanced_indices(split.labels, n, seed))
