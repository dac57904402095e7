"""method.adapter_dtype=bf16 (QLoRA as the paper's code ran it) trains, checkpoints, resumes and
saves an adapter that plain peft loads back in bf16."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from bigft.engine.checkpoint import TRAINABLE_FILE, latest_checkpoint
from bigft.engine.loop import Faults
from bigft.train import train

from .runs import train_losses

BF16_QLORA = ("method.adapter_dtype=bf16", "trainer.precision=bf16-mixed")


def test_one_bf16_qlora_step_trains_the_adapter_and_saves_it_for_plain_peft(
    make_cfg, tiny_llama_dir
):
    cfg = make_cfg("sft", "qlora", *BF16_QLORA, "trainer.max_steps=1", "trainer.save_every=1")
    assert math.isfinite(train(cfg)["train/loss"])
    run_dir = Path(cfg.output_dir)
    # The checkpoint holds exactly the LoRA weights, in bf16.
    trainable = load_file(latest_checkpoint(run_dir) / TRAINABLE_FILE)
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {t.dtype for t in trainable.values()} == {torch.bfloat16}

    saved = load_file(run_dir / "model" / "adapter_model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}
    lora_b = [t for n, t in saved.items() if "lora_B" in n]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: it stepped

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(base, run_dir / "model", autocast_adapter_dtype=False)
    loaded = {n: p for n, p in model.named_parameters() if ".lora_" in n}
    assert {p.dtype for p in loaded.values()} == {torch.bfloat16}
    assert len(loaded) == len(saved)
    for name, tensor in saved.items():
        key = name.replace(".weight", ".default.weight")
        assert torch.equal(loaded[key], tensor), name


def test_bf16_qlora_resume_reproduces_the_uninterrupted_run(make_cfg):
    common = (*BF16_QLORA, "trainer.max_steps=4", "trainer.save_every=2")
    whole = make_cfg("sft", "qlora", "name=whole", *common)
    train(whole)
    broken = make_cfg("sft", "qlora", "name=broken", *common)
    with pytest.raises(RuntimeError, match="simulated crash after step 3"):
        train(broken, faults=Faults(crash_after_step=3))
    train(broken)
    assert train_losses(Path(broken.output_dir)) == pytest.approx(
        train_losses(Path(whole.output_dir)), rel=1e-6
    )
