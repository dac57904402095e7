"""task=ppo's value model under lora/qlora: a second LoRA adapter and a scalar head, one base.

Why a separate adapter rather than a head on the policy's own hidden states (the "shared
backbone" of some TRL / OpenRLHF set-ups): the value loss's gradients then reach only the value
adapter and the head, the policy loss's only the policy adapter, so a badly scaled value loss
cannot drag the policy (nor the policy's drift the value's features), and task.vf_coef weighs
two separate sets of weights instead of trading one set between two objectives. It costs a
second forward of the base per micro-batch, but no second base in memory; the reference stays
free (every adapter disabled).

The head is nn.Linear(hidden, 1) in float32, zero-initialised: V ≡ 0 at the start, so the first
advantages are plain Monte-Carlo returns instead of the noise of a random head. It is a
submodule of the peft model, so it trains, checkpoints and shards (ZeRO-3) with the adapters.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch

from bigft.rl.rollout import Rollout, rollout_inputs
from bigft.tasks.dpo import peft_model_of

VALUE_ADAPTER = "value"
VALUE_HEAD = "value_head"
POLICY_ADAPTER = "default"

__all__ = [
    "VALUE_ADAPTER",
    "VALUE_HEAD",
    "adapter_values",
    "attach_value_adapter",
    "head_values",
    "using_adapter",
    "zero_value_head",
]


def zero_value_head(hidden: int, device: torch.device | None = None) -> torch.nn.Linear:
    """The scalar head of either value model (this adapter's, value_model.py's separate one)."""
    head = torch.nn.Linear(hidden, 1, dtype=torch.float32, device=device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return head


def head_values(head: torch.nn.Linear, hidden: torch.Tensor, width: int) -> torch.Tensor:
    """V [batch, width] in float32 from a decoder's last hidden states over prompt + response.

    As the policy's logits: V(s_t) reads the state before response token t is generated.
    """
    hidden = hidden[:, -(width + 1) : -1]
    return head(hidden.to(head.weight.dtype)).squeeze(-1).float()


def attach_value_adapter(model: torch.nn.Module) -> torch.nn.Module:
    """Add the "value" adapter (the policy adapter's LoRA config) and the head; returns the head."""
    peft = peft_model_of(model)
    if peft is None:
        raise ValueError("a value adapter needs a peft (lora/qlora) policy")
    peft.add_adapter(VALUE_ADAPTER, copy.deepcopy(peft.peft_config[POLICY_ADAPTER]))
    # add_adapter leaves a new inactive adapter frozen; both adapters train in every update.
    for name, param in peft.named_parameters():
        if f".{VALUE_ADAPTER}." in name:
            param.requires_grad_(True)
    head = zero_value_head(peft.get_base_model().config.get_text_config().hidden_size)
    peft.add_module(VALUE_HEAD, head)
    return head


@contextlib.contextmanager
def using_adapter(peft: Any, name: str) -> Iterator[None]:
    """Route the forwards inside through adapter `name`.

    Sets each LoRA layer's active adapter directly: peft's set_adapter would also freeze the
    other adapter, and both adapters get gradients from the same backward.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in peft.modules() if isinstance(m, BaseTunerLayer)]
    before = [m._active_adapter for m in layers]
    for layer in layers:
        layer._active_adapter = [name]
    try:
        yield
    finally:
        for layer, active in zip(layers, before, strict=True):
            layer._active_adapter = active


def adapter_values(model: torch.nn.Module, rollout: Rollout) -> torch.Tensor:
    """V(s_t) [batch, response_len], float32, read where response token t's logits are.

    The decoder alone runs (no lm_head over the vocabulary): its normed last hidden state feeds
    the head. Called on the peft model itself, not through DDP / DeepSpeed's wrapper: the
    policy's forward of the same micro-batch goes through the wrapper, and the one backward of
    their summed losses gives every trainable weight its gradient once.
    """
    peft = peft_model_of(model)
    decoder = peft.get_base_model().base_model
    with using_adapter(peft, VALUE_ADAPTER):
        hidden = decoder(**rollout_inputs(rollout), use_cache=False).last_hidden_state
    return head_values(getattr(peft, VALUE_HEAD), hidden, rollout.response_ids.shape[1])
