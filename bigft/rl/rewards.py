"""Where rewards come from: Python functions, reward models, and weighted sums of them.

A reward source scores a batch of (prompt, response) texts, returning a float32 tensor [batch].
`reward.fn=<module>:<function>` names a function in an importable module (or a .py file):

    def score(prompt: str, response: str) -> float            # one sample at a time
    def score(prompts: list[str], responses: list[str]) -> list[float]   # with score.batched = True

Extra fields of the prompt's record (e.g. the reference answer a verifier checks against) are
passed as keyword arguments when the function names them or takes **kwargs (batched: lists).
A reward model source is `reward_model.RewardModelScorer`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import numbers
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from bigft.errors import ConfigError, DataError, TrainingError

__all__ = [
    "FunctionReward",
    "RewardScores",
    "RewardSource",
    "RewardSum",
    "apply_missing_eos_penalty",
    "batched",
    "load_function",
    "reward_stats",
    "summarize_reward_stats",
]


class RewardSource(Protocol):
    name: str

    def score(
        self, prompts: Sequence[str], responses: Sequence[str], fields: Sequence[dict] | None = None
    ) -> torch.Tensor:
        """Rewards [batch], float32, one per (prompt, response)."""


def batched(fn: Callable) -> Callable:
    """Mark a reward function as taking lists (prompts, responses) and returning a list."""
    fn.batched = True  # type: ignore[attr-defined]
    return fn


def load_function(spec: str, key: str = "reward.fn") -> Callable:
    """The function `spec` = "<module>:<function>" names; the module may be a path to a .py file.

    Anything the user can fix (a malformed spec, a missing module or function) is a ConfigError
    naming `key` and the value; an exception raised while the module runs is the module's own
    bug and propagates with its traceback.
    """
    module_name, sep, fn_name = spec.rpartition(":")
    if not sep or not module_name or not fn_name:
        raise ConfigError(
            f"{key}={spec!r}: expected <module>:<function>, e.g. my_rewards:score "
            "(a module on PYTHONPATH or a path to a .py file)"
        )
    module = _import_module(module_name, f"{key}={spec!r}")
    fn = getattr(module, fn_name, None)
    if fn is None:
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ConfigError(
            f"{key}={spec!r}: module {module_name!r} has no function {fn_name!r} "
            f"(it defines: {', '.join(names) or 'nothing callable'})"
        )
    if not callable(fn):
        raise ConfigError(f"{key}={spec!r}: {fn_name!r} is a {type(fn).__name__}, not a function")
    return fn


def _import_module(name: str, where: str) -> Any:
    if name.endswith(".py"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"{where}: file {name!r} does not exist")
        spec = importlib.util.spec_from_file_location(f"bigft_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[spec.name] = module  # type: ignore[union-attr]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is not None and name.startswith(err.name):
            raise ConfigError(
                f"{where}: cannot import module {name!r} ({err}); put its directory on "
                "PYTHONPATH or give a path to the .py file"
            ) from None
        raise  # the module exists but imports something missing: its own problem


class FunctionReward:
    """A reward source calling a Python function, per sample or batched."""

    def __init__(
        self, fn: Callable | str, *, name: str | None = None, batched: bool | None = None
    ) -> None:
        self.spec = fn if isinstance(fn, str) else f"{fn.__module__}:{fn.__qualname__}"
        self.fn = load_function(fn) if isinstance(fn, str) else fn
        self.name = name or getattr(self.fn, "__name__", "fn")
        self.batched = bool(getattr(self.fn, "batched", False) if batched is None else batched)
        self._wanted, self._required = _keyword_params(self.fn)

    def score(
        self, prompts: Sequence[str], responses: Sequence[str], fields: Sequence[dict] | None = None
    ) -> torch.Tensor:
        fields = list(fields) if fields is not None else [{} for _ in prompts]
        self._check_required(fields)
        if self.batched:
            kwargs = {k: [f.get(k) for f in fields] for k in self._keys(fields)}
            values = self.fn(list(prompts), list(responses), **kwargs)
            values = list(values) if not isinstance(values, torch.Tensor) else values.tolist()
            if len(values) != len(prompts):
                raise TrainingError(
                    f"reward.fn={self.spec!r} returned {len(values)} rewards for "
                    f"{len(prompts)} responses"
                )
        else:
            values = [
                self.fn(p, r, **{k: f[k] for k in self._keys([f]) if k in f})
                for p, r, f in zip(prompts, responses, fields, strict=True)
            ]
        return torch.tensor([self._number(v, i) for i, v in enumerate(values)], dtype=torch.float32)

    def _check_required(self, fields: list[dict]) -> None:
        for i, f in enumerate(fields):
            missing = sorted(self._required - set(f))
            if missing:
                present = ", ".join(sorted(f)) or "none"
                raise DataError(
                    f"reward.fn={self.spec!r} takes {missing[0]!r}, but the record of prompt {i} "
                    f"has no such field (fields: {present})"
                )

    def _keys(self, fields: list[dict]) -> list[str]:
        present = sorted({k for f in fields for k in f})
        return present if self._wanted is None else [k for k in present if k in self._wanted]

    def _number(self, value: Any, index: int) -> float:
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        # numbers.Real takes numpy's scalars too (and bool: a verifier's pass/fail).
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise TrainingError(
                f"reward.fn={self.spec!r} returned {value!r} for sample {index}; expected a finite "
                "number"
            )
        return float(value)


def _keyword_params(fn: Callable) -> tuple[set[str] | None, set[str]]:
    """(record fields a function takes besides prompt and response, None for all: **kwargs;
    those of them without a default)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature take no extra fields
        return set(), set()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    extra = [p for p in params[2:] if p.kind in kinds]
    required = {p.name for p in extra if p.default is inspect.Parameter.empty}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None, required
    return {p.name for p in extra}, required


