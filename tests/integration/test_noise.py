"""Messages from the libraries that a user reads as failure, where bigft knows better."""

from __future__ import annotations

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from bigft.config import compose_config
from bigft.train import train

from .runs import train_overrides


@pytest.fixture
def tiny_gpt2_dir(tmp_path, tiny_tokenizer):
    config = GPT2Config(
        vocab_size=len(tiny_tokenizer),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tiny_tokenizer.bos_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )
    out = tmp_path / "tiny-gpt2"
    GPT2LMHeadModel(config).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


def test_packed_gpt2_training_prints_no_attention_mask_advice(
    tmp_path, tiny_gpt2_dir, transformers_printed
):
    # Packed rows carry position ids and no 2-D mask on purpose; their padding is a block of its
    # own. GPT-2 checks for pad ids without a mask and would advise passing one.
    overrides = train_overrides(tmp_path, tiny_gpt2_dir, "sft", "lora", task__packing="true")
    train(compose_config([*overrides, "trainer.micro_batch_size=4"]))
    assert not [m for m in transformers_printed if "attention_mask" in m]
