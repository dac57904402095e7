"""Build the demo's base model: a tiny Llama pre-trained from scratch by bigft's own `task=lm`.

`model=demo_base` (the default) points at `${cache_dir}/demo_base` with `build_if_missing:
demo_base`; the first run lands here, later runs load the cached directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from bigft.config import DEMO_DATA_DIR
from bigft.config.schema import TaskConfig
from bigft.errors import TrainingError
from bigft.models.toy import build_tiny_llama, build_tokenizer

log = logging.getLogger(__name__)

# Small enough to pre-train in under a minute on 2 CPU cores, big enough to memorise the
# corpus's 360 facts so that tuning can retrieve them (bigft/demo/__init__.py has the numbers;
# 4 layers learnt the facts more slowly in the same time and tuned to lower exact match).
VOCAB_SIZE = 1024
SHAPE = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}
INIT_SEED = 0


def _read_jsonl(name: str) -> list[dict]:
    with (DEMO_DATA_DIR / name).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def tokenizer_texts() -> list[str]:
    """The corpus plus the tuning set as bigft's default prompt template renders it.

    The template's words ("Instruction", "Response") then get tokens of their own. The eval
    set is left out: nothing about the held-out questions, not even the tokenizer, comes from
    them.
    """
    template = TaskConfig().prompt_template
    texts = [row["text"] for row in _read_jsonl("corpus.jsonl")]
    texts += [template.format(**r) + r["output"] for r in _read_jsonl("instructions_train.jsonl")]
    return texts


@contextlib.contextmanager
def _preserved_rng() -> Iterator[None]:
    # The caller seeded the global RNGs before asking for the model; building reseeds and
    # consumes them. Restoring them makes the first run (which builds) and later runs (which
    # load the cached base) initialise LoRA and draw dropout masks identically.
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


# Marks an initial model whose write finished (a kill mid-write leaves none).
INIT_DONE = "init-complete"
# The pre-training checkpoints every 100 steps (~10 s of work) and resumes from them, so that a
# build killed midway continues where it stopped.
RESUMABLE = ["trainer.resume=auto", "trainer.save_every=100"]


def _build_dir_next_to(path: Path) -> Path:
    # Beside `path`: the same filesystem, so the final rename is atomic; a dot-directory that
    # nothing mistakes for a model, named alike every time, so a killed build resumes from its
    # checkpoints instead of starting over and leaving its directory behind.
    return path.parent / f".{path.name}-build"


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """One builder at a time (two runs starting at once); the second then finds the model."""
    with (path.parent / f".{path.name}-build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _initial_model(work: Path) -> Path:
    """The freshly initialised model (deterministic: built again if a kill cut its write)."""
    init = work / "init"
    if not (work / INIT_DONE).is_file():
        shutil.rmtree(work, ignore_errors=True)
        tokenizer = build_tokenizer(tokenizer_texts(), VOCAB_SIZE)
        build_tiny_llama(init, tokenizer, seed=INIT_SEED, **SHAPE)
        (work / INIT_DONE).touch()
    return init


def _publish(built: Path, path: Path) -> None:
    """Move the finished model to `path` in one rename; if another process won, keep theirs."""
    try:
        built.rename(path)
    except OSError:
        if not path.exists():
            raise
        log.info("%s was built by another process meanwhile; using that one", path)


# A child stopped by Ctrl-C (130) or SIGTERM (143) after writing a checkpoint.
STOPPED_BY_SIGNAL = (130, 143)
# What a parent process passes down that would change what the pre-training run does: rank
# variables (the build runs as one process) and fault injection meant for the parent's run.
_NOT_INHERITED = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "BIGFT_CRASH_AFTER_STEP",
    "BIGFT_CRASH_RANK",
    "BIGFT_SLOW_STEP_SECONDS",
    "BIGFT_KILL_IN_CHECKPOINT",
)


def pretrain(init: Path, run_dir: Path) -> None:
    """`bigft-train experiment=demo_base_pretrain` on the initialised model, as its own process.

    A process, not a call to `bigft.train.train`: the demo is built on top of bigft-train, and
    bigft-train (which asks for the base before loading it) then never imports what calls it.
    """
    command = [
        sys.executable,
        "-m",
        "bigft.train",
        "experiment=demo_base_pretrain",
        f"model.path={init}",
        f"output_dir={run_dir}",
        *RESUMABLE,
    ]
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    result = subprocess.run(command, env=env, check=False)
    if result.returncode in STOPPED_BY_SIGNAL:
        # Ctrl-C or SIGTERM: the pre-training checkpointed and said so; the next run resumes it.
        raise SystemExit(result.returncode)
    if result.returncode != 0:
        raise TrainingError(
            f"pre-training the demo base failed (exit status {result.returncode}; its error is "
            f"above): {' '.join(command)}"
        )


def build_demo_base(path: Path) -> Path:
    """Pre-train the demo's base model into `path` (a Hugging Face model directory)."""
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(path), _preserved_rng():
        if path.exists():
            return path
        log.info("building the demo base model at %s (once, about a minute on 2 CPU cores)", path)
        for stale in path.parent.glob(f".{path.name}-build-*"):  # older bigft's random names
            shutil.rmtree(stale, ignore_errors=True)
        work = _build_dir_next_to(path)
        pretrain(_initial_model(work), work / "run")
        last = _read_last_metrics(work / "run" / "metrics.jsonl")
        log.info("demo base pre-trained: %s", {k: round(v, 4) for k, v in last.items()})
        _publish(work / "run" / "model", path)
        shutil.rmtree(work, ignore_errors=True)
    return path


def _read_last_metrics(path: Path) -> dict[str, float]:
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    last = json.loads(lines[-1]) if lines else {}
    return {k: v for k, v in last.items() if isinstance(v, float)}
