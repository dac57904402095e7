"""task=grpo's data: each record is a prompt the policy answers during training.

The prompt is formatted as task=sft formats an instruction (the chat template, or
task.prompt_template without one), so RL continues an sft model in the format it learnt. The
record's other fields travel with it to `reward.fn` (e.g. the answer a verifier checks against).
The per-step work (rollout → score → advantages → updates) is bigft/rl/loop.py's.
"""

from __future__ import annotations

from typing import Any

import torch

from bigft.data.readers import Record
from bigft.data.templates import plain_chat_segments, special_prefix, uses_chat_template
from bigft.errors import DataError
from bigft.tasks.base import LossOutput, ModelHead, pad_token_id
from bigft.tasks.dpo import _prompt


class GRPOTask:
    name = "grpo"
    model_head: ModelHead = "causal_lm"
    num_labels: int | None = None
    generates_in_eval = True

    def __init__(self, cfg: Any, tokenizer: Any) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.pad_id = pad_token_id(tokenizer)
        self.templated = uses_chat_template(tokenizer, cfg.use_chat_template)

    def encode(self, record: Record) -> list[dict]:
        prompt = _prompt(record)
        ids = self._prompt_ids(prompt, record)
        if len(ids) + 1 > self.cfg.max_length:
            if self.cfg.overlong == "drop":
                return []
            raise DataError(
                f"{record.source}: the prompt is {len(ids)} tokens, so no response fits in "
                f"task.max_length={self.cfg.max_length}; raise task.max_length or set "
                "task.overlong=drop"
            )
        text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        extra = {k: v for k, v in record.fields.items() if k not in ("prompt", "messages")}
        return [{"prompt_ids": ids, "prompt": text, "fields": extra}]

    def _prompt_ids(self, prompt: str | list[dict[str, str]], record: Record) -> list[int]:
        if isinstance(prompt, str) and not self.templated:
            try:
                text = self.cfg.prompt_template.format_map({**record.fields, "instruction": prompt})
            except KeyError as err:
                raise DataError(f"{record.source}: the prompt template needs field {err}") from None
            return special_prefix(self.tokenizer) + _tokens(self.tokenizer, text)
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if self.templated:
            rendered = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            return _tokens(self.tokenizer, rendered)
        segments = plain_chat_segments(messages, self.tokenizer)
        return [t for seg, _ in segments for t in seg] + _tokens(self.tokenizer, "<|assistant|>\n")

    def collate(self, examples: list[dict]) -> dict[str, Any]:
        raise NotImplementedError("task=grpo rolls out its prompts in bigft/rl/loop.py")

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        raise NotImplementedError("task=grpo trains through bigft/rl/loop.py, not Task.loss")

    def eval_stats(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, float]:
        raise NotImplementedError("task=grpo evaluates through bigft/rl/loop.py")

    def summarize(self, stats: dict[str, float]) -> dict[str, float]:
        return stats


def _tokens(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
