"""`bigft-train`: validate the config, then run one training job top to bottom.

`train(cfg) -> metrics` is a plain function (tests call it); `main()` is only the Hydra wrapper.
The body reads in the order data flows through a run: config → distributed env → run directory →
tokenizer and model → method → task and data → optimizer → loop → outputs.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from bigft.config import CONF_DIR
from bigft.config.validate import validate
from bigft.data.load import load_examples
from bigft.distributed import DistEnv, discover
from bigft.engine.batches import BatchPlan
from bigft.engine.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from bigft.engine.loop import Loop, LoopState
from bigft.engine.optim import build_optimizer, build_scheduler
from bigft.errors import USER_ERROR_EXIT, BigftError, ConfigError
from bigft.methods import apply_method
from bigft.methods.params import describe_trainable
from bigft.models.build import ensure_model
from bigft.models.load import load_model, load_tokenizer
from bigft.outputs import save_final
from bigft.tasks import build_task
from bigft.tracking import start_tracking

log = logging.getLogger("bigft")

CONFIG_FILE = "config.yaml"
# Keys that may change between a run and its resumption without changing what is trained.
RESUMABLE_CHANGES = (
    "trainer.resume",
    "trainer.max_steps",
    "trainer.epochs",
    "trainer.eval_every",
    "trainer.eval_at_start",
    "trainer.eval_batch_size",
    "trainer.save_every",
    "trainer.keep_last",
    "trainer.log_every",
    "trainer.progress_bar",
    "trainer.save_model",
    "data.max_eval_examples",
    "task.eval_generate",
    "task.max_new_tokens",
    "logger",
    "launcher",
)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _flatten(node: object, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


def _config_changes(saved: DictConfig, current: DictConfig) -> list[str]:
    old = _flatten(OmegaConf.to_container(saved, resolve=True))
    new = _flatten(OmegaConf.to_container(current, resolve=True))
    changed = []
    for key in sorted(set(old) | set(new)):
        if key.startswith(RESUMABLE_CHANGES) or old.get(key) == new.get(key):
            continue
        changed.append(f"{key}: {old.get(key)!r} → {new.get(key)!r}")
    return changed


def resume_point(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to continue from, or None for a fresh run; refuses to clobber a run."""
    resume = cfg.trainer.resume
    if resume not in ("auto", "never"):
        return Path(resume)
    existing = list_checkpoints(run_dir)
    if resume == "never":
        if existing:
            raise ConfigError(
                f"{run_dir} already holds checkpoints ({existing[-1].name}); continue it with "
                "trainer.resume=auto, start a new run with name=<new name>, or delete it"
            )
        return None
    found = latest_checkpoint(run_dir)
    if found and (run_dir / CONFIG_FILE).is_file():
        changes = _config_changes(OmegaConf.load(run_dir / CONFIG_FILE), cfg)
        if changes:
            raise ConfigError(
                f"{run_dir} holds a run with a different configuration; it cannot be resumed:\n  "
                + "\n  ".join(changes)
                + "\nuse name=<new name> for a new run, or undo these overrides to continue it"
            )
    return found


def prepare_run_dir(cfg: DictConfig, env: DistEnv) -> Path:
    run_dir = Path(cfg.output_dir)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def save_config(cfg: DictConfig, run_dir: Path) -> None:
    (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))


def total_steps(cfg: DictConfig, plan: BatchPlan) -> int:
    if cfg.trainer.max_steps > 0:
        return cfg.trainer.max_steps
    return plan.steps_per_epoch * cfg.trainer.epochs


def print_comparison(base: dict[str, float], tuned: dict[str, float]) -> None:
    """Base vs tuned model, side by side, for every eval metric both runs report."""
    keys = [k for k in tuned if k in base]
    if not keys:
        return
    width = max(len(k) for k in keys)
    lines = [f"{'metric':<{width}}  {'base':>10}  {'tuned':>10}  {'change':>10}"]
    for key in keys:
        delta = tuned[key] - base[key]
        lines.append(f"{key:<{width}}  {base[key]:>10.3f}  {tuned[key]:>10.3f}  {delta:>+10.3f}")
    print("\n" + "\n".join(lines) + "\n", flush=True)


def train(cfg: DictConfig, *, crash_after_step: int | None = None) -> dict[str, float]:
    """Run one training job described by `cfg`; returns the final metrics."""
    validate(cfg)
    env = discover(cfg.distributed.name)
    run_dir = prepare_run_dir(cfg, env)
    checkpoint = resume_point(cfg, run_dir)
    if env.is_main:
        save_config(cfg, run_dir)
        log.info("run directory: %s", run_dir)
    seed_everything(cfg.trainer.seed)

    ensure_model(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    task = build_task(cfg.task, tokenizer)
    # Weights are placed at load time: a 4-bit base is quantized straight onto its GPU.
    on_gpu = env.device if env.device.type == "cuda" else None
    model = load_model(
        cfg.model, cfg.method, task.model_head, task.num_labels, tokenizer, device=on_gpu
    )
    model = apply_method(model, cfg.method, task.model_head)
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
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, steps)

    state = LoopState()
    if checkpoint is not None:
        saved = load_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler)
        state = LoopState.from_dict(saved)
        log.info("resumed from %s (step %d)", checkpoint, state.step)
    tracker = start_tracking(cfg, run_dir, is_main=env.is_main, wandb_id=state.wandb_id)
    state.wandb_id = tracker.wandb_id or state.wandb_id

    loop = Loop(
        model=model,
        task=task,
        train_examples=train_examples,
        eval_examples=eval_examples,
        optimizer=optimizer,
        scheduler=scheduler,
        plan=plan,
        total_steps=steps,
        trainer=cfg.trainer,
        max_grad_norm=cfg.optim.max_grad_norm,
        mixed_precision=cfg.trainer.mixed_precision,
        env=env,
        run_dir=run_dir,
        tracker=tracker,
        state=state,
    )
    try:
        metrics = loop.run(crash_after_step=crash_after_step)
        if env.is_main and cfg.trainer.save_model:
            out = save_final(
                model,
                tokenizer,
                run_dir / "model",
                method=cfg.method.name,
                base_path=cfg.model.path,
            )
            log.info("saved %s", out)
        tracker.summary(metrics)
    finally:
        tracker.finish()
    if env.is_main and state.base_eval:
        print_comparison(
            state.base_eval, {k: v for k, v in metrics.items() if k.startswith("eval/")}
        )
    return metrics


def compact_config(cfg: DictConfig) -> str:
    """One line per config group (`method: name=lora r=16 ...`): the whole run at a glance."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    lines, scalars = [], []
    for key, value in resolved.items():
        if isinstance(value, dict):
            items = " ".join(f"{k}={_short(v)}" for k, v in value.items())
            lines.append(f"  {key}: {items}")
        else:
            scalars.append(f"{key}={_short(value)}")
    return "config: " + " ".join(scalars) + "\n" + "\n".join(lines)


def _short(value: object) -> str:
    text = str(value).replace("\n", "\\n")
    return text if len(text) <= 60 else text[:57] + "..."


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="[%(asctime)s %(name)s] %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
        force=True,
    )
    for noisy in ("httpx", "urllib3", "datasets", "transformers", "DeepSpeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    _configure_logging()
    print(compact_config(cfg), flush=True)
    try:
        metrics = train(cfg)
    except BigftError as err:
        # A user mistake: the message says what to change; a traceback would only hide it.
        print(f"bigft: error: {err}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT)
    return metrics.get("eval/loss", metrics.get("train/loss"))


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _hydra_main()


if __name__ == "__main__":
    main()
