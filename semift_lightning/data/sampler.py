"""The training sampler: similar lengths per batch, equal batches on every rank."""

from __future__ import annotations

import math
import random
from typing import Sequence

from torch.utils.data import DistributedSampler


class LengthGroupedSampler(DistributedSampler):
    """Shuffles, then sorts chunks by length so a batch holds similar lengths and little padding.

    Every rank gets the same number of batches; the order changes with ``set_epoch``. It is a
    DistributedSampler so Lightning shards with it as it is instead of wrapping it.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0,
                 chunk_batches: int = 32) -> None:
        super().__init__(lengths, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.chunk_batches = chunk_batches
        self.global_batches = math.ceil(len(self.lengths) / (batch_size * num_replicas))

    def __len__(self) -> int:
        return self.global_batches * self.batch_size

    def __iter__(self):
        rng = random.Random(self.seed + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        group = self.batch_size * self.num_replicas
        order += order[:self.global_batches * group - len(order)]  # every rank gets full, equal batches
        chunk = group * self.chunk_batches
        batches = []
        for start in range(0, len(order), chunk):
            part = sorted(order[start:start + chunk], key=lambda i: -self.lengths[i])
            batches += [part[i:i + group] for i in range(0, len(part), group)]
        rng.shuffle(batches)
        for batch in batches:
            yield from batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
