"""Sequence packing: several tokenized examples share one `task.max_length` row.

Rows are filled best-fit-decreasing: examples longest first, each into the open row whose free
space it fills most tightly, a new row when none has room. On instruction data with a long-tailed
length spread this leaves a few percent of each row empty instead of the half or more that padding
every example to its batch's longest wastes.

Each packed row keeps its examples apart in three ways:

- `position_ids` restart at 0 for every example, so rotary positions are the ones the example has
  on its own;
- attention does not cross examples: batches of packed rows carry `position_ids` and no 2-D
  attention mask, from which transformers builds a block-causal mask (see `forward_logits` in
  bigft/tasks/base.py for why this and not a hand-built 4-D mask);
- the first token of every example is not a target, exactly as position 0 of an unpacked row is
  not one: otherwise the previous example's last token would be trained to predict it.

Packing is a pure function of the examples, `max_length` and the seed, so every rank and every
resumed run builds the same rows; the rows are then the items the BatchPlan shuffles.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence

from bigft.data.collate import IGNORE_INDEX


def best_fit_decreasing(lengths: Sequence[int], capacity: int, seed: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins whose lengths sum to at most `capacity`.

    Equal lengths are ordered by a permutation drawn from `seed`, so which examples share a row
    is reproducible without always pairing neighbours from the data file.
    """
    too_long = [n for n in lengths if n > capacity]
    if too_long:
        raise ValueError(f"{len(too_long)} items are longer than the capacity {capacity}")
    tie_break = list(range(len(lengths)))
    random.Random(seed).shuffle(tie_break)
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], tie_break[i]))

    bins: list[list[int]] = []
    # Open bins by free space: `free` lists the distinct free amounts in ascending order and
    # `holders` the bins that have each, so the tightest fit is one bisect away.
    free: list[int] = []
    holders: dict[int, list[int]] = {}
    for item in order:
        size = lengths[item]
        at = bisect.bisect_left(free, size)
        if at < len(free):
            room = free[at]
            target = holders[room].pop()
            if not holders[room]:
                del holders[room]
                free.pop(at)
        else:
            room, target = capacity, len(bins)
            bins.append([])
        bins[target].append(item)
        left = room - size
        if left > 0:
            if left not in holders:
                holders[left] = []
                bisect.insort(free, left)
            holders[left].append(target)
    return bins


def pack_row(examples: Sequence[dict]) -> dict:
    """One row: the examples' tokens end to end, labels per token, positions per example."""
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for example in examples:
        ids = list(example["input_ids"])
        own = list(example.get("labels", ids))
        if own:
            own[0] = IGNORE_INDEX
        input_ids += ids
        labels += own
        position_ids += range(len(ids))
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def pack_examples(examples: Sequence[dict], max_length: int, seed: int) -> list[dict]:
    """Causal-LM examples ({input_ids, labels?}) packed into rows of at most `max_length` tokens.

    Only what training reads is kept (generation prompts are for evaluation, which never packs).
    """
    lengths = [len(ex["input_ids"]) for ex in examples]
    bins = best_fit_decreasing(lengths, max_length, seed)
    return [pack_row([examples[i] for i in members]) for members in bins]


def fill_ratio(rows: Sequence[dict], max_length: int) -> float:
    """The share of the rows' max_length slots that hold tokens."""
    if not rows:
        return 0.0
    return sum(len(r["input_ids"]) for r in rows) / (len(rows) * max_length)
