"""Build the demo's base model: a tiny Llama pre-trained from scratch by bigft's own `task=lm`.

`model=demo_base` (the default) points at `${cache_dir}/demo_base` with `build_if_missing:
demo_base`; the first run lands here, later runs load the cached directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from bigft.config import DEMO_DATA_DIR, compose_config
from bigft.config.schema import TaskConfig
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


def pretrain(init: Path, run_dir: Path) -> None:
    """`experiment=demo_base_pretrain` on the initialised model, resuming in `run_dir`."""
    from bigft.train import train  # not at module level: bigft.train imports our caller

    overrides = [f"model.path={init}", f"output_dir={run_dir}", *RESUMABLE]
    metrics = train(compose_config(["experiment=demo_base_pretrain", *overrides]))
    log.info("demo base pre-trained: %s", {k: round(v, 4) for k, v in metrics.items()})


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
        _publish(work / "run" / "model", path)
        shutil.rmtree(work, ignore_errors=True)
    return path
