"""method=lora and method=qlora: low-rank adapters (peft) over a frozen base.

qlora differs only in the base: load_model quantized it to 4-bit NF4 (or 8-bit), and
prepare_model_for_kbit_training freezes it and upcasts the remaining small float weights
(norms, embeddings, head) to fp32 so the adapters' gradients are computed stably.
method.adapter_dtype=bf16 then narrows the adapters, embeddings and head back to 16 bits, as
the QLoRA paper's code (artidoro/qlora) did; see cast_adapters.
"""

from __future__ import annotations

from typing import Any

import torch

from bigft.errors import ConfigError

TASK_TYPES = {"causal_lm": "CAUSAL_LM", "sequence_classification": "SEQ_CLS"}


def target_modules(names: list[str]) -> str | list[str]:
    """peft wants the string "all-linear" (every linear layer except the output head)."""
    names = list(names)
    if "all-linear" in names:
        if len(names) > 1:
            raise ConfigError(
                f"method.target_modules={names}: 'all-linear' already covers every linear "
                "layer; use it alone or list module names"
            )
        return "all-linear"
    if not names:
        raise ConfigError("method.target_modules is empty: name modules or use [all-linear]")
    return names


def lora_config(method_cfg: Any, head: str) -> Any:
    from peft import LoraConfig

    # SEQ_CLS makes peft add the new `score` / `classifier` head to modules_to_save: it trains
    # in full and is saved with the adapter.
    return LoraConfig(
        r=int(method_cfg.r),
        lora_alpha=float(method_cfg.alpha),
        lora_dropout=float(method_cfg.dropout),
        target_modules=target_modules(method_cfg.target_modules),
        use_dora=bool(method_cfg.use_dora),
        use_rslora=bool(method_cfg.use_rslora),
        modules_to_save=list(method_cfg.modules_to_save) or None,
        task_type=TASK_TYPES[head],
    )


def apply_lora(
    model: torch.nn.Module,
    method_cfg: Any,
    head: str,
    *,
    gradient_checkpointing: bool = False,
) -> torch.nn.Module:
    from peft import get_peft_model, prepare_model_for_kbit_training

    if str(method_cfg.name) == "qlora":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    model = get_peft_model(model, lora_config(method_cfg, head))
    cast_adapters(model, method_cfg)
    return model


def cast_adapters(model: torch.nn.Module, method_cfg: Any) -> None:
    """method.adapter_dtype: the trainable weights (and, for qlora, embeddings and head) in it.

    peft keeps adapters in fp32 (autocast_adapter_dtype) and prepare_model_for_kbit_training
    upcasts embeddings and head to fp32: on LLaMA-65B that is ~3 GiB more than the QLoRA paper's
    recipe, which cast LoRA layers, embed_tokens and lm_head to bf16 and kept the norms in fp32
    (RMSNorm's weight is tiny, and its fp32 weight keeps the normalized activations precise).
    """
    if getattr(method_cfg, "adapter_dtype", None) is None:
        return
    from bigft.models.load import torch_dtype

    dtype = torch_dtype(method_cfg.adapter_dtype)
    # `.data =` keeps each Parameter object (and what the caller holds of it) in place.
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.to(dtype)
    if str(method_cfg.name) != "qlora":
        return
    base = model.get_base_model()
    for module in (base.get_input_embeddings(), base.get_output_embeddings()):
        weight = getattr(module, "weight", None)
        if weight is not None and weight.is_floating_point():
            weight.data = weight.data.to(dtype)
