"""What every objective provides to the one training loop.

A task turns records into tokenized examples, examples into a batch, and a batch into a summed
loss plus summable statistics. Sums (never means) cross micro-batches and ranks: the loop divides
the loss by the number of loss units (`batch["num_units"]`: target tokens, examples or pairs) of the
whole accumulation window, so micro-batch 1 × accumulation 4 equals micro-batch 4 × accumulation 1.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

from bigft.data.collate import IGNORE_INDEX
from bigft.data.readers import Record
from bigft.errors import ConfigError
from bigft.models.load import packed_rows_unmasked

__all__ = ["IGNORE_INDEX", "LossOutput", "ModelHead", "Task", "cut", "forward_logits", "loss_stats"]

ModelHead = Literal["causal_lm", "sequence_classification"]


@dataclass
class LossOutput:
    # Loss summed over the micro-batch's loss units; the loop divides by the window's units.
    loss_sum: torch.Tensor
    # Summable statistics (e.g. {"correct": 3.0, "pairs": 4.0}); the task's `summarize` turns
    # their totals into metrics. Plain floats, so they add across micro-batches and ranks.
    stats: dict[str, float] = field(default_factory=dict)


class Task(Protocol):
    name: str
    # Which transformers Auto class the model is loaded with.
    model_head: ModelHead
    # For sequence_classification heads: the number of outputs (1 for a reward model).
    num_labels: int | None
    # Whether eval generates text (a different number of forwards per example).
    generates_in_eval: bool

    def encode(self, record: Record) -> list[dict]:
        """Tokenize one record into zero or more examples (dpo: one per pair of a ranking).

        Returns [] for an over-long record under `overlong=drop`; raises DataError naming
        `record.source` for a missing field or an unusable value. An example cut to
        `max_length` carries `"truncated": True`, which `tokenize_records` counts and removes.
        """

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Pad examples into a batch. Must include `num_units` (a 0-dim long tensor) and
        `num_tokens` (non-padding tokens, for throughput)."""

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        """Forward pass; summed loss and summable training statistics."""

    def eval_stats(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        """Summable statistics for evaluation, including `loss_sum` and `units` (no grad)."""

    def summarize(self, stats: dict[str, float]) -> dict[str, float]:
        """Metrics from summed statistics, e.g. {"loss": ..., "accuracy": ...}."""


def pad_token_id(tokenizer: Any) -> int:
    """The id batches are padded with; it must equal the model config's pad_token_id."""
    if tokenizer.pad_token_id is None:
        raise ConfigError(
            "the tokenizer has no pad token; set one (commonly the EOS token) before building the "
            "task, and the same id as the model's config.pad_token_id"
        )
    return tokenizer.pad_token_id


def forward_logits(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], *, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """The model's logits for the batch's tokens, in float32 for a stable loss.

    Labels are never passed to the model: tasks compute summed losses themselves, whereas
    transformers would return a mean (wrong under gradient accumulation). use_cache=False: models
    otherwise build a KV cache on every forward, training included (config.use_cache defaults to
    true), which costs time and, for packed rows, switches off the mask that keeps examples apart.
    A prefix-tuned model still gets its prefix: peft passes it as a cache of its own.

    `keep` (bool, [batch, length]) asks a causal LM for the logits of those positions only,
    flattened to [kept, vocab]: the output layer then skips every position without a target.
    """
    inputs: dict[str, Any] = {"input_ids": batch["input_ids"], "use_cache": False}
    if keep is not None and _takes_logits_to_keep(model):
        inputs["logits_to_keep"] = keep
    quiet: contextlib.AbstractContextManager = contextlib.nullcontext()
    if "position_ids" in batch:
        inputs["position_ids"] = batch["position_ids"]
        quiet = packed_rows_unmasked()
    else:
        inputs["attention_mask"] = batch["attention_mask"]
    with quiet:
        logits = model(**inputs).logits.float()
    if keep is not None and logits.dim() == 3:  # a model without logits_to_keep: all positions
        logits = logits[keep]
    return logits


def _takes_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the causal LM under the DDP / DeepSpeed / peft wrappers selects logits itself
    (every transformers 5 causal LM does; remote code may not)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return _forward_takes_logits_to_keep(type(model))


@functools.cache
def _forward_takes_logits_to_keep(model_class: type) -> bool:
    # Once per model class, not on every forward of the loop.
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


# Packed rows (bigft/data/packing.py) carry position ids that restart at each example and no
# attention mask. From those, transformers' masking_utils finds the examples (a new one wherever
# the position does not rise by one) and builds a block-causal mask for sdpa and eager attention,
# and flash-attention kernels take the same position ids as variable-length boundaries. A 4-D
# [batch, 1, L, L] mask built here would serve sdpa and eager only, and cost L² per row. The
# detection is skipped whenever a KV cache exists, hence use_cache=False above: with a cache,
# every packed example would attend to the ones before it in its row (tests/unit/test_packing.py).


def cut(ids: list[int], max_length: int, *, keep_last: bool = False) -> list[int]:
    """The first `max_length` ids; with keep_last, the final id (EOS) survives the cut."""
    if len(ids) <= max_length:
        return ids
    return [*ids[: max_length - 1], ids[-1]] if keep_last else ids[:max_length]


def loss_stats(loss_sum: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """The summable pair every `summarize` starts from, in training and in evaluation alike."""
    return {"loss_sum": float(loss_sum.detach()), "units": float(batch["num_units"])}
