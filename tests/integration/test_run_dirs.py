"""A run directory is a model: `model.path=<run>` trains from that run's result (a full model as
saved, an adapter merged into its base as bigft-export merges it), and a run that has not finished
is refused by name."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from bigft.config import compose_config
from bigft.export import export_merged
from bigft.outputs import load_output, read_metadata
from bigft.train import train

from .runs import read_metrics, run_module, train_overrides, user_error


def weights(model_dir):
    return load_file(str(model_dir / "model.safetensors"))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def run(root, model_path, task="sft", method="lora", **extra):
    root.mkdir(parents=True, exist_ok=True)
    cfg = compose_config(train_overrides(root, model_path, task, method, **extra))
    return cfg, train(cfg)


@pytest.fixture(scope="module")
def lora_sft(tmp_path_factory, tiny_llama_dir):
    """A finished tiny LoRA sft run and bigft-export's merge of it."""
    root = tmp_path_factory.mktemp("lora_sft")
    run(root, tiny_llama_dir, name="sft", trainer__max_steps=3)
    run_dir = root / "outputs" / "sft"
    return run_dir, export_merged(run_dir, root / "exported")


def test_an_adapter_run_starts_from_its_merge_as_bigft_export_writes_it(
    lora_sft, tmp_path, tiny_llama_dir
):
    run_dir, exported = lora_sft
    from_run = run(tmp_path / "a", run_dir, task="dpo", name="dpo")[1]
    start = tmp_path / "a" / "outputs" / "dpo" / "base"
    assert_same_weights(weights(start), weights(exported))
    # The merge changed the base (the sft adapter is not a no-op), so equality means something.
    base = weights(tiny_llama_dir)
    assert any(not torch.equal(base[k], weights(exported)[k]) for k in base)
    # The same dpo run started from the exported model trains identically.
    from_export = run(tmp_path / "b", exported, task="dpo", name="dpo")[1]
    assert from_run["train/loss"] == from_export["train/loss"]
    assert from_run["eval/loss"] == from_export["eval/loss"]
    # The new adapter's base is the merge it trained on: its output loads back on it.
    meta = read_metadata(tmp_path / "a" / "outputs" / "dpo" / "model")
    assert meta["base"] == str(start.resolve())
    model, _ = load_output(tmp_path / "a" / "outputs" / "dpo" / "model", merged=True)
    assert model.config.num_hidden_layers == 2


def test_a_resumed_run_keeps_its_merge(lora_sft, tmp_path):
    run_dir, _ = lora_sft
    run(tmp_path, run_dir, name="again")
    start = tmp_path / "outputs" / "again" / "base" / "model.safetensors"
    written = start.stat().st_mtime_ns
    run(tmp_path, run_dir, name="again", trainer__max_steps=3)  # resumes at step 2
    assert start.stat().st_mtime_ns == written


def test_a_full_run_starts_from_a_full_runs_model(tmp_path, tiny_llama_dir):
    first_metrics = run(tmp_path, tiny_llama_dir, method="full", name="first")[1]
    first = tmp_path / "outputs" / "first"
    run(tmp_path, first, method="full", name="second", trainer__eval_at_start=True)
    second = tmp_path / "outputs" / "second"
    # Evaluated before its first step, the second run's model is the first run's final one.
    start = next(m for m in read_metrics(second) if m["step"] == 0)
    assert start["eval/loss"] == pytest.approx(first_metrics["eval/loss"], rel=1e-6)
    assert read_metadata(second / "model")["base"] == str((first / "model").resolve())
    assert not (second / "base").exists()  # nothing to merge, nothing copied


def test_a_qlora_run_starts_from_a_qlora_runs_merge_and_requantizes(tmp_path, tiny_llama_dir):
    run(tmp_path, tiny_llama_dir, method="qlora", name="q1")
    first = tmp_path / "outputs" / "q1"
    metrics = run(tmp_path, first, method="qlora", name="q2")[1]
    assert metrics["train/loss"] == metrics["train/loss"]  # finite: it trained
    second = tmp_path / "outputs" / "q2"
    # The adapter was merged into the dequantized 4-bit base, exactly as bigft-export merges it.
    exported = export_merged(first, tmp_path / "exported")
    assert_same_weights(weights(second / "base"), weights(exported))
    assert read_metadata(second / "base")["quantization"] is None
    # ... and the new run quantized that merge again.
    assert read_metadata(second / "model")["quantization"]["load_in_4bit"]


def test_an_unfinished_run_is_refused_by_name(tmp_path, tiny_llama_dir, monkeypatch):
    args = train_overrides(tmp_path, tiny_llama_dir, "sft", "lora", trainer__save_every=1)
    monkeypatch.setenv("BIGFT_CRASH_AFTER_STEP", "1")  # killed after its first checkpoint
    crashed = run_module("bigft.train", *args, "name=crashed", cwd=tmp_path)
    monkeypatch.delenv("BIGFT_CRASH_AFTER_STEP")
    assert crashed.returncode != 0
    run_dir = tmp_path / "outputs" / "crashed"
    assert (run_dir / "checkpoints").is_dir() and not (run_dir / "model").exists()
    args = train_overrides(tmp_path, run_dir, "sft", "lora")
    err = user_error(run_module("bigft.train", *args, "name=next", cwd=tmp_path))
    assert f"model.path='{run_dir}' is a bigft run directory that has not finished" in err
    assert "bigft-train " in err and "name=crashed" in err and "resumes it" in err
    assert len(err.strip().splitlines()) == 1


def test_a_reward_model_starts_from_a_causal_lm_run_with_a_new_head(lora_sft, tmp_path):
    run_dir, exported = lora_sft
    run(tmp_path, run_dir, task="reward", name="reward")
    out = tmp_path / "outputs" / "reward" / "model"
    meta = read_metadata(out)
    assert meta["head"] == "sequence_classification" and meta["num_labels"] == 1
    # Its body is the sft run's merge: the new run's base/ is bigft-export's model.
    assert_same_weights(weights(tmp_path / "outputs" / "reward" / "base"), weights(exported))
