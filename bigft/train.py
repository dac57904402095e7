"""`bigft-train`: validate the config, then run one training job top to bottom.

`train(cfg) -> metrics` is a plain function (tests call it); `main()` is only the Hydra wrapper.
The body reads in the order data flows through a run: config → distributed env → run directory →
tokenizer and model → method → task and data → engine (optimizer, parallelism) → loop → outputs.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from bigft.config import CONF_DIR
from bigft.config.precision import autocast_dtype, load_dtype, precision_of
from bigft.config.validate import validate
from bigft.data.load import load_examples
from bigft.demo.build import ensure_model
from bigft.distributed import DistEnv, close_process_group, discover, init_process_group
from bigft.distributed.comm import barrier
from bigft.distributed.deepspeed_config import build_deepspeed_config, zero_stage
from bigft.distributed.engine import Engine, build_engine
from bigft.distributed.universal import ensure_universal, universal_config
from bigft.engine.batches import BatchPlan
from bigft.engine.checkpoint import (
    load_extra,
    load_trainable_weights,
    load_training_state,
    read_state,
)
from bigft.engine.loop import Faults, Loop, LoopState
from bigft.engine.optim import build_optimizer, build_scheduler
from bigft.engine.precision import apply_precision, bf16_supported
from bigft.engine.resume import resume_point, save_config
from bigft.engine.stop import StopRequest, stopping_on_signals
from bigft.errors import exit_on_user_error, run_hydra_app
from bigft.launch.local import relaunch_if_needed
from bigft.launch.slurm import submit
from bigft.launch.slurm_rank import in_job_step, run_rank, torch_env_from_slurm
from bigft.methods import apply_method
from bigft.methods.params import describe_trainable
from bigft.models.load import check_max_length, load_model, load_tokenizer
from bigft.outputs import MODEL_SUBDIR, save_final
from bigft.rl.grpo import GRPOLoop
from bigft.rl.ppo import PPOLoop
from bigft.rl.setup import build_rewards, reference_context
from bigft.rl.value_model import build_values
from bigft.run_dirs import starting_model
from bigft.tasks import TASKS, build_task
from bigft.tasks.reference import attach_reference_logps
from bigft.tracking import start_tracking
from bigft.tracking.report import compact_config, comparison_table

log = logging.getLogger("bigft")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def total_steps(cfg: DictConfig, plan: BatchPlan) -> int:
    if cfg.trainer.max_steps > 0:
        return cfg.trainer.max_steps
    return plan.steps_per_epoch * cfg.trainer.epochs


@contextlib.contextmanager
def sharded_loading(ds_config: dict[str, Any] | None) -> Iterator[None]:
    """Under ZeRO-3, build the model already partitioned (never whole on one rank).

    transformers' from_pretrained consults a global HfDeepSpeedConfig; it must stay alive while
    the model loads.
    """
    if zero_stage(ds_config) < 3:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    keep_alive = HfDeepSpeedConfig(ds_config)  # noqa: F841 (held for from_pretrained)
    try:
        yield
    finally:
        unset_hf_deepspeed_config()


def _same_rng(load: Callable[[], torch.nn.Module]) -> Callable[[], torch.nn.Module]:
    """`load`, run without moving the random stream (CPU and the current GPU's)."""

    def load_again() -> torch.nn.Module:
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            return load()

    return load_again


def load_initial_model(
    cfg: DictConfig,
    model_cfg: DictConfig,
    task: Any,
    tokenizer: Any,
    env: DistEnv,
    precision: str,
    ds_config: dict[str, Any] | None,
) -> torch.nn.Module:
    """The starting model as the run loads it, before its method: the policy, and under ZeRO-3
    the RL reference too (a second copy, partitioned like the first)."""
    # Weights are placed at load time (a 4-bit base is quantized straight onto its GPU), except
    # under ZeRO-3, where DeepSpeed places the shards it builds.
    on_gpu = env.device if env.device.type == "cuda" and zero_stage(ds_config) < 3 else None
    with sharded_loading(ds_config):
        return load_model(
            model_cfg,
            cfg.method,
            task.model_head,
            task.num_labels,
            tokenizer,
            device=on_gpu,
            dtype=load_dtype(precision, cfg.model.dtype, cfg.method.name),
        )


def save_outputs(
    cfg: DictConfig, engine: Engine, tokenizer: Any, run_dir: Path, env: DistEnv, base_path: str
):
    """The adapter or full model, written once by rank 0 from gathered weights.

    `base_path` is the directory the model was loaded from (a run's model or merge for
    model.path=<run>), which is what an adapter must be loaded on again."""
    adapter = cfg.method.name in ("lora", "qlora", "prefix")
    # Collectives: every rank takes part in gathering ZeRO-3 shards.
    state = engine.trainable_state() if adapter else engine.consolidated_state()
    # peft saves a prefix by running its prompt encoder, a forward that under ZeRO-3 gathers
    # shards: every rank must run it, though only rank 0's copy is kept.
    all_ranks_save = engine.shards_parameters and cfg.method.name == "prefix"
    if env.is_main or all_ranks_save:
        out_dir = run_dir / MODEL_SUBDIR
        if not env.is_main:
            out_dir = run_dir / f".discard-rank{env.rank}"
        out = save_final(
            engine.module,
            tokenizer,
            out_dir,
            method=cfg.method.name,
            base_path=base_path,
            state_dict=state if engine.shards_parameters else None,
        )
        if env.is_main:
            log.info("saved %s", out)
        else:
            shutil.rmtree(out, ignore_errors=True)
    barrier()


def start_from(cfg: DictConfig, run_dir: Path, env: DistEnv) -> DictConfig:
    """cfg.model with `path` at the model directory to load: model.path=<run> is that run's
    model, or its adapter merged into its base (written by rank 0 while the others wait)."""
    head = TASKS[str(cfg.task.name)].model_head
    model_cfg = starting_model(cfg.model, run_dir, head=head, is_main=env.is_main)
    barrier()
    return model_cfg


def train(
    cfg: DictConfig, *, faults: Faults | None = None, stop: StopRequest | None = None
) -> dict[str, float]:
    """Run one training job described by `cfg`; returns the final metrics.

    With `stop`, a signal it listens to ends the run early with a checkpoint: `Preempted`.
    """
    validate(cfg)
    env = discover(cfg.distributed.name)
    init_process_group(
        env,
        cfg.distributed.backend,
        cfg.distributed.timeout_minutes,
        deepspeed=bool(cfg.distributed.deepspeed),
    )
    try:
        return _train(cfg, env, faults, stop)
    finally:
        close_process_group()


def _train(
    cfg: DictConfig, env: DistEnv, faults: Faults | None, stop: StopRequest | None
) -> dict[str, float]:
    # Every rank derives the same run directory from the config; only rank 0 writes to it.
    run_dir = Path(cfg.output_dir)
    checkpoint = resume_point(cfg, run_dir, env.world_size, report=env.is_main)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir)
        log.info("run directory: %s", run_dir)
    saved = read_state(checkpoint) if checkpoint is not None else None
    ensure_model(cfg.model, can_build=not env.distributed)
    model_cfg = start_from(cfg, run_dir, env)
    check_max_length(model_cfg, cfg.task.max_length)
    seed_everything(cfg.trainer.seed)
    precision = precision_of(cfg, bf16_supported=bf16_supported(env.device))
    ds_config = None
    if cfg.distributed.deepspeed:
        ds_config = build_deepspeed_config(cfg, env.world_size, precision)
    if ds_config is not None and saved is not None and saved["world_size"] != env.world_size:
        # ZeRO shards only load at the world size that wrote them: convert (once), then load
        # DeepSpeed's per-parameter form, weights and optimizer state alike.
        ensure_universal(checkpoint, env)
        ds_config = universal_config(ds_config)

    tokenizer = load_tokenizer(model_cfg)
    task = build_task(cfg.task, tokenizer)
    load_initial = functools.partial(
        load_initial_model, cfg, model_cfg, task, tokenizer, env, precision, ds_config
    )

    def load_policy() -> torch.nn.Module:
        return apply_method(load_initial(), cfg.method, task.model_head)

    model = load_policy()
    # Under ZeRO-3 RL loads the starting model again (the reference, ppo's value model): those
    # loads leave the random stream training draws from where the policy's load left it.
    initial_again, policy_again = _same_rng(load_initial), _same_rng(load_policy)
    bf16_update = apply_precision(
        model, cfg, precision, deepspeed=ds_config is not None, announce=env.is_main
    )
    if env.is_main:
        log.info("method=%s: %s", cfg.method.name, describe_trainable(model))

    train_examples, eval_examples = load_examples(cfg, task, tokenizer)
    plan = BatchPlan(
        num_examples=len(train_examples),
        micro_batch_size=cfg.trainer.micro_batch_size,
        grad_accum=cfg.trainer.grad_accum,
        world_size=env.world_size,
        seed=cfg.trainer.seed,
    )
    plan.check()
    steps = total_steps(cfg, plan)

    # task=grpo/ppo: the frozen reference is taken from the initial weights, before training;
    # ppo's value model is built from them first (under lora/qlora its adapter and head join the
    # policy's model here, before its optimizer and engine, to train, checkpoint and shard with it).
    reference, values = None, None
    if cfg.task.name == "ppo":
        values = build_values(
            cfg, policy=model, tokenizer=tokenizer, env=env, total_steps=steps,
            bf16_update=bf16_update, ds_config=ds_config, load_policy=policy_again,
        )  # fmt: skip
    if cfg.task.name in RL_LOOPS:
        reference = reference_context(
            cfg.method.name,
            model,
            float(cfg.task.kl_coef),
            ds_config=ds_config,
            load_initial=initial_again,
        )
    optimizer = build_optimizer(model, cfg.optim, bf16_update=bf16_update)
    engine = build_engine(
        model, optimizer, env, ds_config=ds_config, max_grad_norm=cfg.optim.max_grad_norm
    )
    # task=dpo: the reference log-probs come from the initial weights (or a reference model),
    # scored on the engine's (possibly sharded) model before a checkpoint's weights go in.
    attach_reference_logps(
        cfg,
        task,
        engine.module,
        {"train": train_examples, "eval": eval_examples},
        env,
        autocast_dtype="none" if ds_config else autocast_dtype(precision),
    )
    if saved is not None and ds_config is None:
        # Without DeepSpeed the checkpoint's weights are copied into the model in place;
        # DeepSpeed loads its own below.
        load_trainable_weights(checkpoint, model)
    # DeepSpeed wraps bigft's optimizer and steps it with the learning rate the schedule sets
    # on its param groups, so the schedule drives the optimizer bigft built.
    scheduler = build_scheduler(optimizer, cfg.optim, steps)
    state = LoopState()
    if saved is not None:
        load_training_state(
            checkpoint,
            engine=engine,
            scheduler=scheduler,
            env=env,
            saved_world=saved["world_size"],
        )
        state = LoopState.from_dict(saved)
        if values is not None:
            load_extra(checkpoint, "the value model", values.load)
        if env.is_main:
            log.info("resumed from %s (step %d)", checkpoint, state.step)
    tracker = start_tracking(
        cfg,
        run_dir,
        is_main=env.is_main,
        wandb_id=state.wandb_id,
        resumed_step=state.step if saved is not None else None,
    )
    state.wandb_id = tracker.wandb_id or state.wandb_id

    loop_cls, rl_parts = Loop, {}
    if cfg.task.name in RL_LOOPS:
        loop_cls = RL_LOOPS[cfg.task.name]
        rl_parts = rl_loop_parts(cfg, tokenizer, env, reference, values)
    loop = loop_cls(
        **rl_parts,
        engine=engine,
        task=task,
        train_examples=train_examples,
        eval_examples=eval_examples,
        scheduler=scheduler,
        plan=plan,
        total_steps=steps,
        trainer=cfg.trainer,
        autocast_dtype="none" if ds_config else autocast_dtype(precision),
        checkpoint_trainable=ds_config is None or cfg.method.name != "full",
        env=env,
        run_dir=run_dir,
        tracker=tracker,
        state=state,
        stop=stop,
    )
    try:
        metrics = loop.run(faults)
        if cfg.trainer.save_model:
            save_outputs(cfg, engine, tokenizer, run_dir, env, str(model_cfg.path))
        tracker.summary(metrics)
    finally:
        tracker.finish()
    if env.is_main and state.base_eval:
        tuned = {k: v for k, v in metrics.items() if k.startswith("eval/")}
        print("\n" + comparison_table(state.base_eval, tuned) + "\n", flush=True)
    return metrics


