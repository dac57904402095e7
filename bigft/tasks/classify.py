"""Sequence classification with a new output head: one label per text."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from bigft.data.collate import collate_sequences
from bigft.data.readers import Record
from bigft.data.templates import eos_id, special_prefix, text_field
from bigft.errors import ConfigError, DataError
from bigft.tasks.base import (
    LossOutput,
    ModelHead,
    cut,
    forward_logits,
    loss_stats,
    pad_token_id,
)


class ClassifyTask:
    name = "classify"
    model_head: ModelHead = "sequence_classification"
    generates_in_eval: bool = False

    def __init__(self, cfg: Any, tokenizer: Any) -> None:
        if not cfg.labels:
            raise ConfigError(
                "task=classify needs its label set: set task.labels, e.g. task.labels=[neg,pos]"
            )
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.labels: list[str] = [str(label) for label in cfg.labels]
        self.num_labels: int | None = len(self.labels)
        self.max_length: int = cfg.max_length
        self.pad_id = pad_token_id(tokenizer)
        self.prefix = special_prefix(tokenizer)
        # The head reads the last token: an EOS there gives every text the same reading position.
        self.eos = eos_id(tokenizer, "task=classify")

    def encode(self, record: Record) -> list[dict]:
        label = self.label_index(record)
        text = text_field(record, "text")
        ids = [*self.prefix, *self.tokenizer(text, add_special_tokens=False)["input_ids"], self.eos]
        if len(ids) <= self.max_length:
            return [{"input_ids": ids, "label": label}]
        if self.cfg.overlong == "drop":
            return []
        return [
            {
                "input_ids": cut(ids, self.max_length, keep_last=True),
                "label": label,
                "truncated": True,
            }
        ]

    def label_index(self, record: Record) -> int:
        """The class id of a record's label: a label name, or an index into task.labels."""
        value = record.fields.get("label")
        if value is None:
            what = "field 'label' is null" if "label" in record.fields else "missing field 'label'"
            raise DataError(f"{record.source}: {what}")
        if isinstance(value, str) and value in self.labels:
            return self.labels.index(value)
        # CSV gives every value as text, so "1" also counts as an index when it is no label name.
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(self.labels):
            return value
        raise DataError(
            f"{record.source}: label {value!r} is not one of task.labels {self.labels} "
            f"(nor an index 0..{len(self.labels) - 1})"
        )

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = collate_sequences([ex["input_ids"] for ex in examples], self.pad_id)
        batch["labels"] = torch.tensor([ex["label"] for ex in examples], dtype=torch.long)
        batch["num_units"] = torch.tensor(len(examples), dtype=torch.long)
        return batch

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        logits = forward_logits(model, batch)
        loss_sum = F.cross_entropy(logits, batch["labels"], reduction="sum")
        return LossOutput(loss_sum, loss_stats(loss_sum, batch) | self._counts(logits, batch))

    def eval_stats(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        with torch.no_grad():
            logits = forward_logits(model, batch)
            loss_sum = F.cross_entropy(logits, batch["labels"], reduction="sum")
        return loss_stats(loss_sum, batch) | self._counts(logits, batch)

    def _counts(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        # Per-class true/false positives and false negatives add up across batches into macro-F1.
        pred, gold = logits.argmax(-1), batch["labels"]
        counts = {"correct": float((pred == gold).sum())}
        for c in range(len(self.labels)):
            counts[f"tp_{c}"] = float(((pred == c) & (gold == c)).sum())
            counts[f"fp_{c}"] = float(((pred == c) & (gold != c)).sum())
            counts[f"fn_{c}"] = float(((pred != c) & (gold == c)).sum())
        return counts

    def summarize(self, stats: dict[str, float]) -> dict[str, float]:
        units = max(stats["units"], 1.0)
        return {
            "loss": stats["loss_sum"] / units,
            "accuracy": 100.0 * stats.get("correct", 0.0) / units,
            "macro_f1": 100.0 * macro_f1(stats, len(self.labels)),
        }


def macro_f1(stats: dict[str, float], num_classes: int) -> float:
    """Mean F1 over the classes that occur in the gold labels or the predictions (as sklearn)."""
    scores = []
    for c in range(num_classes):
        tp, fp, fn = (stats.get(f"{k}_{c}", 0.0) for k in ("tp", "fp", "fn"))
        if tp + fp + fn > 0:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0
