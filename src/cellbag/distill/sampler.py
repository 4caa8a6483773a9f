"""Bounded bags: at most M cells per bag per step, re-drawn each epoch, seeded."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cellbag.distill.errors import DistillError


class BagSampler:
    """Yields batches of ``(bag index, sorted cell indices within the bag)``.

    Each epoch shuffles the bags and draws, for every bag larger than
    ``cells_per_bag``, a random subset of that size (without replacement); smaller bags
    are used whole. The draw depends only on ``(seed, epoch)``, so a run is reproducible
    and the subsets change from one epoch to the next.
    """

    def __init__(
        self,
        bag_sizes: list[int] | np.ndarray,
        cells_per_bag: int = 64,
        bags_per_step: int = 4,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if cells_per_bag < 1:
            raise DistillError(f"cells per bag must be >= 1, got {cells_per_bag}")
        if bags_per_step < 1:
            raise DistillError(f"bags per step must be >= 1, got {bags_per_step}")
        self.bag_sizes = np.asarray(bag_sizes, dtype=np.int64)
        if (self.bag_sizes < 1).any():
            raise DistillError(f"bag {int(np.argmin(self.bag_sizes))} has no cells")
        self.cells_per_bag = int(cells_per_bag)
        self.bags_per_step = int(bags_per_step)
        self.seed = int(seed)
        self.shuffle = shuffle

    def __len__(self) -> int:
        return -(-len(self.bag_sizes) // self.bags_per_step)

    def subset(self, bag: int, rng: np.random.Generator) -> np.ndarray:
        """Sorted cell indices drawn from one bag."""
        n = int(self.bag_sizes[bag])
        if n <= self.cells_per_bag:
            return np.arange(n)
        return np.sort(rng.choice(n, size=self.cells_per_bag, replace=False))

    def epoch(self, epoch: int) -> Iterator[list[tuple[int, np.ndarray]]]:
        """The batches of one epoch."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        n = len(self.bag_sizes)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        for start in range(0, n, self.bags_per_step):
            yield [
                (int(b), self.subset(int(b), rng))
                for b in order[start : start + self.bags_per_step]
            ]