RL_LOOPS = {"grpo": GRPOLoop, "ppo": PPOLoop}


def rl_loop_parts(
    cfg: DictConfig, tokenizer: Any, env: DistEnv, reference: Any, values: Any
) -> dict:
    """What RLLoop adds to the Loop for task=grpo/ppo: rewards, reference, sampling ids, and
    ppo's value model."""
    parts = {} if values is None else {"values": values}
    return {
        **parts,
        "rewards": build_rewards(cfg, env.device),
        "reference": reference,
        "eos_ids": [tokenizer.eos_token_id],
        "pad_id": tokenizer.pad_token_id,
        "decode": functools.partial(tokenizer.batch_decode, skip_special_tokens=True),
        "seed": int(cfg.trainer.seed),
    }


def fault_injection() -> Faults:
    """For tests of what users meet for real, from the environment:

    BIGFT_CRASH_AFTER_STEP=N [BIGFT_CRASH_RANK=r]: fail after step N (on rank r only): a job
    killed mid-run, or one rank dying. BIGFT_SLOW_STEP_SECONDS=s: pause after each step, so
    that a test can signal a Slurm job in the middle of its run.
    """
    step = os.environ.get("BIGFT_CRASH_AFTER_STEP")
    rank = os.environ.get("BIGFT_CRASH_RANK")
    crash = step is not None and (rank is None or rank == os.environ.get("RANK", "0"))
    return Faults(
        crash_after_step=int(step) if crash else None,
        slow_step_seconds=float(os.environ.get("BIGFT_SLOW_STEP_SECONDS", "0")),
    )


def configure_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        # Other ranks only report problems; rank 0 tells the story.
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"[%(asctime)s %(name)s rank{rank}] %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
        force=True,
    )
    for noisy in ("httpx", "urllib3", "datasets", "transformers", "DeepSpeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> float | None:
    if in_job_step() and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        # A task of `srun bigft-train ...` (a script of the user's, or a sweep's array task):
        # each task is one rank. (One task alone may still start N ranks through torchrun.)
        torch_env_from_slurm()
    configure_logging()
    # A config mistake is reported once, before any rank starts.
    validate(cfg)
    if cfg.launcher.name == "slurm":
        if in_job_step():  # an array task of a sweep (-m), started by the submitit launcher
            return run_rank(cfg, functools.partial(train, faults=fault_injection()))
        submit(cfg)
        return None
    if relaunch_if_needed(cfg):
        return None
    if int(os.environ.get("RANK", "0")) == 0:
        print(compact_config(cfg), flush=True)
    with stopping_on_signals(cfg.output_dir) as stop:
        metrics = train(cfg, faults=fault_injection(), stop=stop)
    return metrics.get("eval/loss", metrics.get("train/loss"))


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_hydra_app(_hydra_main)


if __name__ == "__main__":
    main()
