"""The model under test (and the red LM): loading a run or a model path, batched generation.

A prompt is formatted as the model was tuned to read it, by `bigft-generate`'s formatting (the
sft task's own, token for token): with the tokenizer's chat template when it has one, else with
the run's own `task.prompt_template` (from `<run>/config.yaml`), else as plain text; a
multi-turn chat without a template in bigft's plain chat format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from bigft.data.collate import attention_mask, pad_left
from bigft.engine.resume import CONFIG_FILE
from bigft.errors import ConfigError
from bigft.generate import complete, model_source
from bigft.generate import prompt_ids as request_ids
from bigft.models.decode import is_prefix_tuned
from bigft.outputs import MODEL_SUBDIR, OUTPUT_FILE, load_output, read_metadata
from bigft.run_dirs import finished_output


@dataclass
class Target:
    model: Any
    tokenizer: Any
    name: str
    # How prompts are formatted, as a task config: use_chat_template and prompt_template (the
    # run's, or "{instruction}": the plain text).
    task: Any


def run_config(path: Path) -> Any:
    """The config a run trained with: `<path>/config.yaml`, or its parent's when `path` is the
    run's model, merged or output directory; empty when there is none (a plain HF directory)."""
    for config in (path / CONFIG_FILE, path.parent / CONFIG_FILE):
        if config.is_file():
            return OmegaConf.load(config)
    return OmegaConf.create({})


def _check_causal_config(path: Path, key: str) -> None:
    config = path / "config.json"
    if not config.is_file():
        raise ConfigError(
            f"{key}={str(path)!r} is neither a bigft run (no {MODEL_SUBDIR}/{OUTPUT_FILE}) nor a "
            "model directory (no config.json)"
        )
    archs = json.loads(config.read_text()).get("architectures") or []
    if not any(a.endswith("ForCausalLM") for a in archs):
        raise ConfigError(
            f"{key}={str(path)!r} is not a causal LM (architectures: {archs}); a red-team "
            "target must generate text"
        )


def load_target(
    spec: str, *, key: str = "target", merged: bool = False, use_chat_template: bool = True
) -> Target:
    """A bigft run directory (adapter or full model; `merged`: its bigft-export) or a local
    Hugging Face causal-LM directory."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(f"{key}={spec!r} does not exist")
    device = "cuda" if torch.cuda.is_available() else None
    if finished_output(path, key=key) is not None:
        source = model_source(path, merged)  # <run>/model, <run>/merged or the output dir
        head = read_metadata(source)["head"]
        if head != "causal_lm":
            raise ConfigError(f"{key}={spec!r} holds a {head} model, not a causal LM")
        model, tokenizer = load_output(source, device=device)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        _check_causal_config(path, key)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, device_map=device).eval()
    template = (run_config(path).get("task") or {}).get("prompt_template") or "{instruction}"
    task = OmegaConf.create({"use_chat_template": use_chat_template, "prompt_template": template})
    return Target(model, tokenizer, str(spec), task)


def prompt_ids(target: Target, chat: list[dict[str, str]]) -> list[int]:
    """Token ids of a chat (ending with a user turn) as the model reads it before answering."""
    request = {"instruction": chat[0]["content"]} if len(chat) == 1 else {"messages": chat}
    return request_ids(request, target.tokenizer, target.task, chat=False)


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    *,
    samples: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> list[list[str]]:
    """`samples` completions of each prompt (token ids), decoded; one batched generate call."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    pad = eos if pad is None else pad
    if is_prefix_tuned(model):  # generate() drops a peft prefix (see bigft.models.decode)
        opts = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
        return [[complete(model, tokenizer, p, **opts) for _ in range(samples)] for p in prompts]
    # Left padding: every row's last prompt token sits at the same position, where decoding starts.
    ids, mask = pad_left(prompts, pad), attention_mask(prompts, left=True)
    width = ids.shape[1]
    device = next(model.parameters()).device
    sampling = temperature > 0
    kwargs: dict[str, Any] = {"do_sample": sampling}
    if sampling:
        kwargs.update(temperature=temperature, top_p=top_p)
    # Greedy samples are all alike, and generate() refuses num_return_sequences > 1 without
    # sampling: one greedy response per prompt, repeated.
    per_prompt = samples if sampling else 1
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max_new_tokens,
        num_return_sequences=per_prompt,
        pad_token_id=pad,
        eos_token_id=eos,
        **kwargs,
    )
    texts = [
        tokenizer.decode(_until_eos(row[width:].tolist(), eos), skip_special_tokens=True)
        for row in out
    ]
    rows = [texts[i * per_prompt : (i + 1) * per_prompt] for i in range(len(prompts))]
    return rows if sampling else [row * samples for row in rows]


def _until_eos(ids: list[int], eos: int | None) -> list[int]:
    return ids[: ids.index(eos)] if eos is not None and eos in ids else ids
