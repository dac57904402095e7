"""`bigft-generate run=outputs/<run> instruction="..."`: try a tuned model on a few prompts.

Loads `<run>/model` (an adapter on its base, or a full model), or `<run>/merged` with
merged=true, and prints each prompt with its completion. What to ask, exactly one of:

- `instruction="..."` (with `input="..."` optionally) or `messages=[{role: user, content: "..."}]`:
  formatted as the run's task formatted its training prompts (sft, dpo, grpo or ppo: its chat
  template, or its `task.prompt_template`, read from `<run>/config.yaml`), so the tuned model
  sees what it learnt to answer without the user knowing the template;
- `prompt="..."`: raw text, given to the model as it is (no escapes are interpreted: a `\\n`
  typed in the shell stays two characters, see README for real newlines);
- `prompts_file=...`: one raw prompt per line, or JSONL records with a "prompt" (raw), an
  "instruction" (and "input") or a "messages" field.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import MISSING, DictConfig, OmegaConf

from bigft.config import CONF_DIR, typed_config
from bigft.config.schema import TaskConfig
from bigft.data.readers import Record
from bigft.data.templates import sft_tokens
from bigft.engine.resume import CONFIG_FILE
from bigft.errors import ConfigError, DataError, exit_on_user_error, run_hydra_app
from bigft.models.decode import complete_ids
from bigft.outputs import MERGED_SUBDIR, load_output, read_metadata
from bigft.run_dirs import output_dir_of

log = logging.getLogger("bigft")

# The tasks that format a prompt as sft does (the chat template, or task.prompt_template): a
# dpo or RL run answers in the format its sft run learnt.
PROMPTED_TASKS = ("sft", "dpo", "grpo", "ppo")

# A request is a raw prompt (str) or the fields of an sft record to format (dict).
Request = str | dict[str, Any]
REQUEST_KEYS = ("prompt", "prompts_file", "instruction", "messages")


@dataclass
class GenerateConfig:
    run: str = MISSING
    prompt: str | None = None
    prompts_file: str | None = None
    instruction: str | None = None
    input: str | None = None  # with instruction: the alpaca record's optional input
    messages: list[dict[str, str]] | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    merged: bool = False  # use <run>/merged, written by bigft-export
    chat: bool = False  # wrap each raw prompt in the tokenizer's chat template as a user turn
    seed: int = 0


def read_requests(cfg: Any) -> list[Request]:
    """The requests from exactly one of prompt, prompts_file, instruction and messages."""
    given = [key for key in REQUEST_KEYS if cfg.get(key) is not None]
    if len(given) != 1:
        raise ConfigError(
            'give exactly one of instruction="..." (with input="..." optionally), '
            'messages=[...], prompt="..." and prompts_file=path'
            + (f" (got {' and '.join(given)})" if given else "")
        )
    if cfg.get("input") is not None and given != ["instruction"]:
        raise ConfigError('input="..." goes with instruction="...": the record\'s optional input')
    if cfg.get("instruction") is not None:
        record = {"instruction": cfg.instruction}
        return [record | ({"input": cfg.input} if cfg.get("input") else {})]
    if cfg.get("messages") is not None:
        return [{"messages": OmegaConf.to_container(cfg.messages, resolve=True)}]
    return read_prompts(cfg.get("prompt"), cfg.get("prompts_file"))


def read_prompts(prompt: str | None, prompts_file: str | None) -> list[Request]:
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
        prompts = [_jsonl_request(path, no, line) for no, line in numbered if line.strip()]
    else:
        prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


def _jsonl_request(path: Path, line_no: int, line: str) -> Request:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{line_no}: not valid JSON ({err.msg})") from err
    if isinstance(record, dict) and isinstance(record.get("prompt"), str):
        return record["prompt"]
    if isinstance(record, dict) and ("instruction" in record or "messages" in record):
        return {k: v for k, v in record.items() if k in ("instruction", "input", "messages")}
    raise DataError(
        f'{path}:{line_no}: expected an object with a string "prompt", an "instruction" or '
        '"messages" field'
    )


def model_source(run_dir: Path, merged: bool) -> Path:
    if not merged:
        return output_dir_of(run_dir)
    path = Path(run_dir) / MERGED_SUBDIR
    if not path.is_dir():
        raise ConfigError(f"{path} does not exist: write it with `bigft-export run={run_dir}`")
    return path


def run_task(run_dir: Path, source: Path) -> DictConfig:
    """The task settings the run trained with (its config.yaml), for formatting as it did."""
    for candidate in (Path(run_dir), source.parent):
        path = candidate / CONFIG_FILE
        if path.is_file():
            task = OmegaConf.load(path).get("task")
            break
    else:
        raise ConfigError(
            f"run={str(run_dir)!r} has no {CONFIG_FILE}, which says how the run formatted its "
            'prompts: point run= at the run directory, or give the raw text with prompt="..."'
        )
    if task is None or str(task.get("name")) not in PROMPTED_TASKS:
        name = None if task is None else task.get("name")
        raise ConfigError(
            f"run={str(run_dir)!r} was trained with task={name}, which has no prompt format: "
            "instruction= and messages= need a run of task="
            + "|".join(PROMPTED_TASKS)
            + '; give the raw text with prompt="..."'
        )
    return OmegaConf.merge(OmegaConf.structured(TaskConfig), task)


def prompt_ids(request: Request, tokenizer: Any, task: DictConfig | None, *, chat: bool) -> list:
    """The token ids generation starts from."""
    if isinstance(request, str):
        if not chat:
            return list(tokenizer(request)["input_ids"])
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": request}], tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    # The run's own sft formatting, with an empty response: what precedes it is the prompt,
    # token for token as in training.
    if "messages" in request:
        messages = request["messages"]
        last = messages[-1] if isinstance(messages, list) and messages else None
        if isinstance(last, dict) and last.get("role") == "assistant":
            raise DataError("messages ends with an assistant turn: end with the turn to answer")
        fields = {"messages": [*messages, {"role": "assistant", "content": ""}]}
    else:
        fields = {**request, "output": ""}
    return sft_tokens(Record(fields, "the request"), tokenizer, task).prompt_ids


@torch.no_grad()
def complete(model: Any, tokenizer: Any, ids: list[int], **opts: Any) -> str:
    """One completion of the prompt `ids` (the new text only)."""
    device = next(model.parameters()).device
    new = complete_ids(
        model,
        torch.tensor([ids], device=device),
        max_new_tokens=opts["max_new_tokens"],
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        temperature=opts["temperature"],
        top_p=opts["top_p"],
    )
    return tokenizer.decode(new, skip_special_tokens=True)


def generate(
    run_dir: Path | str,
    prompts: list[Request],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    merged: bool = False,
    chat: bool = False,
    seed: int = 0,
    shown: list[str] | None = None,
) -> list[str]:
    """Completions of `prompts` by the model a run saved (or its merged export).

    `shown`, when given, receives each prompt as the model saw it (formatted requests included).
    """
    source = model_source(Path(run_dir), merged)
    meta = read_metadata(source)
    if meta["head"] != "causal_lm":
        raise ConfigError(f"{source} holds a {meta['head']} model, which does not generate text")
    task = run_task(Path(run_dir), source) if any(isinstance(p, dict) for p in prompts) else None
    device = "cuda" if torch.cuda.is_available() else None
    model, tokenizer = load_output(source, device=device)
    if chat and not tokenizer.chat_template:
        raise ConfigError("chat=true, but the tokenizer has no chat template")
    torch.manual_seed(seed)
    opts = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
    completions = []
    for request in prompts:
        ids = prompt_ids(request, tokenizer, task, chat=chat)
        if shown is not None:
            shown.append(tokenizer.decode(ids, skip_special_tokens=True))
        completions.append(complete(model, tokenizer, ids, **opts))
    return completions


@hydra.main(config_path=str(CONF_DIR), config_name="generate", version_base="1.3")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    cfg = typed_config(cfg, GenerateConfig)
    shown: list[str] = []
    completions = generate(
        cfg.run,
        read_requests(cfg),
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        merged=cfg.merged,
        chat=cfg.chat,
        seed=cfg.seed,
        shown=shown,
    )
    for prompt, completion in zip(shown, completions, strict=True):
        print(f"### prompt\n{prompt}\n### completion\n{completion}\n", flush=True)


def main() -> None:
    run_hydra_app(_hydra_main)


if __name__ == "__main__":
    main()
