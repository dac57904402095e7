"""Start-up checks for task=grpo: values, and the combinations that cannot work, with the reason."""

from __future__ import annotations

from omegaconf import DictConfig

from bigft.errors import ConfigError


def _require(ok: bool, key: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: expected {expected}")


def validate_rl(cfg: DictConfig) -> None:
    t, r = cfg.task, cfg.reward
    _require(t.num_generations >= 2, "task.num_generations", t.num_generations, ">= 2 (a group)")
    _require(t.max_new_tokens >= 1, "task.max_new_tokens", t.max_new_tokens, ">= 1")
    _require(t.temperature > 0, "task.temperature", t.temperature, "> 0 (sampling)")
    _require(0 < t.top_p <= 1, "task.top_p", t.top_p, "in (0, 1]")
    _require(t.kl_coef >= 0, "task.kl_coef", t.kl_coef, ">= 0")
    _require(t.clip_range > 0, "task.clip_range", t.clip_range, "> 0")
    _require(t.ppo_epochs >= 1, "task.ppo_epochs", t.ppo_epochs, ">= 1")
    _require(t.mini_batches >= 1, "task.mini_batches", t.mini_batches, ">= 1")
    _require(t.kl_target is None or t.kl_target > 0, "task.kl_target", t.kl_target, "> 0 or null")
    _require(t.rollout_engine == "hf", "task.rollout_engine", t.rollout_engine, "hf")
    rows = cfg.trainer.micro_batch_size * cfg.trainer.grad_accum * t.num_generations
    if rows % (t.mini_batches * cfg.trainer.grad_accum):
        raise ConfigError(
            f"task.mini_batches={t.mini_batches}: each rank's rollout of {rows} responses "
            "(trainer.micro_batch_size × grad_accum × task.num_generations) must split into "
            f"mini_batches × trainer.grad_accum = {t.mini_batches * cfg.trainer.grad_accum} "
            "equal micro-batches"
        )
    if not (r.fn or r.model):
        raise ConfigError(
            f"task={t.name} needs a reward: set reward.fn=<module>:<function> or "
            "reward.model=<a reward run directory> (reward.eval_fn is only reported)"
        )
    if cfg.method.name == "prefix":
        raise ConfigError(
            f"method=prefix with task={t.name}: peft passes the prefix as the KV cache, which "
            "rollouts need for generation; use method=lora"
        )
    if (
        cfg.method.name in ("full", "freeze")
        and t.kl_coef > 0
        and str(cfg.distributed.name).startswith("zero3")
    ):
        raise ConfigError(
            f"method={cfg.method.name} with task={t.name} under distributed=zero3 and "
            f"task.kl_coef={t.kl_coef}: the frozen reference copy of a sharded model is not "
            "built yet; use method=lora (the reference is the policy with adapters disabled), "
            "distributed=zero2, or task.kl_coef=0"
        )
