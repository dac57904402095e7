"""Start-up checks for task=grpo and task=ppo: values, and combinations that cannot work, why."""

from __future__ import annotations

from omegaconf import DictConfig

from bigft.config.schema import TaskConfig
from bigft.errors import ConfigError

# Settings one RL task reads and the other has no use for: set to anything but their default on
# the other task, they would be ignored without a word, so they are refused instead.
GRPO_ONLY = {
    "advantage": "ppo's advantages are GAE's, from its value model, task.gamma and task.lam",
    "scale_rewards": "ppo's advantages are GAE's; task.normalize_rewards scales its rewards",
}
PPO_ONLY = {
    key: "grpo has no value model: its advantages are its groups', see task.advantage"
    for key in ("lam", "vf_coef", "value_clip_range", "normalize_rewards", "value_init")
}


def _require(ok: bool, key: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: expected {expected}")


def _refuse_the_other_tasks_settings(task: DictConfig) -> None:
    owner, settings = ("grpo", GRPO_ONLY) if task.name == "ppo" else ("ppo", PPO_ONLY)
    defaults = TaskConfig()
    for key, why in settings.items():
        value, default = (getattr(v, "value", v) for v in (task[key], getattr(defaults, key)))
        if value != default:
            raise ConfigError(
                f"task.{key}={value} is a task={owner} setting that task={task.name} does not "
                f"use ({why}); remove it"
            )


def validate_rl(cfg: DictConfig) -> None:
    t, r = cfg.task, cfg.reward
    _refuse_the_other_tasks_settings(t)
    if t.name == "grpo":
        _require(
            t.num_generations >= 2, "task.num_generations", t.num_generations, ">= 2 (a group)"
        )
    else:
        _require(t.num_generations >= 1, "task.num_generations", t.num_generations, ">= 1")
        _validate_ppo(cfg)
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


def _validate_ppo(cfg: DictConfig) -> None:
    t, method = cfg.task, cfg.method.name
    _require(0 < t.gamma <= 1, "task.gamma", t.gamma, "in (0, 1] (GAE's discount)")
    _require(0 <= t.lam <= 1, "task.lam", t.lam, "in [0, 1] (GAE's λ)")
    _require(t.vf_coef > 0, "task.vf_coef", t.vf_coef, "> 0 (the value model must learn)")
    clip = t.value_clip_range
    _require(clip is None or clip > 0, "task.value_clip_range", clip, "> 0 or null")
    _require(t.kl_in == "reward", "task.kl_in", t.kl_in, "reward (ppo's KL is a per-token reward)")
    if method in ("full", "freeze"):
        _validate_separate_value(cfg)
    elif t.value_init == "reward":
        raise ConfigError(
            f"task.value_init=reward with method={method}: the value model is an adapter on the "
            "policy's base, and the reward model is a model of its own whose head cannot be "
            "shared; use task.value_init=policy, or method=full (a separate value model)"
        )


def _validate_separate_value(cfg: DictConfig) -> None:
    """method=full|freeze: the value model is a model of its own, trained beside the policy."""
    t, method = cfg.task, cfg.method.name
    if t.value_init == "reward" and not cfg.reward.model:
        raise ConfigError(
            "task.value_init=reward needs reward.model=<a reward run or sequence-classification "
            "model directory> to start the value model from; use task.value_init=policy"
        )
    if t.value_init == "reward" and str(cfg.distributed.name).startswith("zero3"):
        # Under ZeRO-3 the value model is the policy loaded again, partitioned as it loads.
        raise ConfigError(
            f"task.value_init=reward with method={method} under "
            f"distributed={cfg.distributed.name}: the reward model loads whole on every "
            "rank, and starting a ZeRO-3 value model from it is not built; use "
            "task.value_init=policy, or distributed=zero2"
        )
