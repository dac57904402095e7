"""task=dpo's reference log-probabilities, computed once before training where no adapter can be
switched off (or where the user asks): no reference model is held while training.

`task.reference`:
- auto: lora / qlora / prefix use the policy with its adapters disabled (in `DPOTask.loss`, per
  micro-batch); full / freeze precompute with the initial model.
- precompute: one pass of the initial model over the train and eval pairs.
- a model path or run directory: that model, loaded for the pass and freed before training.

The pass runs after the engine is built, so under ZeRO-3 it runs on the sharded model: each rank
scores an equal share (padded, so every rank runs the same number of forwards, each of which
gathers shards from all), and the shares are summed across ranks. The results are cached next
to the tokenized data, keyed by the pairs' tokens and the reference model's identity, so a
resumed run reuses them instead of scoring the trained weights.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from bigft.data.tokenize import cache_key, write_json
from bigft.distributed import DistEnv
from bigft.distributed.comm import sum_across_ranks, sum_tensor_across_ranks
from bigft.tasks.dpo import REFERENCE_KEY, sequence_logps

log = logging.getLogger(__name__)

ADAPTER_METHODS = ("lora", "qlora", "prefix")


def reference_source(cfg: DictConfig) -> str | None:
    """'adapters', 'precompute', a model path / run directory, or None (no reference needed)."""
    if str(cfg.task.name) != "dpo" or str(cfg.task.loss) == "simpo":
        return None
    ref = str(cfg.task.reference)
    if ref == "auto":
        return "adapters" if str(cfg.method.name) in ADAPTER_METHODS else "precompute"
    return ref


def attach_reference_logps(
    cfg: DictConfig,
    task: Any,
    model: torch.nn.Module,
    parts: dict[str, list[dict]],
    env: DistEnv,
    *,
    autocast_dtype: str = "none",
) -> None:
    """Give every example of `parts` ({"train": [...], "eval": [...]}) its reference log-probs.

    `model` is the initial policy (the engine's module; sharded under ZeRO-3). Collective: every
    rank calls it with the same examples.
    """
    source = reference_source(cfg)
    if source is None or source == "adapters":
        return
    identity = _identity(cfg, source, autocast_dtype)
    paths = {part: _cache_path(cfg, part, examples, identity) for part, examples in parts.items()}
    cached = {part: _load(path, len(parts[part])) for part, path in paths.items()}
    # Decided together: a rank that missed the cache would otherwise run forwards alone.
    missing = sum_across_ranks({p: float(cached[p] is None) for p in sorted(parts)})
    todo = [part for part in sorted(parts) if missing[part] > 0 and parts[part]]
    if todo:
        with _reference_model(cfg, source, model, env) as reference:
            for part in todo:
                cached[part] = _score(task, reference, parts[part], cfg, env, autocast_dtype)
                if env.is_main and paths[part] is not None:
                    write_json(paths[part], cached[part])
    for part, examples in parts.items():
        for example, logps in zip(examples, cached[part] or [], strict=True):
            example[REFERENCE_KEY] = logps
    if env.is_main:
        counts = ", ".join(f"{len(parts[p])} {p}" for p in sorted(parts))
        how = f"computed ({', '.join(todo)})" if todo else "read from the cache"
        log.info("dpo reference (%s): log-probs of %s pairs %s", source, counts, how)


@torch.no_grad()
def _score(
    task: Any,
    model: torch.nn.Module,
    examples: list[dict],
    cfg: DictConfig,
    env: DistEnv,
    autocast_dtype: str,
) -> list[list[float]]:
    """[chosen, rejected] log-probs for every example; each rank scores a contiguous share."""
    share = math.ceil(len(examples) / env.world_size)
    first = env.rank * share
    mine = list(range(first, min(first + share, len(examples))))
    # Padding with a repeated example keeps the forwards equal on every rank (ZeRO-3 gathers).
    padded = mine + [len(examples) - 1] * (share - len(mine))
    totals = torch.zeros(len(examples), 2, dtype=torch.float64)
    size = int(cfg.trainer.eval_batch_size)
    was_training = model.training
    model.eval()
    for start in range(0, share, size):
        indices = padded[start : start + size]
        batch = task.collate([examples[i] for i in indices])
        batch = {k: v.to(env.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with _autocast(autocast_dtype, env.device):
            logps = sequence_logps(model, batch)[0].double().cpu()
        pairs = len(indices)
        for row, index in enumerate(indices):
            if start + row < len(mine):
                totals[index] = torch.stack([logps[row], logps[pairs + row]])
    model.train(was_training)
    return sum_tensor_across_ranks(totals).tolist()


def _autocast(dtype: str, device: torch.device) -> contextlib.AbstractContextManager:
    if dtype == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)


@contextlib.contextmanager
def _reference_model(cfg: DictConfig, source: str, policy: torch.nn.Module, env: DistEnv):
    """The initial policy itself, or an explicit reference loaded for the pass and then freed."""
    if source == "precompute":
        yield policy
        return
    model = load_reference(source, str(cfg.model.dtype), env.device)
    try:
        yield model
    finally:
        del model
        gc.collect()
        if env.device.type == "cuda":
            torch.cuda.empty_cache()


def load_reference(source: str, dtype: str, device: torch.device) -> torch.nn.Module:
    """A bigft run directory's (or output directory's) model, or a causal LM path / hub id."""
    from transformers import AutoModelForCausalLM

    from bigft.models.load import resolve_source, torch_dtype
    from bigft.outputs import load_output
    from bigft.run_dirs import finished_output

    output = finished_output(source, key="task.reference")
    if output is not None:
        model, _ = load_output(output, dtype=dtype)
    else:
        resolved = resolve_source(source, what="task.reference")
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=torch_dtype(dtype))
    return model.to(device).eval()


def _identity(cfg: DictConfig, source: str, autocast_dtype: str) -> dict[str, Any]:
    """What the reference log-probs depend on besides the tokens."""
    deepspeed = cfg.distributed.deepspeed
    numerics = {
        "model_dtype": str(cfg.model.dtype),
        "precision": str(cfg.trainer.precision),
        # trainer.precision=auto resolves by the device (bf16 autocast or none): key on the result.
        "autocast": autocast_dtype,
        "deepspeed": OmegaConf.to_container(deepspeed, resolve=True) if deepspeed else None,
    }
    if source == "precompute":
        # The initial policy: the base as loaded (4-bit for qlora), plus the method's
        # initialisation (a prefix's random vectors, seeded).
        return {
            **numerics,
            "model": OmegaConf.to_container(cfg.model, resolve=True),
            # A run directory (or any local model) retrained under the same path is a new model.
            "files": _files_fingerprint(str(cfg.model.path), "model.path"),
            "method": OmegaConf.to_container(cfg.method, resolve=True),
            "seed": int(cfg.trainer.seed),
        }
    files = _files_fingerprint(source, "task.reference")
    return {**numerics, "reference": source, "files": files}


def _files_fingerprint(source: str, key: str) -> list[Any]:
    """Names, sizes and times of a local model's files (a run's: those of its finished model,
    not its checkpoints or logs): a model rewritten in place is new."""
    from bigft.run_dirs import finished_output

    path = finished_output(source, key=key) or Path(source).expanduser()
    if not path.is_dir():
        return []
    return sorted(
        [str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns]
        for f in path.rglob("*")
        if f.is_file()
    )


def _cache_path(cfg: DictConfig, part: str, examples: list[dict], identity: dict) -> Path | None:
    if not cfg.data.cache:
        return None
    sides = [
        [ex["chosen_ids"], ex["chosen_start"], ex["rejected_ids"], ex["rejected_start"]]
        for ex in examples
    ]
    return Path(cfg.cache_dir) / "reference" / f"{part}-{cache_key(identity, sides)}.json"


def _load(path: Path | None, count: int) -> list[list[float]] | None:
    if path is None or not path.is_file():
        return None
    values = json.loads(path.read_text())
    return values if len(values) == count else None
