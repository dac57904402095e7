"""Shared fixtures: a tiny tokenizer and tiny Llama (also saved in bf16) built locally (never
downloaded), and what transformers prints."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Instruction: reverse the word cat. Response: tac.",
    "A reward model scores responses; the better one gets the higher score.",
    "Positive reviews say great, loved it. Negative reviews say awful, hated it.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12.",
    "### Instruction:\n### Input:\n### Response:\n",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from bigft.models.toy import build_tokenizer

    return build_tokenizer(CORPUS, vocab_size=300)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer):
    """A 2-layer, 64-wide Llama with its tokenizer in a local HF directory."""
    from bigft.models.toy import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), tiny_tokenizer)


@pytest.fixture(scope="session")
def bf16_llama_dir(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama saved in bf16, as hub checkpoints are."""
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("tiny_llama_bf16")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16)
    model.save_pretrained(out)
    for tokenizer_file in tiny_llama_dir.glob("tokenizer*"):
        (out / tokenizer_file.name).write_bytes(tokenizer_file.read_bytes())
    return out


@pytest.fixture
def transformers_printed():
    """What transformers' own log handler is handed, i.e. prints (however pytest captures); its
    once-only warnings are reset so that an earlier test cannot have used them up."""
    import logging

    import transformers

    transformers.utils.logging.warning_once.cache_clear()
    printed: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            printed.append(record.getMessage())

    keep = Keep()
    logging.getLogger("transformers").addHandler(keep)
    yield printed
    logging.getLogger("transformers").removeHandler(keep)
