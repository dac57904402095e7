"""`bigft-train` as a user runs it: a real process, exit codes, messages without tracebacks."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .runs import run_module, train_overrides, user_error


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_module("bigft.train", *args, cwd=cwd)


def test_cli_trains_and_writes_the_run_directory(tmp_path, tiny_llama_dir):
    result = run_cli(
        *train_overrides(tmp_path, tiny_llama_dir, "sft", "lora"), "name=cli", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "cli"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.jsonl").is_file()
    assert (run_dir / "model" / "adapter_config.json").is_file()
    assert "method: name=lora" in result.stdout  # the compact resolved config


def test_malformed_data_line_exits_2_naming_file_and_line(tmp_path, tiny_llama_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output": \n')
    args = [*train_overrides(tmp_path, tiny_llama_dir, "sft", "full"), f"data.train={bad}"]
    assert f"{bad}:3" in user_error(run_cli(*args, cwd=tmp_path))


def test_missing_field_exits_2_naming_the_field(tmp_path, tiny_llama_dir):
    bad = tmp_path / "nofield.jsonl"
    bad.write_text('{"question": "a", "answer": "b"}\n')
    args = [*train_overrides(tmp_path, tiny_llama_dir, "sft", "full"), f"data.train={bad}"]
    err = user_error(run_cli(*args, cwd=tmp_path))
    assert "instruction" in err and "messages" in err


def test_label_outside_the_label_set_exits_2(tmp_path, tiny_llama_dir):
    bad = tmp_path / "labels.jsonl"
    bad.write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "maybe"}\n')
    args = [*train_overrides(tmp_path, tiny_llama_dir, "classify", "full"), f"data.train={bad}"]
    err = user_error(run_cli(*args, cwd=tmp_path))
    assert "maybe" in err and "labels.jsonl:2" in err


def test_missing_local_model_exits_2_naming_the_path(tmp_path, tiny_llama_dir):
    args = [*train_overrides(tmp_path, tiny_llama_dir, "lm", "full"), f"model.path={tmp_path}/nope"]
    assert f"{tmp_path}/nope" in user_error(run_cli(*args, cwd=tmp_path))


def test_config_typo_exits_non_zero_before_loading(tmp_path):
    result = run_cli("trainer.max_step=3", cwd=tmp_path)
    assert result.returncode != 0
    assert "max_step" in result.stderr
    assert "Traceback" not in result.stderr
