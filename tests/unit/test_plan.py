"""bigft-plan: the analytic estimate, its advice, the CLI and the step tracer's headline figures."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bigft.config import compose_config
from bigft.config.validate import validate
from bigft.errors import ConfigError
from bigft.plan import check_fits
from bigft.plan.estimate import GIB, activation_bytes, param_counts, value_model_states

# The QLoRA paper's two figures for LLaMA-65B, in the unit GPUs are sized in; a "48 GB" GPU
# (an A6000, an L40S) holds 48 GiB, and bigft's QLoRA step fits in 48 decimal GB as well.
FULL_16BIT_MIN_GIB = 780
QLORA_MAX_GIB = 48
QLORA_MAX_BYTES = 48e9

# The defaults: a bf16 checkpoint (model.dtype=bf16) trained in trainer.precision=auto, which is
# fp32 master weights under bf16 autocast, the paper's "16-bit mixed precision".
FULL_ONE_GPU = [
    "model=llama65b",
    "method=full",
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
    plan = check_fits(compose_config(FULL_ONE_GPU))
    b, params = plan.breakdown, 65_285_660_672
    # The default from a bf16 checkpoint: fp32 master weights and gradients, AdamW's two fp32
    # moments; what bigft-train runs (bigft.engine.precision), not the checkpoint's 2 bytes.
    assert plan.setup.precision == "bf16-mixed"
    assert (b.trainable, b.gradients, b.optimizer) == (4 * params, 4 * params, 8 * params)
    assert "precision bf16-mixed (model.dtype bf16)" in plan.render()


def test_pure_bf16_is_planned_only_by_name_with_its_update_rule():
    params, embed = 65_285_660_672, 32000 * 8192  # the largest tensor: embeddings, head
    true = check_fits(compose_config([*FULL_ONE_GPU, "trainer.precision=bf16-true"]))
    b = true.breakdown
    # bf16 weights, gradients and AdamW moments (torch keeps state in the weight's dtype).
    assert (b.trainable, b.gradients, b.optimizer) == (2 * params, 2 * params, 4 * params)
    # Stochastic rounding (the default under bf16-true) steps one tensor at a time in fp32.
    assert true.setup.bf16_update == "stochastic"
    assert b.moment == "optimizer step" and b.temporaries == 18 * embed
    assert "bf16 updates stochastic" in true.render()
    kahan = [*FULL_ONE_GPU, "trainer.precision=bf16-true", "optim.bf16_update=kahan"]
    b = check_fits(compose_config(kahan)).breakdown
    assert b.optimizer == 6 * params and b.temporaries == 0  # + a bf16 compensation buffer
    # Half the default's memory: what the old default planned (and ran) without saying so.
    assert 485 * GIB < b.trainable + b.gradients + 4 * params < 490 * GIB


def test_freeze_keeps_frozen_weights_in_the_checkpoint_dtype_and_trained_ones_in_fp32():
    freeze = [*FULL_ONE_GPU, "method=freeze", "method.train_last_n_blocks=2"]
    b = check_fits(compose_config(freeze)).breakdown
    block = 4 * 8192 * 8192 + 3 * 8192 * 22016 + 2 * 8192  # attention, MLP, two norms
    trained = 32000 * 8192 + 2 * block  # the head and the last two blocks
    frozen = 65_285_660_672 - trained
    assert (b.weights, b.trainable, b.optimizer) == (2 * frozen, 4 * trained, 8 * trained)


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
    # Pure bf16 (8 bytes/parameter): micro-batch 1 alone makes it fit.
    base += ["model.dtype=bf16", "trainer.precision=bf16-true", "launcher.gpu_memory_gb=80"]
    plan = check_fits(compose_config(base))
    assert not plan.fits
    first = plan.suggestions[0][0].overrides
    assert "trainer.micro_batch_size=1" in first and "trainer.grad_accum=32" in first
    for change, _ in plan.suggestions:  # each one a config bigft-train accepts, and that fits
        replanned = compose_config([*base, *change.overrides])
        validate(replanned)
        assert check_fits(replanned).fits, change.overrides


def test_a_reward_model_plans_one_sequence_per_response_of_each_ranking():
    # A reward micro-batch of 2 rankings of 4 responses puts 8 sequences through the model (one
    # forward per response): as much activation memory as 8 single sequences with the same head.
    reward = [*QLORA_PAPER, "task=reward", "trainer.micro_batch_size=2"]
    rankings = check_fits(compose_config([*reward, "task.max_responses=4"]))
    single = [*QLORA_PAPER, "task=classify", "task.labels=[good]"]

    def activations(micro_batch: int) -> float:
        cfg = compose_config([*single, f"trainer.micro_batch_size={micro_batch}"])
        return check_fits(cfg).breakdown.activations

    assert rankings.breakdown.activations == pytest.approx(activations(8))
    assert "micro-batch 2 rankings of 4 responses (8 sequences)" in rankings.render()
    # Unset, a ranking is planned as one pair, and the plan says how to plan longer ones.
    pairs = check_fits(compose_config(reward))
    assert pairs.breakdown.activations == pytest.approx(activations(4))
    assert pairs.breakdown.activations > 1.9 * activations(2)
    assert "2 rankings of 2 responses (4 sequences; set task.max_responses" in pairs.render()


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


def test_dpo_plans_two_sequences_per_pair_and_names_its_reference():
    lora = check_fits(compose_config([*QLORA_PAPER, "task=dpo", "trainer.micro_batch_size=2"]))
    sft = check_fits(compose_config([*QLORA_PAPER, "task=sft", "trainer.micro_batch_size=4"]))
    # The same tokens as 4 sft sequences, and the same LM head.
    assert lora.breakdown.activations == pytest.approx(sft.breakdown.activations)
    assert lora.breakdown.total == pytest.approx(sft.breakdown.total)
    text = lora.render()
    assert "micro-batch 2 pairs (4 sequences)" in text
    assert "reference  the policy with adapters disabled" in text
    full = check_fits(compose_config([*zero3(16), "task=dpo"]))
    assert "reference  precomputed" in full.render() and full.reference_pass is None
    assert "reference" not in check_fits(compose_config([*QLORA_PAPER, "task=sft"])).render()
    simpo = check_fits(compose_config([*QLORA_PAPER, "task=dpo", "task.loss=simpo"]))
    assert "reference" not in simpo.render()


def test_an_explicit_dpo_reference_is_planned_as_a_transient_second_model(tmp_path):
    # 65B in bf16 is ~121 GiB whole: beside the ZeRO-3 shards of the policy it cannot fit on
    # 80 GiB GPUs, though the sharded training step does.
    policy = [*zero3(16), "task=dpo", "launcher.gpu_memory_gb=80"]
    assert check_fits(compose_config(policy)).fits
    plan = check_fits(compose_config([*policy, f"task.reference={tmp_path}"]))
    b = plan.breakdown
    # The policy's states (no gradients or activations yet) plus 65.3 B bf16 weights.
    expected = b.weights + b.trainable + b.optimizer + 65.29e9 * 2
    assert plan.reference_pass == pytest.approx(expected, rel=1e-3)
    assert not plan.fits
    text = plan.render()
    assert f"reference  {tmp_path}, loaded for a pass before training, then freed" in text
    assert "DOES NOT FIT: the step needs" in text and "loading task.reference" in text


def test_grpo_plans_the_rollout_phase_kv_cache_and_reference():
    """LLaMA-7B: 1 prompt × 8 responses of 1,024 tokens, a KV cache of 2 · 32 layers · 32 KV
    heads · 128 · 8 rows · 1,024 · 2 bytes = 4 GiB; full fine-tuning adds a frozen bf16 copy
    (6.74 B · 2 bytes), lora none."""
    grpo = [
        "model=llama7b", "task=grpo", "reward.fn=m:f", "task.num_generations=8",
        "task.max_length=1024", "trainer.micro_batch_size=1", "trainer.grad_accum=1",
    ]  # fmt: skip
    lora = check_fits(compose_config([*grpo, "method=lora"]))
    assert lora.setup.sequences_per_example == 8  # each prompt's responses in one forward
    assert lora.rollout.kv_cache / GIB == pytest.approx(4.0)
    assert lora.rollout.reference == 0 and lora.rollout.gathered == 0
    assert "KV cache 4.00 GiB" in lora.render() and "adapters disabled" in lora.render()
    # A grpo micro-batch holds prompts and their responses, not dpo's pairs.
    assert "micro-batch 1 prompt of 8 responses (8 sequences)" in lora.render()
    full = check_fits(compose_config([*grpo, "method=full", "distributed=zero2"]))
    assert full.rollout.reference / GIB == pytest.approx(6.74e9 * 2 / GIB, rel=0.01)
    assert "frozen reference copy" in full.render()
    # Under ZeRO-3 the reference is a second model sharded like the policy: 1/8 per GPU.
    sharded = check_fits(
        compose_config([*grpo, "method=full", "distributed=zero3", "launcher.nproc_per_node=8"])
    )
    assert sharded.rollout.reference == pytest.approx(full.rollout.reference / 8)
    assert "(its 1/8 ZeRO-3 shard)" in sharded.render()
    b = lora.breakdown
    assert lora.rollout.peak(b) == b.weights + b.trainable + b.optimizer + lora.rollout.kv_cache
    # The verdict prints the run's peak, which the fit decision uses: under ZeRO-3 on 8 GPUs the
    # rollout (the policy gathered, 64 responses' KV cache) is above the step.
    zero3 = check_fits(
        compose_config(["model=llama7b", "task=grpo", "reward.fn=m:f", "method=lora",
                        "distributed=zero3", "launcher.nproc_per_node=8"])
    )  # fmt: skip
    rollout = zero3.rollout.peak(zero3.breakdown)
    assert rollout > zero3.breakdown.total and zero3.peak == rollout
    assert f"FITS: {rollout / GIB:.1f} GiB of" in zero3.render()
    assert check_fits(compose_config(["model=llama7b", "method=lora"])).rollout is None


def test_ppo_plans_the_value_adapter_and_the_rollout():
    """LLaMA-7B LoRA ppo against the same grpo run: the value adapter doubles the adapters (plus
    a 4,097-weight head) and the step keeps a second forward's block activations; the rollout
    (8 responses of 1,024 tokens: a 4 GiB KV cache) is planned as grpo's."""
    common = [
        "model=llama7b", "reward.fn=m:f", "task.num_generations=8", "task.max_length=1024",
        "trainer.micro_batch_size=1", "trainer.grad_accum=1", "method=lora",
    ]  # fmt: skip
    ppo = check_fits(compose_config([*common, "task=ppo"]))
    grpo = check_fits(compose_config([*common, "task=grpo"]))
    assert ppo.setup.value_adapter and not grpo.setup.value_adapter
    p, g = param_counts(ppo.shape, ppo.setup), param_counts(grpo.shape, grpo.setup)
    assert p.trainable == 2 * g.trainable + 4096 + 1
    assert ppo.breakdown.activations > 1.5 * grpo.breakdown.activations
    assert ppo.rollout.kv_cache == grpo.rollout.kv_cache and ppo.rollout.reference == 0
    assert "value model: a second adapter" in ppo.render()


