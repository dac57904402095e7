"""Instruction tuning: the loss covers response tokens only; eval can also generate and score."""

from __future__ import annotations

from typing import Any

import torch

from bigft.data.collate import IGNORE_INDEX, attention_mask, collate_causal, pad_left, pad_right
from bigft.data.readers import Record
from bigft.data.templates import sft_tokens
from bigft.errors import DataError
from bigft.models.decode import greedy_answers
from bigft.tasks.base import LossOutput, ModelHead, loss_stats, pad_token_id
from bigft.tasks.lm import causal_loss_sum, loss_metrics


class SFTTask:
    name = "sft"
    model_head: ModelHead = "causal_lm"
    num_labels: int | None = None

    def __init__(self, cfg: Any, tokenizer: Any) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.max_length: int = cfg.max_length
        self.pad_id = pad_token_id(tokenizer)
        self.generates_in_eval: bool = cfg.eval_generate

    def encode(self, record: Record) -> list[dict]:
        tokens = sft_tokens(record, self.tokenizer, self.cfg)
        example: dict = {"input_ids": tokens.input_ids, "labels": tokens.labels}
        if len(tokens.input_ids) > self.max_length:
            if self.cfg.overlong == "drop":
                return []
            example = self._truncate(example, record)
        if self.cfg.eval_generate:
            example["prompt_ids"] = tokens.prompt_ids
            example["reference_ids"] = self.tokenizer(tokens.reference, add_special_tokens=False)[
                "input_ids"
            ]
        return [example]

    def _truncate(self, example: dict, record: Record) -> dict:
        # Cut from the right: the prompt's start is what the response depends on.
        labels = example["labels"][: self.max_length]
        if all(label == IGNORE_INDEX for label in labels):
            prompt_length = next(i for i, x in enumerate(example["labels"]) if x != IGNORE_INDEX)
            raise DataError(
                f"{record.source}: the prompt is {prompt_length} tokens, so no response token "
                f"fits in task.max_length={self.max_length}; raise task.max_length or set "
                "task.overlong=drop"
            )
        return {
            "input_ids": example["input_ids"][: self.max_length],
            "labels": labels,
            "truncated": True,
        }

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = collate_causal(examples, self.pad_id)
        if self.cfg.eval_generate and all("prompt_ids" in ex for ex in examples):
            prompts = [ex["prompt_ids"] for ex in examples]
            batch["gen_prompt_ids"] = pad_left(prompts, self.pad_id)
            batch["gen_prompt_mask"] = attention_mask(prompts, left=True)
            batch["gen_reference_ids"] = pad_right(
                [ex["reference_ids"] for ex in examples], IGNORE_INDEX
            )
        return batch

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        loss_sum = causal_loss_sum(model, batch)
        return LossOutput(loss_sum, loss_stats(loss_sum, batch))

    def eval_stats(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        with torch.no_grad():
            stats = loss_stats(causal_loss_sum(model, batch), batch)
            if "gen_prompt_ids" in batch:
                predictions = self.generate(model, batch)
                references = [
                    self.tokenizer.decode(
                        row[row != IGNORE_INDEX].tolist(), skip_special_tokens=True
                    )
                    for row in batch["gen_reference_ids"]
                ]
                stats["exact_match"] = float(exact_matches(predictions, references))
                stats["generated"] = float(len(predictions))
        return stats

    def generate(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[str]:
        """Greedy completions of the batch's prompts, decoded up to the first EOS."""
        rows = [
            ids[mask.bool()]
            for ids, mask in zip(batch["gen_prompt_ids"], batch["gen_prompt_mask"], strict=True)
        ]
        return greedy_answers(
            model, self.tokenizer, rows, max_new_tokens=self.cfg.max_new_tokens, pad_id=self.pad_id
        )

    def summarize(self, stats: dict[str, float]) -> dict[str, float]:
        metrics = loss_metrics(stats)
        if stats.get("generated"):
            metrics["exact_match"] = 100.0 * stats["exact_match"] / stats["generated"]
        return metrics


def exact_matches(predictions: list[str], references: list[str]) -> int:
    """How many predictions equal their reference, ignoring surrounding whitespace."""
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True))
