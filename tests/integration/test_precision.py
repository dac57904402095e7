"""trainer.precision on a bf16 checkpoint: the default keeps fp32 master weights, so every weight
moves after a few full fine-tuning steps at lr 2e-4; pure bf16 (bf16-true) loses the norms'
updates unless optim.bf16_update rescues them, and says so at start-up."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file

from bigft.config import compose_config
from bigft.train import train

from .runs import train_overrides

# Adam's first steps move each weight by about lr: 2e-4 is far below the 2^-8 (0.0039) that a
# bf16 weight near 1.0 (every RMSNorm scale) needs to reach its next representable value.
SMALL_STEPS = ["optim.lr=2e-4", "optim.scheduler=constant", "trainer.max_steps=3"]


def _weights(model_dir) -> dict[str, torch.Tensor]:
    return load_file(str(next(model_dir.glob("*.safetensors"))))


def _train(tmp_path, model_dir, name: str, method: str = "full", *extra: str):
    overrides = train_overrides(tmp_path, model_dir, "sft", method)
    # model.dtype=bf16: the checkpoint's dtype, what model=local loads by default.
    overrides += ["model.dtype=bf16", *SMALL_STEPS, f"name={name}", *extra]
    train(compose_config(overrides))
    return tmp_path / "outputs" / name / "model"


def _unchanged(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor]) -> list[str]:
    return sorted(n for n, t in tuned.items() if torch.equal(t.float(), base[n].float()))


def _norms(names) -> list[str]:
    return sorted(n for n in names if "norm" in n)


def test_default_precision_moves_every_weight_of_a_bf16_checkpoint(tmp_path, bf16_llama_dir):
    tuned_dir = _train(tmp_path, bf16_llama_dir, "default")
    base, tuned = _weights(bf16_llama_dir), _weights(tuned_dir)
    assert set(tuned) == set(base)
    assert _norms(base), "the tiny Llama has RMSNorm weights"
    assert _unchanged(base, tuned) == []
    # What trained is fp32 (the master weights), and is saved as such.
    assert {t.dtype for t in tuned.values()} == {torch.float32}


def test_bf16_true_without_a_remedy_loses_the_norms_updates_and_warns(
    tmp_path, bf16_llama_dir, caplog
):
    with caplog.at_level(logging.WARNING):
        tuned_dir = _train(
            tmp_path,
            bf16_llama_dir,
            "pure",
            "full",
            "trainer.precision=bf16-true",
            "optim.bf16_update=none",
        )
    base, tuned = _weights(bf16_llama_dir), _weights(tuned_dir)
    assert {t.dtype for t in tuned.values()} == {torch.bfloat16}
    # The effect the warning names: every norm weight is bit-identical to the checkpoint's.
    assert _norms(base) and set(_norms(base)) <= set(_unchanged(base, tuned))
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "trainer.precision=bf16-true" in warning and "rounds back" in warning
    assert "optim.bf16_update=stochastic" in warning


def test_bf16_true_with_stochastic_rounding_moves_the_norms(tmp_path, bf16_llama_dir, caplog):
    with caplog.at_level(logging.WARNING):
        # optim.bf16_update=auto: stochastic rounding under bf16-true.
        tuned_dir = _train(tmp_path, bf16_llama_dir, "sr", "full", "trainer.precision=bf16-true")
    base, tuned = _weights(bf16_llama_dir), _weights(tuned_dir)
    assert {t.dtype for t in tuned.values()} == {torch.bfloat16}
    moved = set(base) - set(_unchanged(base, tuned))
    assert set(_norms(base)) <= moved
    assert "optim.bf16_update=stochastic rounds" in caplog.text


def test_lora_on_a_bf16_checkpoint_keeps_fp32_adapters_over_the_bf16_base(tmp_path, bf16_llama_dir):
    tuned_dir = _train(tmp_path, bf16_llama_dir, "lora", "lora")
    adapters = _weights(tuned_dir)
    assert adapters and {t.dtype for t in adapters.values()} == {torch.float32}
    # Every lora_B starts at zero: each one moved.
    assert all(t.abs().sum() > 0 for n, t in adapters.items() if "lora_B" in n)


def test_a_bf16_true_run_with_stochastic_rounding_resumes_to_the_uninterrupted_losses(
    tmp_path, bf16_llama_dir
):
    """The rounding's random bits come from the generator a checkpoint restores, and its bf16
    moments from the optimizer state: a resumed run takes the same steps."""
    from bigft.engine.loop import Faults
    from tests.integration.runs import train_losses

    common = train_overrides(tmp_path, bf16_llama_dir, "sft", "full")
    common += ["model.dtype=bf16", "trainer.precision=bf16-true", "optim.lr=1e-3"]
    common += ["trainer.max_steps=5", "trainer.save_every=2"]
    train(compose_config([*common, "name=whole"]))
    with pytest.raises(RuntimeError, match="simulated crash after step 3"):
        train(compose_config([*common, "name=broken"]), faults=Faults(crash_after_step=3))
    train(compose_config([*common, "name=broken"]))
    out = tmp_path / "outputs"
    resumed, whole = train_losses(out / "broken"), train_losses(out / "whole")
    assert sorted(resumed) == [1, 2, 3, 4, 5]
    assert resumed == pytest.approx(whole, rel=1e-6)
