"""bigft-plan: the analytic estimate, its advice, the CLI and the step tracer's headline figures."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bigft.config import compose_config
from bigft.errors import ConfigError
from bigft.plan import check_fits
from bigft.plan.estimate import GIB

# The QLoRA paper's two figures for LLaMA-65B, in the unit GPUs are sized in; a "48 GB" GPU
# (an A6000, an L40S) holds 48 GiB, and bigft's QLoRA step fits in 48 decimal GB as well.
FULL_16BIT_MIN_GIB = 780
QLORA_MAX_GIB = 48
QLORA_MAX_BYTES = 48e9

FULL_ONE_GPU = [
    "model=llama65b",
    "method=full",
    "model.dtype=fp32",
    "trainer.mixed_precision=bf16",
    "model.gradient_checkpointing=false",
    "trainer.micro_batch_size=1",
    "trainer.grad_accum=1",
    "task.max_length=512",
]
QLORA_PAPER = ["experiment=llama65b_qlora", "trainer.grad_accum=1"]


def zero3(gpus: int, offload: bool = False) -> list[str]:
    return [
        "experiment=llama65b_full_zero3",
        f"distributed={'zero3_offload' if offload else 'zero3'}",
        f"launcher.nodes={gpus // 8}",
    ]


def total_gib(overrides: list[str]) -> float:
    return check_fits(compose_config(overrides)).breakdown.total / GIB


def test_llama65b_shape_has_65_29_billion_parameters():
    plan = check_fits(compose_config(["model=llama65b"]))
    assert plan.shape.total_params == 65_285_660_672
    assert round(plan.shape.total_params / 1e9, 2) == 65.29


def test_llama2_70b_shape_uses_grouped_query_attention():
    plan = check_fits(compose_config(["model=llama2_70b"]))
    assert plan.shape.kv_heads == 8
    assert round(plan.shape.total_params / 1e9, 2) == 68.98


def test_the_papers_two_figures_analytically():
    assert total_gib(FULL_ONE_GPU) > FULL_16BIT_MIN_GIB
    assert total_gib(QLORA_PAPER) < QLORA_MAX_GIB
    assert total_gib(QLORA_PAPER) * GIB < QLORA_MAX_BYTES - 2e9  # with 2 GB to spare


def test_bf16_adapters_save_what_the_fp32_ones_cost():
    """adapter_dtype=bf16 (the experiment) against peft's fp32 adapters and fp32 embeddings/head."""
    bf16 = check_fits(compose_config(QLORA_PAPER)).breakdown
    fp32 = check_fits(compose_config([*QLORA_PAPER, "method.adapter_dtype=null"])).breakdown
    lora = 80 * 64 * (4 * (8192 + 8192) + 3 * (8192 + 22016))  # r=64 on 7 linears × 80 blocks
    assert fp32.trainable == 4 * lora and bf16.trainable == 2 * lora
    assert fp32.optimizer == bf16.optimizer == 8 * lora  # paged AdamW keeps 32-bit state
    embed_and_head = 2 * 32000 * 8192
    assert fp32.weights - bf16.weights == 2 * embed_and_head
    assert 2.5 * GIB < fp32.total - bf16.total < 4 * GIB


def test_full_fine_tuning_counts_16_bytes_per_parameter_before_temporaries():
    b = check_fits(compose_config(FULL_ONE_GPU)).breakdown
    params = 65_285_660_672
    # fp32 weights and gradients, AdamW's two fp32 moments.
    assert (b.trainable, b.gradients, b.optimizer) == (4 * params, 4 * params, 8 * params)


def test_zero3_per_gpu_memory_falls_with_world_size():
    totals = [total_gib(zero3(g)) for g in (8, 16, 32, 64)]
    assert totals == sorted(totals, reverse=True)
    assert totals[0] > 1.8 * totals[2]


def test_offload_moves_the_optimizer_state_off_the_gpu():
    on_gpu = check_fits(compose_config(zero3(8))).breakdown
    offloaded = check_fits(compose_config(zero3(8, offload=True))).breakdown
    assert on_gpu.optimizer > 50 * GIB
    assert offloaded.optimizer == 0
    assert offloaded.total < on_gpu.total / 2


def test_a_plan_that_does_not_fit_suggests_changes_that_do():
    base = [*zero3(8), "distributed=zero2", "trainer.micro_batch_size=4", "task.max_length=2048"]
    plan = check_fits(compose_config(base))
    assert not plan.fits
    assert "DOES NOT FIT" in plan.render()
    assert plan.suggestions
    for change, _ in plan.suggestions:
        # The overrides a user would type, applied for real, give a plan that fits.
        replanned = check_fits(compose_config([*base, *change.overrides]))
        assert replanned.fits, change.overrides


