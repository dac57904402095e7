"""trainer.precision: resolution, refusals, DeepSpeed's section, the dtypes a model trains in,
and the bf16 update rules (stochastic rounding, Kahan) against plain AdamW."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from bigft.config import compose_config
from bigft.config.precision import resolve_precision
from bigft.config.schema import MethodConfig, ModelConfig, OptimConfig
from bigft.config.validate import validate
from bigft.distributed.deepspeed_config import build_deepspeed_config
from bigft.engine.optim import (
    StochasticRoundingAdamW,
    bf16_stochastic_round,
    build_optimizer,
)
from bigft.engine.precision import apply_precision
from bigft.errors import ConfigError
from bigft.methods import apply_method
from bigft.models import load_model, load_tokenizer


@pytest.mark.parametrize(
    ("precision", "model_dtype", "bf16_ok", "resolved"),
    [
        ("auto", "bf16", True, "bf16-mixed"),
        ("auto", "fp16", True, "bf16-mixed"),
        ("auto", "fp32", True, "fp32"),
        ("auto", "bf16", False, "fp32"),  # a GPU without bf16: fp32 rather than pure 16-bit
        ("bf16-true", "fp32", True, "bf16-true"),
        ("fp16-mixed", "bf16", True, "fp16-mixed"),
    ],
)
def test_auto_is_fp32_masters_with_bf16_compute_for_a_16_bit_checkpoint(
    precision, model_dtype, bf16_ok, resolved
):
    assert resolve_precision(precision, model_dtype, bf16_supported=bf16_ok) == resolved


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["trainer.mixed_precision=bf16"],
            "trainer.mixed_precision=bf16 was replaced by trainer.precision: use "
            "trainer.precision=bf16-mixed",
        ),
        (["trainer.mixed_precision=none"], "use trainer.precision=fp32 (or bf16-true"),
        (["trainer.precision=bf16-true"], "trainer.precision=bf16-true with method=lora"),
        (
            ["method=full", "distributed=zero3", "trainer.precision=bf16-true"],
            "trainer.precision=bf16-true with distributed=zero3",
        ),
        (
            ["method=full", "model.dtype=bf16", "optim.bf16_update=stochastic"],
            "optim.bf16_update=stochastic with trainer.precision=bf16-mixed",
        ),
        (
            [
                "method=full",
                "trainer.precision=bf16-true",
                "optim=adamw_8bit",
                "optim.bf16_update=kahan",
            ],
            "optim.bf16_update=kahan with optim=adamw_8bit",
        ),
    ],
)
def test_precision_mistakes_are_refused_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose_config(overrides))
    assert message in str(err.value)


def test_pure_bf16_is_accepted_by_name_for_full_and_freeze():
    for method in ("full", "freeze"):
        validate(compose_config([f"method={method}", "trainer.precision=bf16-true"]))
    validate(
        compose_config(["method=full", "trainer.precision=bf16-true", "optim.bf16_update=kahan"])
    )


def test_deepspeed_runs_bf16_mixed_as_its_bf16_mode_with_fp32_masters():
    cfg = compose_config(["experiment=llama65b_full_zero3", "trainer.precision=auto"])
    ds = build_deepspeed_config(cfg, 64)
    assert ds["bf16"] == {
        "enabled": True,
        "bf16_master_weights_and_grads": False,
        "bf16_optimizer_states": False,
    }
    assert ds["fp16"] == {"enabled": False}
    fp32 = build_deepspeed_config(compose_config([*_zero3(), "trainer.precision=fp32"]), 2)
    assert (fp32["bf16"]["enabled"], fp32["fp16"]["enabled"]) == (False, False)
    # A DeepSpeed block asking for bf16 master weights contradicts fp32 masters: refused.
    pure = [*_zero3(), "+distributed.deepspeed.bf16.bf16_master_weights_and_grads=true"]
    with pytest.raises(ConfigError, match=r"bf16\.bf16_master_weights_and_grads=True contradicts"):
        build_deepspeed_config(compose_config(pure), 2)


def _zero3() -> list[str]:
    return ["method=full", "distributed=zero3", "model.dtype=bf16"]


def _bf16_model(path, method: str, precision: str, **method_overrides):
    model_cfg = OmegaConf.structured(ModelConfig(name="t", path=str(path), dtype="bf16"))
    method_cfg = OmegaConf.structured(MethodConfig(name=method, r=4, **method_overrides))
    model = load_model(model_cfg, method_cfg, "causal_lm", None, load_tokenizer(model_cfg))
    model = apply_method(model, method_cfg, "causal_lm")
    cfg = OmegaConf.create(
        {
            "method": {"adapter_dtype": method_cfg.adapter_dtype},
            "optim": {"bf16_update": "auto", "name": "adamw"},
            "trainer": {"precision": precision},
        }
    )
    apply_precision(model, cfg, precision, deepspeed=False, announce=False)
    return model


def _dtypes(model, trainable: bool) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters() if p.requires_grad == trainable}


def test_freeze_trains_fp32_masters_over_frozen_bf16_blocks(tiny_llama_dir):
    model = _bf16_model(tiny_llama_dir, "freeze", "bf16-mixed", train_last_n_blocks=1)
    assert _dtypes(model, True) == {torch.float32}
    assert _dtypes(model, False) == {torch.bfloat16}  # frozen blocks keep the checkpoint's bytes
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=torch.tensor([[1, 5, 9]])).logits.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_lora_adapters_stay_fp32_and_method_adapter_dtype_still_narrows_them(tiny_llama_dir):
    model = _bf16_model(tiny_llama_dir, "lora", "bf16-mixed")
    assert (_dtypes(model, True), _dtypes(model, False)) == ({torch.float32}, {torch.bfloat16})
    narrowed = _bf16_model(tiny_llama_dir, "lora", "bf16-mixed", adapter_dtype="bf16")
    assert _dtypes(narrowed, True) == {torch.bfloat16}


def test_stochastic_rounding_picks_a_neighbour_with_the_right_odds():
    torch.manual_seed(0)
    x = torch.full((200_000,), 1.0 + 2.0**-9)  # a quarter of the way from 1.0 to 1 + 2^-7
    y = bf16_stochastic_round(x)
    assert set(y.float().unique().tolist()) == {1.0, 1.0 + 2.0**-7}
    assert (y.float() > 1).float().mean().item() == pytest.approx(0.25, abs=0.01)
    # Unbiased for negative numbers too; exact values stay exact.
    assert bf16_stochastic_round(-x).float().mean().item() == pytest.approx(-x[0].item(), 1e-4)
    exact = torch.tensor([0.0, 1.0, -2.5, 2.0**100])
    assert torch.equal(bf16_stochastic_round(exact).float(), exact)


def test_stochastic_rounding_adamw_is_torch_adamw_on_fp32_weights():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(64, 16))
    b = torch.nn.Parameter(a.detach().clone())
    ours = StochasticRoundingAdamW([{"params": [a], "weight_decay": 0.1}], lr=1e-2)
    ref = torch.optim.AdamW([{"params": [b], "weight_decay": 0.1}], lr=1e-2)
    for _ in range(5):
        grad = torch.randn(64, 16)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _norm_after(update: str, steps: int) -> tuple[torch.Tensor, torch.optim.Optimizer]:
    """A bf16 norm weight (1.0) after `steps` AdamW steps at lr 2e-4 with a constant gradient."""
    torch.manual_seed(0)
    norm = torch.nn.Linear(1, 4096, bias=False).to(torch.bfloat16)
    torch.nn.init.ones_(norm.weight)
    cfg = OptimConfig(lr=2e-4, bf16_update=update)
    optimizer = build_optimizer(norm, cfg, bf16_update=update)
    for _ in range(steps):
        norm.weight.grad = torch.ones_like(norm.weight)  # Adam moves each weight by lr down
        optimizer.step()
    return norm.weight.detach().float(), optimizer


def test_bf16_updates_are_lost_unless_rounded_stochastically_or_compensated():
    expected = 1.0 - 10 * 2e-4
    lost, _ = _norm_after("none", 10)
    assert torch.equal(lost, torch.ones_like(lost))  # torch's AdamW: 2e-4 rounds away, 10 times
    rounded, _ = _norm_after("stochastic", 10)
    assert rounded.mean().item() == pytest.approx(expected, abs=2e-4)
    kahan, optimizer = _norm_after("kahan", 10)
    comp = next(iter(optimizer.state.values()))["kahan_comp"].float()
    assert (kahan + comp).mean().item() == pytest.approx(expected, abs=1e-4)
    moved, _ = _norm_after("kahan", 20)  # past 2^-9 (the spacing below 1.0, halved): moved
    assert (moved < 1).all()
