"""Fixtures for end-to-end runs on the tiny local Llama."""

from __future__ import annotations

import pytest

from bigft.config import compose_config

from .runs import train_overrides


@pytest.fixture
def make_cfg(tmp_path, tiny_llama_dir):
    def make(task: str = "lm", method: str = "full", *more: str, **extra):
        return compose_config(
            train_overrides(tmp_path, tiny_llama_dir, task, method, **extra) + list(more)
        )

    return make
