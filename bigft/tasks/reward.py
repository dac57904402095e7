"""Reward model: a scalar score per (prompt, response), trained on rankings as InstructGPT did.

A prompt's K responses are scored by K forward passes, and the loss sums
-log sigmoid(r_better - r_worse) over the ranking's pairs from those K scores (all K(K-1)/2 of
them for a complete ranking), rather than forwarding both sides of every pair (K(K-1) sequences).
One example is one record, so a ranking's pairs share a micro-batch: InstructGPT found that
shuffling a ranking's correlated pairs into different batches overfits.

Weighting (`task.pair_weighting`): `per_ranking` (the paper's) weights each ranking's pairs by
1 / (its number of pairs), so every ranking counts once and the loss is a mean over rankings;
`per_pair` weights every pair 1, a mean over pairs. Several reviewers per record
(bigft/data/preferences.py) are combined by `task.aggregate`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from bigft.data.collate import collate_sequences
from bigft.data.preferences import (
    FORMATS,
    Agreement,
    preference_rankings,
    read_judged,
)
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

log = logging.getLogger(__name__)

REWARD_FORMATS = f"reward {FORMATS}"


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
        self.aggregate = str(cfg.aggregate)
        self.per_ranking = str(cfg.pair_weighting) == "per_ranking"
        self.max_responses: int | None = cfg.max_responses

    def encode(self, record: Record) -> list[dict]:
        """One example per record: its K sequences and the pairs to train on."""
        try:
            prompt = text_field(record, "prompt")
        except DataError as err:
            raise DataError(f"{err}. {REWARD_FORMATS}") from None
        judged = read_judged(record)
        k = len(judged.responses)
        if self.max_responses is not None and k > self.max_responses:
            raise DataError(
                f"{record.source}: {k} responses, more than task.max_responses="
                f"{self.max_responses} (which bigft-plan sizes micro-batches by); raise it"
            )
        rankings = preference_rankings(judged, self.aggregate)
        if not rankings:
            # Every reviewer tied every response: nothing to learn from this record.
            return []
        seqs = [
            prompt_response_ids(prompt, r, self.tokenizer, self.templated) for r in judged.responses
        ]
        overlong = any(len(s) > self.max_length for s in seqs)
        if overlong and self.cfg.overlong == "drop":
            # Dropping only some responses would change the ranking's pairs; drop the record.
            return []
        example = {
            "response_ids": [cut(s, self.max_length, keep_last=True) for s in seqs],
            "pairs": [list(p) for ranking in rankings for p in ranking],
            "weights": [
                1.0 / len(ranking) if self.per_ranking else 1.0
                for ranking in rankings
                for _ in ranking
            ],
            "units": len(rankings) if self.per_ranking else sum(len(r) for r in rankings),
        }
        if overlong:
            example["truncated"] = True
        return [example]

    def describe_records(self, records: list[Record], part: str) -> None:
        """Log how far reviewers agree (at start-up, before tokenizing)."""
        agreement = Agreement()
        for record in records:
            if "rankings" in record.fields or "scores" in record.fields:
                try:
                    agreement.add(read_judged(record).scores)
                except DataError:
                    continue  # encode reports it, with the record's file and line
        if agreement.compared:
            log.info(
                "%s: reviewer agreement %.1f%%: how often two reviewers of a prompt order a pair "
                "of its responses alike (%d records with %.1f reviewers each, %d comparisons); "
                "task.aggregate=%s",
                part,
                100 * agreement.rate,
                agreement.records,
                agreement.reviewers / agreement.records,
                agreement.compared,
                self.aggregate,
            )

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        # All responses of all rankings in one forward; pairs index the flattened rows.
        seqs, better, worse, weights, offset = [], [], [], [], 0
        for ex in examples:
            seqs += ex["response_ids"]
            better += [offset + b for b, _ in ex["pairs"]]
            worse += [offset + w for _, w in ex["pairs"]]
            weights += ex["weights"]
            offset += len(ex["response_ids"])
        batch = collate_sequences(seqs, self.pad_id)
        batch["pair_better"] = torch.tensor(better, dtype=torch.long)
        batch["pair_worse"] = torch.tensor(worse, dtype=torch.long)
        batch["pair_weight"] = torch.tensor(weights, dtype=torch.float32)
        batch["num_units"] = torch.tensor(sum(ex["units"] for ex in examples), dtype=torch.long)
        return batch

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        margin = self._margins(model, batch)
        loss_sum = ranking_loss_sum(margin, batch["pair_weight"])
        return LossOutput(loss_sum, loss_stats(loss_sum, batch) | pair_stats(margin))

    def eval_stats(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        with torch.no_grad():
            return self.loss(model, batch).stats

    def _margins(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """r_better - r_worse for every pair of the batch, from one score per sequence."""
        rewards = forward_logits(model, batch).squeeze(-1)
        return rewards[batch["pair_better"]] - rewards[batch["pair_worse"]]

    def summarize(self, stats: dict[str, float]) -> dict[str, float]:
        pairs = max(stats.get("pairs", 0.0), 1.0)
        return {
            "loss": stats["loss_sum"] / max(stats["units"], 1.0),
            "accuracy": 100.0 * stats.get("correct", 0.0) / pairs,
            "margin": stats.get("margin_sum", 0.0) / pairs,
        }


def ranking_loss_sum(margin: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """InstructGPT's -log sigmoid(r_better - r_worse), weighted per pair and summed."""
    return (weight * -F.logsigmoid(margin)).sum()


def pair_stats(margin: torch.Tensor) -> dict[str, float]:
    margin = margin.detach()
    return {
        "correct": float((margin > 0).sum()),
        "pairs": float(margin.numel()),
        "margin_sum": float(margin.sum()),
    }
