"""Fixtures for end-to-end runs on the tiny local Llama."""

from __future__ import annotations

import pytest

from bigft.config import compose_config
from bigft.train import train

from .runs import train_overrides


@pytest.fixture
def make_cfg(tmp_path, tiny_llama_dir):
    def make(task: str = "lm", method: str = "full", *more: str, **extra):
        return compose_config(
            train_overrides(tmp_path, tiny_llama_dir, task, method, **extra) + list(more)
        )

    return make


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`make demo`'s run, once per session: the demo base pre-trained by bigft and the demo's
    LoRA instruction tuning (minutes). Tests that start from the demo's tuned model share it.

    Returns (config, final metrics); the base is cached in the config's cache_dir.
    """
    root = tmp_path_factory.mktemp("demo")
    cfg = compose_config(
        [
            f"output_root={root / 'outputs'}",
            f"cache_dir={root / 'cache'}",
            "logger=none",
            "trainer.progress_bar=false",
        ]
    )
    return cfg, train(cfg)


@pytest.fixture(scope="session")
def demo_sft40(demo_run, tmp_path_factory):
    """A briefly instruction-tuned demo model, once per session: 40 steps of the demo's sft from
    the session's demo base (it answers in one word, right about a third of the time). The RL and
    DPO proofs start from its run directory.

    Returns (the run directory, the demo's cache_dir)."""
    demo, _ = demo_run
    root = tmp_path_factory.mktemp("demo-sft-40")
    cfg = compose_config(
        [
            f"output_root={root / 'outputs'}",
            f"cache_dir={demo.cache_dir}",
            "logger=none",
            "trainer.progress_bar=false",
            "name=sft",
            "trainer.max_steps=40",
        ]
    )
    train(cfg)
    return cfg.output_dir, demo.cache_dir