def test_a_qlora_plan_just_over_the_gpu_suggests_bf16_adapters():
    base = [*QLORA_PAPER, "method.adapter_dtype=null", "launcher.gpu_memory_gb=45"]
    plan = check_fits(compose_config(base))
    assert not plan.fits
    changes = [change.overrides for change, _ in plan.suggestions]
    assert ("method.adapter_dtype=bf16",) in changes
    assert check_fits(compose_config([*base, "method.adapter_dtype=bf16"])).fits


def test_suggestions_keep_the_global_batch():
    base = [*FULL_ONE_GPU, "model=llama7b", "trainer.micro_batch_size=16", "trainer.grad_accum=2"]
    base += ["model.dtype=bf16", "trainer.mixed_precision=none", "launcher.gpu_memory_gb=80"]
    plan = check_fits(compose_config(base))
    assert not plan.fits
    first = plan.suggestions[0][0].overrides
    assert "trainer.micro_batch_size=1" in first and "trainer.grad_accum=32" in first


def test_a_reward_model_plans_both_sequences_of_each_pair():
    # A reward micro-batch of 2 pairs puts 4 sequences through the model: as much activation
    # memory as 4 single sequences with the same one-output head.
    pairs = check_fits(compose_config([*QLORA_PAPER, "task=reward", "trainer.micro_batch_size=2"]))
    single = [*QLORA_PAPER, "task=classify", "task.labels=[good]", "trainer.micro_batch_size=4"]
    rows = check_fits(compose_config(single))
    assert pairs.breakdown.activations == pytest.approx(rows.breakdown.activations)
    assert (
        pairs.breakdown.activations
        > 1.9
        * check_fits(compose_config([*single, "trainer.micro_batch_size=2"])).breakdown.activations
    )
    assert "micro-batch 2 pairs (4 sequences)" in pairs.render()


def test_a_hub_id_without_a_shape_is_a_user_error():
    cfg = compose_config(["model=llama3_8b"])
    with pytest.raises(ConfigError, match=r"model\.shape"):
        check_fits(cfg)


def test_a_local_model_directory_is_read_from_its_config_json(tiny_llama_dir):
    plan = check_fits(compose_config(["model=local", f"model.path={tiny_llama_dir}"]))
    assert plan.fits
    assert plan.shape.layers == 2


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "bigft.plan.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_cli_prints_the_plan_and_a_verdict():
    out = _cli("experiment=llama65b_qlora")
    assert out.returncode == 0, out.stderr
    assert "FITS" in out.stdout and "optimizer" in out.stdout
    out = _cli("experiment=llama65b_qlora", "launcher.gpu_memory_gb=24")
    assert out.returncode == 0, out.stderr
    assert "DOES NOT FIT" in out.stdout


def test_cli_refuses_mistakes_without_a_traceback():
    out = _cli("model=llama3_8b")
    assert out.returncode == 2
    assert "bigft: error: model.path='meta-llama/Llama-3.1-8B' is a hub id" in out.stderr
    assert "Traceback" not in out.stderr
    out = _cli("method.rr=3")
    assert out.returncode == 2
    assert "bigft: error: unknown config key 'method.rr' (did you mean method.r?)" in out.stderr


def test_the_papers_two_figures_from_the_traced_step():
    """Both headline inequalities from a trace of bigft's real step (not the formulas)."""
    from bigft.plan.trace import trace_step

    full = trace_step(compose_config(FULL_ONE_GPU), steps=2)
    assert full.breakdown.total / GIB > FULL_16BIT_MIN_GIB
    qlora = trace_step(compose_config(QLORA_PAPER), steps=1)
    assert qlora.breakdown.total / GIB < QLORA_MAX_GIB
    assert qlora.breakdown.total < QLORA_MAX_BYTES - 2e9  # with 2 GB to spare
    # The 4-bit base: half a byte per weight plus block scales, bf16 embeddings and head.
    assert 31.5 * GIB < qlora.breakdown.weights < 32.5 * GIB
    # The adapters in bf16 through bigft's own method code (cast_adapters), not a formula.
    lora = 80 * 64 * (4 * (8192 + 8192) + 3 * (8192 + 22016))
    assert qlora.breakdown.trainable == pytest.approx(2 * lora, rel=1e-3)
