"""Optimizers (torch AdamW, bitsandbytes 8-bit / paged AdamW, SGD) and learning-rate schedules.

Under trainer.precision=bf16-true, AdamW can write its updates into the bf16 weights with
stochastic rounding (StochasticRoundingAdamW, here) or Kahan summation (optimi's AdamW).
"""

from __future__ import annotations

import math

import torch

from bigft.config.schema import OptimConfig
from bigft.errors import ConfigError


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # No weight decay on biases and norm weights (1-D tensors), as is standard for transformers.
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(
    model: torch.nn.Module, cfg: OptimConfig, *, bf16_update: str = "none"
) -> torch.optim.Optimizer:
    """The optimizer of `optim.name`; `bf16_update` (resolved: stochastic | kahan | none) says
    how AdamW writes into bf16 weights (see bigft.config.precision.bf16_update_of)."""
    groups = _param_groups(model, cfg.weight_decay)
    if not any(group["params"] for group in groups):
        raise ConfigError("the method left no trainable parameters: nothing to optimize")
    betas = tuple(cfg.betas)
    if cfg.name == "adamw" and bf16_update == "stochastic":
        return StochasticRoundingAdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps)
    if cfg.name == "adamw" and bf16_update == "kahan":
        import optimi

        return optimi.AdamW(
            groups,
            lr=cfg.lr,
            betas=betas,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            kahan_sum=True,
        )
    if cfg.name == "adamw":
        return torch.optim.AdamW(
            groups, lr=cfg.lr, betas=betas, eps=cfg.eps, fused=_fusable(groups) or None
        )
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=betas[0])
    return _bitsandbytes_optimizer(groups, cfg, betas)


def _fusable(groups: list[dict]) -> bool:
    """Whether torch's fused AdamW kernel can update every parameter.

    One kernel per parameter group instead of a dozen elementwise passes per tensor: on a CPU
    the default (single-tensor) AdamW took ~7% of a small model's step, the fused one ~1%.
    """
    params = [p for group in groups for p in group["params"]]
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


def _bitsandbytes_optimizer(
    groups: list[dict], cfg: OptimConfig, betas: tuple
) -> torch.optim.Optimizer:
    try:
        import bitsandbytes as bnb
    except ImportError as err:
        raise ConfigError(f"optim.name={cfg.name} needs bitsandbytes ({err})") from err
    classes = {
        "adamw_8bit": bnb.optim.AdamW8bit,
        "paged_adamw": bnb.optim.PagedAdamW32bit,
        "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
    }
    return classes[cfg.name](groups, lr=cfg.lr, betas=betas, eps=cfg.eps)


def bf16_stochastic_round(x: torch.Tensor) -> torch.Tensor:
    """fp32 → bf16, rounding up or down at random with probability proportional to the distance
    (unbiased: E[round(x)] = x), so updates below bf16's spacing survive on average.

    bf16 is the top 16 bits of an fp32; adding 16 random bits below them and truncating carries
    into the kept bits with exactly that probability (for either sign: the bits are a magnitude).
    """
    bits = x.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=bits.device)
    return noise.add_(bits).bitwise_and_(-65536).view(torch.float32).to(torch.bfloat16)


def _store(target: torch.Tensor, value: torch.Tensor) -> None:
    """Write the fp32 `value` into `target`, stochastically rounded when `target` is bf16."""
    if target.dtype == torch.bfloat16:
        target.copy_(bf16_stochastic_round(value))
    else:
        target.copy_(value)


class StochasticRoundingAdamW(torch.optim.Optimizer):
    """torch's AdamW arithmetic in fp32, written back to bf16 weights and moments by stochastic
    rounding (fp32 parameters are updated exactly as torch.optim.AdamW updates them).

    Written here rather than taken from torchao (`torchao.optim._AdamW(bf16_stochastic_round=
    True)`): that class is private API, it compiles its step with torch.compile (15 s on a CPU
    before the first step, and a C++ compiler on every node) and torchao's extensions are built
    against particular torch releases. The state stays in the parameter's dtype, as torch's
    AdamW keeps it, so the memory is that of pure bf16 training.
    """

    def __init__(
        self,
        params: list[dict],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, lr, beta1, beta2, group["eps"], group["weight_decay"])

    def _update(
        self, param: torch.Tensor, lr: float, beta1: float, beta2: float, eps: float, wd: float
    ) -> None:
        state = self.state[param]
        if not state:
            # A plain number: the step count never needs a device (or a host sync to read).
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["step"] += 1
        step = state["step"]
        grad = param.grad.float()
        exp_avg = state["exp_avg"].float().lerp_(grad, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].float().mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        del grad  # the fp32 temporaries of one tensor at a time are the step's only overhead
        weight = param.float().mul_(1 - lr * wd)
        denom = exp_avg_sq.sqrt().div_(math.sqrt(1 - beta2**step)).add_(eps)
        weight.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))
        del denom
        _store(param, weight)
        del weight
        _store(state["exp_avg"], exp_avg)
        _store(state["exp_avg_sq"], exp_avg_sq)


def warmup_steps(cfg: OptimConfig, total_steps: int) -> int:
    return cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)


def lr_multiplier(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """The factor applied to `lr` before optimizer step `step` (0-based): linear warmup, then
    constant, linear or cosine decay down to `min_lr_ratio`."""
    warmup = warmup_steps(cfg, total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.scheduler == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if cfg.scheduler == "linear":
        decay = 1.0 - progress
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, cfg, total_steps)
    )
