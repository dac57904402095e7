"""Padding token lists into batches.

Padding goes on the right: causal attention then leaves every real token's logits unchanged, and
transformers' sequence-classification heads find the last real token as the last non-pad one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Label value ignored by the loss (prompt tokens, padding), as in transformers.
IGNORE_INDEX = -100


def pad_right(seqs: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """A [len(seqs), longest] long tensor, each row followed by `value`."""
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, seq in enumerate(seqs):
        out[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return out


def pad_left(seqs: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Like `pad_right`, padding before each row (prompts to generate from)."""
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, seq in enumerate(seqs):
        if seq:
            out[i, width - len(seq) :] = torch.as_tensor(seq, dtype=torch.long)
    return out


def attention_mask(seqs: Sequence[Sequence[int]], *, left: bool = False) -> torch.Tensor:
    """1 for real tokens, 0 for padding, matching `pad_right` (or `pad_left`)."""
    ones = [[1] * len(s) for s in seqs]
    return pad_left(ones, 0) if left else pad_right(ones, 0)


def collate_sequences(seqs: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and num_tokens for a list of token lists."""
    mask = attention_mask(seqs)
    return {
        "input_ids": pad_right(seqs, pad_id),
        "attention_mask": mask,
        "num_tokens": mask.sum(),
    }


def collate_causal(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """A causal-LM batch: labels default to the inputs; num_units counts predicted tokens.

    The model predicts token t+1 from position t, so a label at position 0 is never a target:
    num_units counts the non-ignored labels after the shift, exactly what the loss sums over.
    """
    seqs = [ex["input_ids"] for ex in examples]
    batch = collate_sequences(seqs, pad_id)
    labels = pad_right([ex.get("labels", ex["input_ids"]) for ex in examples], IGNORE_INDEX)
    batch["labels"] = labels
    batch["num_units"] = (labels[:, 1:] != IGNORE_INDEX).sum()
    if "position_ids" in examples[0]:
        # Packed rows (bigft/data/packing.py): attention follows the position ids, which restart
        # at every example, so a 2-D mask must not be passed. The padding gets positions from 0
        # too, which makes it a block of its own that no real token attends to.
        batch["position_ids"] = pad_positions([ex["position_ids"] for ex in examples])
        del batch["attention_mask"]
    return batch


def pad_positions(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """Position ids padded on the right with 0, 1, 2, ... (a sequence of its own)."""
    width = max((len(r) for r in rows), default=0)
    return torch.tensor([[*r, *range(width - len(r))] for r in rows], dtype=torch.long)
