"""method=freeze: only the output head trains, plus optionally the last N decoder blocks.

A tied LM head (tie_word_embeddings, e.g. Llama-3.2-1B, Gemma, small Qwen) is the same tensor as
the input embedding matrix, so training the head also changes the input embeddings. bigft keeps
the tie (untying would change the saved architecture and double the head's memory) and logs it.
"""

from __future__ import annotations

import logging

import torch

from bigft.errors import ConfigError
from bigft.models.load import CLASSIFIER_HEADS

log = logging.getLogger(__name__)

HEAD_NAMES = (*CLASSIFIER_HEADS, "lm_head")
# Where decoder blocks live in common architectures (Llama/Mistral/Qwen, GPT-2/Falcon, NeoX, OPT).
LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")


def find_head(model: torch.nn.Module, head: str) -> torch.nn.Module:
    """The module that maps hidden states to the outputs (lm_head, score, ...)."""
    if head == "causal_lm":
        found = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if found is not None:
            return found
    for name in HEAD_NAMES:
        found = getattr(model, name, None)
        if isinstance(found, torch.nn.Module):
            return found
    raise ConfigError(
        f"method=freeze cannot find the output head of {type(model).__name__} "
        f"(looked for get_output_embeddings() and {', '.join(HEAD_NAMES)})"
    )


def find_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The ModuleList of decoder blocks, in order."""
    for path in LAYER_PATHS:
        try:
            found = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(found, torch.nn.ModuleList):
            return found
    # Unknown architecture: the ModuleList with as many entries as the config has layers.
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return module
    raise ConfigError(
        f"method=freeze cannot find the decoder blocks of {type(model).__name__} "
        f"(looked for {', '.join(LAYER_PATHS)})"
    )


def _is_tied(model: torch.nn.Module, head_module: torch.nn.Module) -> bool:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head_weight = getattr(head_module, "weight", None)
    return embeddings is not None and head_weight is embeddings.weight


def apply_freeze(model: torch.nn.Module, head: str, train_last_n_blocks: int) -> torch.nn.Module:
    head_module = find_head(model, head)
    for param in model.parameters():
        param.requires_grad_(False)
    for param in head_module.parameters():
        param.requires_grad_(True)
    if _is_tied(model, head_module):
        log.warning(
            "the output head is tied to the input embeddings: method=freeze trains that shared "
            "matrix, so the input embeddings change too"
        )
    if train_last_n_blocks:
        blocks = find_blocks(model)
        if train_last_n_blocks > len(blocks):
            raise ConfigError(
                f"method.train_last_n_blocks={train_last_n_blocks} but the model has only "
                f"{len(blocks)} blocks"
            )
        for block in blocks[len(blocks) - train_last_n_blocks :]:
            for param in block.parameters():
                param.requires_grad_(True)
    return model
