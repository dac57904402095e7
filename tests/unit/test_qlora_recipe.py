"""method=qlora under ZeRO-3: bigft applies the recipe that shards a 4-bit base and refuses only a
contradicting choice the user made."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from bigft.config import compose_config
from bigft.config.validate import validate
from bigft.errors import ConfigError


def test_the_recipe_is_applied_and_logged(caplog):
    # The demo model is fp32 and QLoRA computes in bf16: before, this exited 2 asking for
    # method.quant_storage=bf16 model.dtype=bf16.
    cfg = compose_config(["method=qlora", "distributed=zero3"])
    with caplog.at_level(logging.INFO, logger="bigft"):
        validate(cfg)
    assert str(cfg.method.quant_storage) == "bf16" and str(cfg.model.dtype) == "bf16"
    assert (
        "method=qlora under ZeRO-3: set method.quant_storage=bf16 model.dtype=bf16" in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bigft"):
        validate(cfg)  # every rank validates again: nothing left to set, nothing logged
    assert "under ZeRO-3" not in caplog.text


def test_the_recipe_is_only_for_zero3():
    cfg = compose_config(["method=qlora", "distributed=zero2"])
    validate(cfg)
    assert cfg.method.quant_storage is None and str(cfg.model.dtype) == "fp32"


def test_an_explicit_contradicting_storage_is_refused():
    cfg = compose_config(["method=qlora", "distributed=zero3", "method.quant_storage=fp16"])
    with pytest.raises(ConfigError, match=r"method.quant_storage=fp16 with method=qlora under"):
        validate(cfg)


def test_an_explicit_contradicting_model_dtype_is_refused_on_the_command_line(tmp_path):
    result = subprocess.run(
        [
            *(sys.executable, "-m", "bigft.train", "method=qlora", "distributed=zero3"),
            *("model.dtype=fp32", f"output_root={tmp_path}", f"cache_dir={tmp_path}"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "bigft: error: model.dtype=fp32 with method=qlora under ZeRO-3" in result.stderr
    assert "remove model.dtype, or set method.compute_dtype=fp32" in result.stderr
