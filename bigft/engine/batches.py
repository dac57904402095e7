"""Which examples make each optimizer step: a deterministic function of (seed, step).

Every step's global batch is drawn from a seeded per-epoch permutation, so a resumed run sees
exactly the batches the uninterrupted run would have seen, and the global batch does not depend
on how it is split into micro-batches, accumulation steps or ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bigft.errors import ConfigError


@dataclass(frozen=True)
class BatchPlan:
    num_examples: int
    micro_batch_size: int
    grad_accum: int
    world_size: int
    seed: int

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.grad_accum * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        # The last partial batch of an epoch is dropped so every step has the same size.
        return self.num_examples // self.global_batch_size

    def check(self) -> None:
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"the training set has {self.num_examples} examples, fewer than one global batch "
                f"({self.micro_batch_size} micro-batch × {self.grad_accum} accumulation × "
                f"{self.world_size} ranks = {self.global_batch_size}); lower "
                "trainer.micro_batch_size or trainer.grad_accum, or add data"
            )

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.num_examples, generator=generator)

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """Example indices for `rank`'s micro-batches of optimizer step `step` (0-based)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        order = self._epoch_order(epoch)
        start = index * self.global_batch_size
        per_rank = self.micro_batch_size * self.grad_accum
        mine = order[start + rank * per_rank : start + (rank + 1) * per_rank].tolist()
        size = self.micro_batch_size
        return [mine[i : i + size] for i in range(0, per_rank, size)]


def eval_batches(
    num_examples: int, batch_size: int, rank: int, world_size: int, *, replicate: bool = False
) -> list[tuple[range, bool]]:
    """This rank's share of the eval set: (example indices, counted) per forward.

    The batches are the ones one process would make, in order; rank r takes batches r, r + W,
    r + 2W, ... so that the summed statistics equal one process's. Every rank runs the same
    number of forwards (under ZeRO-3 each forward gathers parameter shards from all ranks): a
    rank whose turn has no batch left runs batch 0 again, uncounted. With `replicate`, every
    rank runs every batch and only rank 0's count.
    """
    starts = range(0, num_examples, batch_size)
    batches = [range(s, min(s + batch_size, num_examples)) for s in starts]
    if replicate:
        return [(batch, rank == 0) for batch in batches]
    mine = [(batch, True) for batch in batches[rank::world_size]]
    rounds = -(-len(batches) // world_size)
    return mine + [(batches[0], False)] * (rounds - len(mine))
