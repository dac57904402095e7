"""The 4-bit base of method=qlora, built so that it can be traced on fake tensors.

What is substituted, and why the traced memory still holds:

- bitsandbytes stores a 4-bit weight in `Params4bit`, a Tensor subclass made with
  `Tensor._make_subclass`, which cannot wrap a FakeTensor. Here the packed weight is a plain frozen
  `nn.Parameter` of the same dtype (uint8) and shape ((out·in + 1) // 2, 1) that Params4bit holds,
  with the same `quant_state` attached to it.
- Everything else is bitsandbytes' own code: the weight is quantized by
  `bitsandbytes.functional.quantize_4bit` (NF4, block 64, double quantization: 8-bit absmax plus a
  float32 second level per 256 blocks), whose kernels bitsandbytes registers with fake
  implementations; the layer is `bnb.nn.Linear4bit`, so peft wraps it with its real
  `lora.bnb.Linear4bit`; forward and backward run `bnb.matmul_4bit` (MatMul4Bit), which in backward
  dequantizes the whole weight to the compute dtype, a temporary the trace sees.

So the bytes allocated are those bitsandbytes allocates on a GPU; only the Python wrapper type of
the packed storage differs. transformers quantizes every linear layer except the output head
(`get_keys_to_not_convert`), which is what `quantize_linear_layers` does too.
"""

from __future__ import annotations

from typing import Any

import torch

BLOCKSIZE = 64  # bitsandbytes' default 4-bit block size, as transformers uses it


def quantize_linear_layers(model: torch.nn.Module, method_cfg: Any) -> list[torch.Tensor]:
    """Replace every nn.Linear but the output head by a 4-bit bnb.nn.Linear4bit, in place.

    Call under FakeTensorMode. Returns the quantization-state tensors (absmax, codes), which are
    not parameters or buffers: the caller must tell the memory tracker about them.
    """
    import bitsandbytes as bnb

    from bigft.models.load import torch_dtype

    _cache_dynamic_map(bnb)
    head = model.get_output_embeddings()
    compute = torch_dtype(method_cfg.compute_dtype)
    storage = torch_dtype(method_cfg.quant_storage) if method_cfg.quant_storage else torch.uint8
    extra: list[torch.Tensor] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, torch.nn.Linear) or child is head:
                continue
            layer = _linear4bit(bnb, child, method_cfg, compute, storage)
            extra.extend(_state_tensors(layer.weight.quant_state))
            setattr(parent, name, layer)
    return extra


def _linear4bit(bnb: Any, linear: torch.nn.Linear, method_cfg: Any, compute, storage):
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    # The module is built outside the fake mode, on the meta device (its Params4bit placeholder
    # cannot be a FakeTensor and is replaced below).
    with unset_fake_temporarily():
        layer = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=compute,
            compress_statistics=bool(method_cfg.double_quant),
            quant_type=str(method_cfg.quant_type),
            quant_storage=storage,
            device="meta",
        )
    packed, state = bnb.functional.quantize_4bit(
        linear.weight.data,
        blocksize=BLOCKSIZE,
        compress_statistics=bool(method_cfg.double_quant),
        quant_type=str(method_cfg.quant_type),
        quant_storage=storage,
    )
    weight = torch.nn.Parameter(packed, requires_grad=False)
    # What Params4bit carries: bigft's real_numel reads quant_state.shape, peft the other two.
    weight.quant_state = state
    weight.compress_statistics = bool(method_cfg.double_quant)
    weight.quant_type = str(method_cfg.quant_type)
    layer.weight = weight
    if linear.bias is not None:
        layer.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
    # bigft.models.load.keep_4bit_layout_stable does the same for real 4-bit models.
    layer.support_avx512bf16_for_cpu = False
    return layer


def _cache_dynamic_map(bnb: Any) -> None:
    """bitsandbytes builds its 8-bit absmax code table from Python lists on first use, which a
    fake tensor cannot give; build it for real once (256 floats). The fake mode must then accept
    this one real input (allow_non_fake_inputs)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():
        if "dynamic" not in bnb.functional.name2qmap:
            bnb.functional.name2qmap["dynamic"] = bnb.functional.create_dynamic_map()


def _state_tensors(state: Any) -> list[torch.Tensor]:
    tensors = [state.absmax, state.code]
    if getattr(state, "state2", None) is not None:
        tensors += [state.state2.absmax, state.state2.code]
    if isinstance(getattr(state, "offset", None), torch.Tensor):
        tensors.append(state.offset)
    return [t for t in tensors if isinstance(t, torch.Tensor)]
