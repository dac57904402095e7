"""method=prefix: trainable key/value prefixes in every attention layer (peft prefix tuning).

Known limits with transformers 5.x + peft 0.21 (refused at start-up by unsupported_reason):
sequence-classification heads (their forward no longer takes `past_key_values`) and gradient
checkpointing (peft refuses it). Generation needs care as well: `model.generate` silently drops
the prefix, so bigft.generate decodes prefix models with a plain forward loop.
"""

from __future__ import annotations

from typing import Any

import torch

from bigft.methods.lora import TASK_TYPES


def apply_prefix(model: torch.nn.Module, method_cfg: Any, head: str) -> torch.nn.Module:
    from peft import PrefixTuningConfig, get_peft_model

    config = PrefixTuningConfig(
        num_virtual_tokens=int(method_cfg.num_virtual_tokens),
        prefix_projection=bool(method_cfg.prefix_projection),
        task_type=TASK_TYPES[head],
    )
    return get_peft_model(model, config)
