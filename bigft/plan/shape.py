"""A model's shape from its HF config alone: parameter counts without weights, a GPU or a network.

bigft-plan reads `model.shape` (the keys of config.json) or `config.json` in a local `model.path`.
Counting builds one decoder block on the meta device (no memory) and multiplies by the number of
blocks, which keeps a 65B plan well under a second and works for any architecture whose blocks
are alike.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bigft.errors import ConfigError


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    tied: bool
    block_params: int  # one decoder block
    # (name, in_features, out_features) of each linear layer in one block: what LoRA adapts
    # and what 4-bit quantization packs.
    block_linears: tuple[tuple[str, int, int], ...]
    embed_params: int
    head_params: int  # 0 when tied to the embedding
    other_params: int  # final norm and anything outside the blocks, embedding and head

    @property
    def total_params(self) -> int:
        blocks = self.layers * self.block_params
        return blocks + self.embed_params + self.head_params + self.other_params

    @property
    def linear_params(self) -> int:
        """Weights of the linear layers inside the blocks (the output head excluded)."""
        return self.layers * sum(i * o for _, i, o in self.block_linears)

    @property
    def largest_module_params(self) -> int:
        """The most parameters any one module holds directly (DeepSpeed's `largest layer`)."""
        return max(self.embed_params, self.head_params, *(i * o for _, i, o in self.block_linears))


def hf_config_dict(model_cfg: Any) -> dict[str, Any]:
    """The HF config keys of `model`: `model.shape`, or config.json in a local `model.path`."""
    if model_cfg.get("shape"):
        shape = model_cfg.shape
        return OmegaConf.to_container(shape) if isinstance(shape, DictConfig) else dict(shape)
    from bigft.config.paths import looks_local
    from bigft.run_dirs import config_dir

    path = str(model_cfg.path)
    if looks_local(path):
        # A run directory: its model's config, or its adapter's base's.
        config_file = (config_dir(path) or Path(path).expanduser()) / "config.json"
        if not config_file.is_file():
            raise ConfigError(
                f"model.path={path!r} has no config.json: bigft-plan needs the model's HF config"
                " (a local model directory, or model.shape)"
            )
        return json.loads(config_file.read_text())
    raise ConfigError(
        f"model.path={path!r} is a hub id and model.shape is not set: bigft-plan reads no "
        "network. Set model.shape to the keys of the model's config.json (see conf/model/"
        "llama65b.yaml), or point model.path at a local directory that holds config.json"
    )


def model_shape(model_cfg: Any) -> ModelShape:
    return _shape_of(json.dumps(hf_config_dict(model_cfg), sort_keys=True))


@functools.lru_cache(maxsize=32)
def _shape_of(config_json: str) -> ModelShape:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    keys = json.loads(config_json)
    model_type = keys.pop("model_type", None)
    if not model_type:
        raise ConfigError("model.shape needs model_type (e.g. llama), as config.json has it")
    layers = int(keys.get("num_hidden_layers", 0))
    if layers < 1:
        raise ConfigError("model.shape needs num_hidden_layers >= 1")
    one_block = {**keys, "num_hidden_layers": 1}
    if isinstance(keys.get("layer_types"), list):
        one_block["layer_types"] = keys["layer_types"][:1]
    try:
        config = AutoConfig.for_model(model_type, **one_block)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"model.shape is not a usable {model_type} config: {err}") from err
    return _count(model, config, layers)


def _count(model: Any, config: Any, layers: int) -> ModelShape:
    import torch

    from bigft.methods.freeze import find_blocks

    block = find_blocks(model)[0]
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embed
    head_params = 0 if tied or head is None else head.weight.numel()
    block_params = sum(p.numel() for p in block.parameters())
    total = sum(p.numel() for p in model.parameters())
    linears = tuple(
        (name.rsplit(".", 1)[-1], m.in_features, m.out_features)
        for name, m in block.named_modules()
        if isinstance(m, torch.nn.Linear)
    )
    heads = int(config.num_attention_heads)
    return ModelShape(
        model_type=str(config.model_type),
        hidden=int(config.hidden_size),
        layers=layers,
        heads=heads,
        kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        ffn=int(getattr(config, "intermediate_size", 4 * config.hidden_size)),
        vocab=int(config.vocab_size),
        tied=tied,
        block_params=block_params,
        block_linears=linears,
        embed_params=embed.numel(),
        head_params=head_params,
        other_params=total - block_params - embed.numel() - head_params,
    )