def test_full_ppo_plans_a_separate_value_model_beside_the_policy():
    """LLaMA-7B full ppo against the same grpo run: the value model (6.74 B less the 131 M LM
    head, plus a 4,096-weight scalar head) adds its weights, gradients and optimizer state to
    the step, and its block activations; the frozen reference copy is planned as grpo's."""
    common = [
        "model=llama7b", "reward.fn=m:f", "task.num_generations=4", "task.max_length=512",
        "trainer.micro_batch_size=1", "trainer.grad_accum=1", "method=full",
    ]  # fmt: skip
    ppo = check_fits(compose_config([*common, "task=ppo"]))
    grpo = check_fits(compose_config([*common, "task=grpo"]))
    assert ppo.setup.value_model and not grpo.setup.value_model
    v = value_model_states(ppo.shape, ppo.setup)
    shape = ppo.shape
    share = (shape.total_params - shape.head_params + shape.hidden) / shape.total_params
    assert share == pytest.approx(1 - 131e6 / 6.74e9, rel=1e-2)
    p, g = ppo.breakdown, grpo.breakdown
    assert v.optimizer == pytest.approx(g.optimizer * share, rel=1e-9)
    assert p.optimizer == pytest.approx(g.optimizer + v.optimizer, rel=1e-9)
    assert p.trainable == pytest.approx(g.trainable + v.trainable, rel=1e-9)
    # At the end of the forward (not this step's peak moment) both forwards' blocks are alive.
    ends = [activation_bytes(x.shape, x.setup)[0] for x in (ppo, grpo)]
    assert ends[0] > 1.5 * ends[1]
    assert ppo.rollout.reference == grpo.rollout.reference > 0
    assert "value model: a separate copy" in ppo.render()
    # It does not fit one 80 GB GPU; ZeRO-3 shards the value model too (its own engine), so it
    # is advised as for any other task.
    assert not ppo.fits and grpo.suggestions
    for run in (grpo, ppo):
        assert any("zero3" in o for c, _ in run.suggestions for o in c.overrides)
    # And on 8 GPUs under DDP, ZeRO-3 (parameters sharded 8 ways).
    eight = ["distributed=ddp", "launcher.nproc_per_node=8"]
    ddp = check_fits(compose_config([*common, "task=ppo", *eight]))
    assert ddp.setup.world_size == 8 and not ddp.fits
    assert any("distributed=zero3" in c.overrides for c, _ in ddp.suggestions)