@dataclass
class RewardScores:
    """The reward each sample trains on, and every source's own score (for metrics)."""

    total: torch.Tensor
    per_source: dict[str, torch.Tensor] = field(default_factory=dict)


class RewardSum:
    """Σ weight · source, over sources; `eval_only` sources are scored and reported only.

    An eval-only source is how a ground-truth scorer is watched next to a learned reward model:
    if the reward-model score rises while the ground truth does not, the policy is hacking it.
    """

    def __init__(self, sources: Sequence[tuple[RewardSource, float, bool]]) -> None:
        names = [s.name for s, _, _ in sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"reward sources need distinct names, got {names}")
        if not any(not eval_only for _, _, eval_only in sources):
            raise ConfigError("every reward source is eval-only: nothing to train on")
        self.sources = list(sources)

    def score(
        self, prompts: Sequence[str], responses: Sequence[str], fields: Sequence[dict] | None = None
    ) -> RewardScores:
        total = torch.zeros(len(prompts), dtype=torch.float32)
        per_source = {}
        for source, weight, eval_only in self.sources:
            values = source.score(prompts, responses, fields).float().cpu()
            per_source[source.name] = values
            if not eval_only:
                total += weight * values
        return RewardScores(total, per_source)


def apply_missing_eos_penalty(
    rewards: torch.Tensor, ended_with_eos: torch.Tensor, penalty: float | None
) -> torch.Tensor:
    """Subtract `penalty` from responses cut off by max_new_tokens before their EOS.

    A reward model scores a truncated response as if it were complete; without the penalty the
    policy can learn that rambling past the limit costs nothing.
    """
    if not penalty:
        return rewards
    return rewards - penalty * (~ended_with_eos.bool()).to(rewards.device, rewards.dtype)


def reward_stats(scores: RewardScores) -> dict[str, float]:
    """Summable sums (across micro-batches and ranks) behind the reward metrics."""
    stats = {"samples": float(scores.total.numel())}
    for name, values in {"reward": scores.total, **_prefixed(scores.per_source)}.items():
        v = values.double()
        stats[f"{name}_sum"] = float(v.sum())
        stats[f"{name}_sq_sum"] = float(v.square().sum())
    return stats


def summarize_reward_stats(stats: dict[str, float]) -> dict[str, float]:
    """Mean and std of the total reward and of every source, from summed `reward_stats`."""
    n = stats.get("samples", 0.0)
    out = {}
    for key in stats:
        if not key.endswith("_sq_sum"):
            continue
        name = key[: -len("_sq_sum")]
        mean = stats[f"{name}_sum"] / max(n, 1.0)
        var = max(stats[key] / max(n, 1.0) - mean * mean, 0.0) * n / max(n - 1, 1.0)
        out[name] = mean
        out[f"{name}_std"] = math.sqrt(var)
    return out


def _prefixed(per_source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"reward_{name}": values for name, values in per_source.items()}
