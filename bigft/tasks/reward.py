"""Reward model: a scalar score per (prompt, response), trained on ranked pairs.

The loss is InstructGPT's -log sigmoid(r_better - r_worse), summed over every ordered pair of a
prompt's K ranked responses (K(K-1)/2 pairs).
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import torch
import torch.nn.functional as F

from bigft.data.collate import collate_sequences
from bigft.data.readers import Record
from bigft.data.templates import prompt_response_ids, text_field, uses_chat_template
from bigft.errors import DataError
from bigft.tasks.base import (
    LossOutput,
    ModelHead,
    cut,
    forward_logits,
    loss_stats,
    pad_token_id,
)

REWARD_FORMATS = (
    "reward expects {prompt, responses: [best, ..., worst]} or {prompt, chosen, rejected}"
)


class RewardTask:
    name = "reward"
    model_head: ModelHead = "sequence_classification"
    num_labels: int | None = 1
    generates_in_eval: bool = False

    def __init__(self, cfg: Any, tokenizer: Any) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.max_length: int = cfg.max_length
        self.pad_id = pad_token_id(tokenizer)
        self.templated = uses_chat_template(tokenizer, cfg.use_chat_template)

    def encode(self, record: Record) -> list[dict]:
        try:
            prompt = text_field(record, "prompt")
        except DataError as err:
            raise DataError(f"{err}. {REWARD_FORMATS}") from None
        seqs = [
            prompt_response_ids(prompt, r, self.tokenizer, self.templated)
            for r in ranked_responses(record)
        ]
        overlong = any(len(s) > self.max_length for s in seqs)
        if overlong and self.cfg.overlong == "drop":
            # Dropping only some responses would change the ranking's pairs; drop the record.
            return []
        seqs = [cut(s, self.max_length, keep_last=True) for s in seqs]
        examples = [
            {"chosen_ids": seqs[i], "rejected_ids": seqs[j]}
            for i, j in combinations(range(len(seqs)), 2)
        ]
        if overlong:
            examples[0]["truncated"] = True
        return examples

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        # One forward pass scores both sides: rows [0, P) are chosen, rows [P, 2P) rejected.
        seqs = [ex["chosen_ids"] for ex in examples] + [ex["rejected_ids"] for ex in examples]
        batch = collate_sequences(seqs, self.pad_id)
        batch["num_units"] = torch.tensor(len(examples), dtype=torch.long)
        return batch

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        chosen, rejected = self._rewards(model, batch)
        loss_sum = pair_loss_sum(chosen, rejected)
        return LossOutput(loss_sum, loss_stats(loss_sum, batch) | pair_stats(chosen, rejected))

    def eval_stats(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        with torch.no_grad():
            chosen, rejected = self._rewards(model, batch)
            loss_sum = pair_loss_sum(chosen, rejected)
        return loss_stats(loss_sum, batch) | pair_stats(chosen, rejected)

    def _rewards(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rewards = forward_logits(model, batch).squeeze(-1)
        pairs = rewards.shape[0] // 2
        return rewards[:pairs], rewards[pairs:]

    def summarize(self, stats: dict[str, float]) -> dict[str, float]:
        units = max(stats["units"], 1.0)
        return {
            "loss": stats["loss_sum"] / units,
            "accuracy": 100.0 * stats.get("correct", 0.0) / units,
            "margin": stats.get("margin_sum", 0.0) / units,
        }


def ranked_responses(record: Record) -> list[str]:
    """The record's responses, best first: `responses`, or [chosen, rejected]."""
    if "responses" in record.fields:
        responses = record.fields["responses"]
        if not isinstance(responses, list) or len(responses) < 2:
            raise DataError(
                f"{record.source}: field 'responses' must be a list of at least 2 responses, "
                f"best first; got {responses!r}"
            )
        return [_response_text(record, f"responses[{i}]", r) for i, r in enumerate(responses)]
    if "chosen" in record.fields or "rejected" in record.fields:
        try:
            return [text_field(record, "chosen"), text_field(record, "rejected")]
        except DataError as err:
            raise DataError(f"{err}. {REWARD_FORMATS}") from None
    present = ", ".join(sorted(record.fields)) or "none"
    raise DataError(
        f"{record.source}: no 'responses' or 'chosen'/'rejected' field (fields: {present}). "
        f"{REWARD_FORMATS}; rename your fields with data.fields"
    )


def pair_loss_sum(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    return -F.logsigmoid(chosen - rejected).sum()


def pair_stats(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    margin = (chosen - rejected).detach()
    return {"correct": float((margin > 0).sum()), "margin_sum": float(margin.sum())}


def _response_text(record: Record, where: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{record.source}: {where} must be text, got {type(value).__name__}")
    return str(value)
