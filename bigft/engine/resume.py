"""Where a run continues from: the run directory's latest checkpoint, if it may be resumed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bigft.engine.checkpoint import incomplete_reason, read_state, scan_checkpoints, step_of
from bigft.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

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
    "trainer.save_every_minutes",
    "trainer.keep_last",
    "trainer.log_every",
    "trainer.progress_bar",
    "trainer.save_model",
    # The split of the global batch may change with the world size (checked below).
    "trainer.micro_batch_size",
    "trainer.grad_accum",
    "data.max_eval_examples",
    "task.eval_generate",
    "task.max_new_tokens",
    "task.eval_score_fn",
    "distributed.timeout_minutes",
    "logger",
    "launcher",
)


def flatten_keys(node: object, prefix: str = "") -> dict[str, object]:
    """{"optim.lr": 1e-3, ...}: a config (as plain containers) by its dotted keys."""
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for key, value in node.items():
            out.update(flatten_keys(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


def key_changes(old: dict, new: dict, ignore: Callable[[str], bool]) -> list[str]:
    """'key: old → new' for every dotted key whose value differs, except where `ignore(key)`."""
    old, new = flatten_keys(old), flatten_keys(new)
    changes = []
    for key in sorted(set(old) | set(new)):
        if ignore(key) or old.get(key) == new.get(key):
            continue
        changes.append(f"{key}: {old.get(key, '(unset)')!r} → {new.get(key, '(unset)')!r}")
    return changes


def config_changes(saved: DictConfig, current: DictConfig) -> list[str]:
    """'key: old → new' for every setting that differs and matters to training."""
    return key_changes(
        OmegaConf.to_container(saved, resolve=True),
        OmegaConf.to_container(current, resolve=True),
        ignore=lambda key: key.startswith(RESUMABLE_CHANGES),
    )


def _check_global_batch(
    cfg: DictConfig, saved_cfg: DictConfig, checkpoint: Path, world_size: int
) -> None:
    """A resumed run may split its global batch differently, never change its size."""
    saved = saved_cfg.trainer
    saved_world = read_state(checkpoint).get("world_size", 1)
    before = saved.micro_batch_size * saved.grad_accum * saved_world
    now = cfg.trainer.micro_batch_size * cfg.trainer.grad_accum * world_size
    if before != now:
        raise ConfigError(
            f"{checkpoint} was trained with a global batch of {before} (micro-batch "
            f"{saved.micro_batch_size} × accumulation {saved.grad_accum} × {saved_world} ranks); "
            f"this run's is {now}: set trainer.micro_batch_size × trainer.grad_accum × ranks "
            f"to {before} to resume it"
        )


def _complete_checkpoints(run_dir: Path, report: bool) -> list[Path]:
    """The complete checkpoints, oldest first, saying which newer ones were skipped."""
    scan = scan_checkpoints(run_dir)
    newest_step = step_of(scan.complete[-1].name) if scan.complete else -1
    for path, why in scan.skipped:
        if report and step_of(path.name) > newest_step:
            log.warning("skipping checkpoint %s: %s", path, why)
    if report and scan.skipped and not scan.complete:
        log.warning("no complete checkpoint in %s: starting from step 0", run_dir)
    return scan.complete


def resume_point(
    cfg: DictConfig, run_dir: Path, world_size: int = 1, *, report: bool = True
) -> Path | None:
    """The checkpoint to continue from, or None for a fresh run; refuses to clobber a run.

    `report`: log the incomplete checkpoints passed over (rank 0 only, to say it once).
    """
    resume = cfg.trainer.resume
    if resume not in ("auto", "never"):
        why = incomplete_reason(Path(resume))
        if why is not None:
            raise CheckpointError(f"trainer.resume={resume} is not a complete checkpoint: {why}")
        return Path(resume)
    existing = _complete_checkpoints(run_dir, report)
    if resume == "never":
        if existing:
            raise ConfigError(
                f"{run_dir} already holds checkpoints ({existing[-1].name}); continue it with "
                "trainer.resume=auto, start a new run with name=<new name>, or delete it"
            )
        return None
    found = existing[-1] if existing else None
    if found and (run_dir / CONFIG_FILE).is_file():
        saved_cfg = OmegaConf.load(run_dir / CONFIG_FILE)
        changes = config_changes(saved_cfg, cfg)
        if changes:
            raise ConfigError(
                f"{run_dir} holds a run with a different configuration; it cannot be resumed:\n  "
                + "\n  ".join(changes)
                + "\nuse name=<new name> for a new run, or undo these overrides to continue it"
            )
        _check_global_batch(cfg, saved_cfg, found, world_size)
    return found


def save_config(cfg: DictConfig, run_dir: Path) -> None:
    (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))
