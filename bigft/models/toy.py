"""Tiny models and tokenizers built from configs, for the demo and tests (nothing downloaded)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`, with pad/bos/eos/unk tokens."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )


def tiny_llama_config(vocab_size: int, tokenizer: PreTrainedTokenizerFast, **shape) -> LlamaConfig:
    """A Llama-architecture config; `shape` overrides hidden_size, num_hidden_layers, etc."""
    defaults = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    defaults.update(shape)
    return LlamaConfig(
        vocab_size=vocab_size,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **defaults,
    )


def build_tiny_llama(
    out_dir: str | Path, tokenizer: PreTrainedTokenizerFast, seed: int = 0, **shape
) -> Path:
    """Write a randomly initialised tiny Llama and its tokenizer to `out_dir` (HF format)."""
    import torch

    torch.manual_seed(seed)
    out = Path(out_dir)
    model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), tokenizer, **shape))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
