"""Where a run continues from: the run directory's latest checkpoint, if it may be resumed."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bigft.engine.checkpoint import latest_checkpoint, list_checkpoints
from bigft.errors import ConfigError

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
    "distributed.timeout_minutes",
    "logger",
    "launcher",
)


def _flatten(node: object, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


def config_changes(saved: DictConfig, current: DictConfig) -> list[str]:
    """'key: old → new' for every setting that differs and matters to training."""
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
        changes = config_changes(OmegaConf.load(run_dir / CONFIG_FILE), cfg)
        if changes:
            raise ConfigError(
                f"{run_dir} holds a run with a different configuration; it cannot be resumed:\n  "
                + "\n  ".join(changes)
                + "\nuse name=<new name> for a new run, or undo these overrides to continue it"
            )
    return found


def save_config(cfg: DictConfig, run_dir: Path) -> None:
    (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))
