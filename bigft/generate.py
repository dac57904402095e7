"""`bigft-generate run=outputs/<run> prompt="..."`: try a tuned model on a few prompts.

Loads `<run>/model` (an adapter on its base, or a full model), or `<run>/merged` with
merged=true, and prints each prompt with its completion. Prompts come from `prompt=...` or
`prompts_file=...` (one per line, or JSONL records with a "prompt" field).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import MISSING, DictConfig

from bigft.config import CONF_DIR, typed_config
from bigft.errors import ConfigError, DataError, exit_on_user_error, run_hydra_app
from bigft.export import output_dir_of
from bigft.models.decode import complete_ids
from bigft.outputs import MERGED_SUBDIR, load_output, read_metadata

log = logging.getLogger("bigft")


@dataclass
class GenerateConfig:
    run: str = MISSING
    prompt: str | None = None
    prompts_file: str | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    merged: bool = False  # use <run>/merged, written by bigft-export
    chat: bool = False  # wrap each prompt in the tokenizer's chat template as a user turn
    seed: int = 0


def read_prompts(prompt: str | None, prompts_file: str | None) -> list[str]:
    """The prompts from exactly one of `prompt` and `prompts_file`."""
    if (prompt is None) == (prompts_file is None):
        raise ConfigError('give exactly one of prompt="..." and prompts_file=path')
    if prompt is not None:
        return [prompt]
    path = Path(prompts_file)
    if not path.is_file():
        raise ConfigError(f"prompts_file={prompts_file!r} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".jsonl":
        numbered = enumerate(lines, 1)
        prompts = [_jsonl_prompt(path, no, line) for no, line in numbered if line.strip()]
    else:
        prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


def _jsonl_prompt(path: Path, line_no: int, line: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{line_no}: not valid JSON ({err.msg})") from err
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
        raise DataError(f'{path}:{line_no}: expected an object with a string "prompt" field')
    return record["prompt"]


def model_source(run_dir: Path, merged: bool) -> Path:
    if not merged:
        return output_dir_of(run_dir)
    path = Path(run_dir) / MERGED_SUBDIR
    if not path.is_dir():
        raise ConfigError(f"{path} does not exist: write it with `bigft-export run={run_dir}`")
    return path


@torch.no_grad()
def complete(model: Any, tokenizer: Any, prompt: str, *, chat: bool, **opts) -> str:
    """One completion of `prompt` (the new text only)."""
    if chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    else:
        enc = tokenizer(prompt, return_tensors="pt")
    device = next(model.parameters()).device
    new = complete_ids(
        model,
        enc["input_ids"].to(device),
        max_new_tokens=opts["max_new_tokens"],
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        temperature=opts["temperature"],
        top_p=opts["top_p"],
    )
    return tokenizer.decode(new, skip_special_tokens=True)


def generate(
    run_dir: Path | str,
    prompts: list[str],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    merged: bool = False,
    chat: bool = False,
    seed: int = 0,
) -> list[str]:
    """Completions of `prompts` by the model a run saved (or its merged export)."""
    source = model_source(Path(run_dir), merged)
    meta = read_metadata(source)
    if meta["head"] != "causal_lm":
        raise ConfigError(f"{source} holds a {meta['head']} model, which does not generate text")
    device = "cuda" if torch.cuda.is_available() else None
    model, tokenizer = load_output(source, device=device)
    if chat and not tokenizer.chat_template:
        raise ConfigError("chat=true, but the tokenizer has no chat template")
    torch.manual_seed(seed)
    opts = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
    return [complete(model, tokenizer, p, chat=chat, **opts) for p in prompts]


@hydra.main(config_path=str(CONF_DIR), config_name="generate", version_base="1.3")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    cfg = typed_config(cfg, GenerateConfig)
    prompts = read_prompts(cfg.prompt, cfg.prompts_file)
    completions = generate(
        cfg.run,
        prompts,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        merged=cfg.merged,
        chat=cfg.chat,
        seed=cfg.seed,
    )
    for prompt, completion in zip(prompts, completions, strict=True):
        print(f"### prompt\n{prompt}\n### completion\n{completion}\n", flush=True)


def main() -> None:
    run_hydra_app(_hydra_main)


if __name__ == "__main__":
    main()
