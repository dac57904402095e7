"""Decoding one prompt: greedy or sampled, shared by task eval and `bigft-generate`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def is_prefix_tuned(model: Any) -> bool:
    configs = getattr(model, "peft_config", None) or {}
    return any(str(getattr(c, "peft_type", "")).endswith("PREFIX_TUNING") for c in configs.values())


def _next_token(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # Keep the smallest set of tokens whose probability reaches top_p (always the first).
    drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
    sorted_probs[drop] = 0.0
    choice = torch.multinomial(sorted_probs, 1)
    return order.gather(-1, choice).squeeze(-1)


def _forward_loop(model: Any, ids: torch.Tensor, max_new_tokens: int, eos: int | None, **sample):
    """Decode by re-running the full forward each step (no KV cache).

    Used for prefix tuning: with transformers 5.x + peft 0.21, model.generate() silently drops
    the prefix (peft hands it over as `past_key_values`, which generate now replaces).
    """
    start = ids.shape[1]
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1]
        token = _next_token(logits, **sample)
        ids = torch.cat([ids, token[:, None]], dim=1)
        if eos is not None and int(token) == eos:
            break
    return ids[0, start:]


@torch.no_grad()
def complete_ids(
    model: Any,
    prompt_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_id: int | None,
    pad_id: int | None,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> list[int]:
    """New token ids after `prompt_ids` (shape [1, n]), up to and excluding the first EOS."""
    # DDP and DeepSpeed wrap the model; generation lives on the wrapped module.
    model = model if hasattr(model, "generate") else model.module
    sample = {"temperature": temperature, "top_p": top_p}
    if is_prefix_tuned(model):
        new = _forward_loop(model, prompt_ids, max_new_tokens, eos_id, **sample)
    else:
        kwargs: dict[str, Any] = {"do_sample": temperature > 0}
        if kwargs["do_sample"]:
            kwargs.update(sample)
        out = model.generate(
            input_ids=prompt_ids,
            attention_mask=torch.ones_like(prompt_ids),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
            **kwargs,
        )
        new = out[0, prompt_ids.shape[1] :]
    ids = new.tolist()
    return ids[: ids.index(eos_id)] if eos_id is not None and eos_id in ids else ids


def greedy_answers(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int] | torch.Tensor],
    *,
    max_new_tokens: int,
    pad_id: int | None,
) -> list[str]:
    """Greedy completions of each prompt (token ids), decoded up to the first EOS.

    One prompt at a time: no padding, so an answer cannot depend on the batch it came in.
    """
    device = next(model.parameters()).device
    answers = []
    for ids in prompt_ids:
        new = complete_ids(
            model,
            torch.as_tensor(ids, dtype=torch.long, device=device).unsqueeze(0),
            max_new_tokens=max_new_tokens,
            eos_id=tokenizer.eos_token_id,
            pad_id=pad_id,
        )
        answers.append(tokenizer.decode(new, skip_special_tokens=True))
    return answers
