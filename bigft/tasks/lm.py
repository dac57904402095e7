"""Causal language modelling on raw text: every token is a target."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from bigft.data.collate import IGNORE_INDEX, collate_causal
from bigft.data.readers import Record
from bigft.data.templates import eos_id, special_prefix, text_field
from bigft.tasks.base import (
    LossOutput,
    ModelHead,
    cut,
    forward_logits,
    loss_stats,
    pad_token_id,
)

# exp() of a mean loss above this overflows float64; such a perplexity is meaningless anyway.
MAX_LOG_PERPLEXITY = 700.0


class LMTask:
    name = "lm"
    model_head: ModelHead = "causal_lm"
    num_labels: int | None = None
    generates_in_eval: bool = False

    def __init__(self, cfg: Any, tokenizer: Any) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.max_length: int = cfg.max_length
        self.pad_id = pad_token_id(tokenizer)
        self.prefix = special_prefix(tokenizer)
        self.suffix = [eos_id(tokenizer, "task.add_eos")] if cfg.add_eos else []

    def encode(self, record: Record) -> list[dict]:
        text = text_field(record, "text")
        ids = self.prefix + self.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += self.suffix
        if len(ids) <= self.max_length:
            return [{"input_ids": ids}]
        if self.cfg.overlong == "drop":
            return []
        # A cut text did not end there, so it gets no EOS.
        return [{"input_ids": cut(ids, self.max_length), "truncated": True}]

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        return collate_causal(examples, self.pad_id)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        loss_sum = causal_loss_sum(model, batch)
        return LossOutput(loss_sum, loss_stats(loss_sum, batch))

    def eval_stats(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        with torch.no_grad():
            return loss_stats(causal_loss_sum(model, batch), batch)

    def summarize(self, stats: dict[str, float]) -> dict[str, float]:
        return loss_metrics(stats)


def causal_loss_sum(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], *, only_targets: bool = True
) -> torch.Tensor:
    """Cross-entropy summed over the batch's target tokens (position t predicts token t+1).

    only_targets=False projects every position (bigft.plan.trace: a boolean selection has a
    data-dependent shape, which fake tensors cannot trace).
    """
    labels = batch["labels"]
    # Shift the labels, not the logits: position t's target is token t+1 and the last position
    # has none.
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    if not only_targets:
        logits = forward_logits(model, batch)
        return F.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
    has_target = targets != IGNORE_INDEX
    # Logits only where there is a target: sft's prompt positions and padding never reach the
    # output layer, whose [tokens, vocab] logits are the largest tensor of a small model's step
    # (and, for a large vocabulary, the largest activation of a big one).
    logits = forward_logits(model, batch, keep=has_target)
    return F.cross_entropy(logits, targets[has_target], reduction="sum")


def loss_metrics(stats: dict[str, float]) -> dict[str, float]:
    """Mean loss per unit and the perplexity it implies."""
    loss = stats["loss_sum"] / max(stats["units"], 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, MAX_LOG_PERPLEXITY))}
