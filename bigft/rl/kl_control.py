"""State that lives across RL steps: the KL coefficient and the running reward statistics.

Both go into checkpoints (`state_dict()` is plain JSON floats), so a resumed run continues with
the coefficient and normaliser the killed run had, and reproduces its rewards and losses.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "KLController",
    "RunningMoments",
    "kl_controller",
]


class FixedKLController:
    """A constant KL coefficient β."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. 2019's proportional controller, steering the measured KL to `target`.

    After each rollout batch of `n_steps` samples, e = clip(KL / target − 1, −0.2, 0.2) and
    β ← β · (1 + e · n_steps / horizon): β grows while the policy drifts further than the target
    and shrinks while it stays closer, by at most 20 % per `horizon` samples.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(
                f"adaptive KL needs target > 0 and horizon > 0, got {target}, {horizon}"
            )
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Only β is restored: target and horizon come from the (possibly changed) config.
        self.value = float(state["value"])


KLController = FixedKLController | AdaptiveKLController


def kl_controller(
    kl_coef: float, target: float | None = None, horizon: float = 10000
) -> KLController:
    """Fixed β when `target` is None, else adaptive starting from `kl_coef`."""
    if target is None:
        return FixedKLController(kl_coef)
    return AdaptiveKLController(kl_coef, target, horizon)


class RunningMoments:
    """Running count, mean and variance of everything seen, e.g. rewards for normalisation.

    Batches are merged with Chan et al.'s parallel update (exact for any split, unlike an
    exponential average), in float64. Under torch.distributed, `update` merges every rank's
    batch in rank order, so all ranks hold the same statistics, equal to one process seeing
    the whole batch.
    """

    def __init__(self) -> None:
        self.count = 0.0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean

    @property
    def var(self) -> float:
        """Unbiased variance (0 until two values have been seen)."""
        return self.m2 / (self.count - 1) if self.count > 1 else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def merge(self, count: float, mean: float, m2: float) -> None:
        """Fold in the moments (count, mean, M2) of another set of values."""
        if count <= 0:
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta * delta * self.count * count / total
        self.count = total

    def update(
        self, values: torch.Tensor, mask: torch.Tensor | None = None, *, across_ranks: bool = True
    ) -> None:
        """Add `values` (where `mask` is 1), and those of every other rank when distributed."""
        moments = batch_moments(values, mask)
        if across_ranks and dist.is_available() and dist.is_initialized():
            gathered = [torch.empty_like(moments) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, moments)
        else:
            gathered = [moments]
        for part in gathered:
            self.merge(*part.tolist())

    def normalize(
        self, values: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8
    ) -> torch.Tensor:
        """(values − mean) / std with the running statistics; shift_mean=False scales only."""
        std = self.std if self.count > 1 else 1.0
        out = values / (std + eps) if not shift_mean else (values - self.mean) / (std + eps)
        return out.to(values.dtype)

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = float(state["count"])
        self.mean = float(state["mean"])
        self.m2 = float(state["m2"])


def batch_moments(values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """[count, mean, M2] of the (masked) values, float64, on the values' device."""
    x = values.detach().to(torch.float64).reshape(-1)
    if mask is not None:
        x = x[mask.reshape(-1).bool()]
    count = x.new_tensor(float(x.numel()))
    if x.numel() == 0:
        return torch.stack([count, count, count])
    mean = x.mean()
    return torch.stack([count, mean, (x - mean).square().sum()])
