"""Command-line config mistakes exit 2 with one line naming the key and what is valid."""

from __future__ import annotations

import os
import sys

import pytest

from bigft import train as train_module
from bigft.errors import run_hydra_app


def _run(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["bigft-train", *args])
    with pytest.raises(SystemExit) as exited:
        run_hydra_app(train_module._hydra_main)
    return exited.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "trainer.max_stpes=3",
            "unknown config key 'trainer.max_stpes' (did you mean trainer.max_steps",
        ),
        ("trainer.max_steps=abc", "trainer.max_steps=abc is not allowed"),
        (
            "method=lorra",
            "method=lorra: no such method (did you mean lora or qlora?); "
            "the choices: freeze, full, lora, prefix, qlora",
        ),
        (
            "trainer.precision=fp8",
            "expected one of [auto, fp32, bf16-mixed, fp16-mixed, bf16-true]",
        ),
        ("learning_rate=1e-4", "unknown config key 'learning_rate'; the top-level keys: name,"),
    ],
)
def test_a_config_mistake_exits_2_naming_the_key(monkeypatch, capsys, override, expected):
    code, err = _run(monkeypatch, capsys, override)
    assert code == 2
    assert err.startswith("bigft: error: ") and expected in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert "HYDRA_FULL_ERROR" not in os.environ


def test_a_crash_in_the_run_is_still_reported_by_hydra(monkeypatch, capsys):
    def crash(*args, **kwargs):
        raise RuntimeError("a bug, not a config mistake")

    monkeypatch.setattr(train_module, "train", crash)
    monkeypatch.setattr(train_module, "relaunch_if_needed", lambda cfg: False)
    code, err = _run(monkeypatch, capsys, "logger=none")
    assert code == 1  # Hydra's report of an exception, as before
    assert "a bug, not a config mistake" in err and "bigft: error" not in err
