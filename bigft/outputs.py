"""The final outputs of a run: an adapter (PEFT format) or a full HF model, plus the tokenizer.

A run writes its output to `<run>/model`; `bigft-export` writes a merged model to `<run>/merged`.
Both hold `bigft_output.json`, which says what the directory is and how to rebuild it:

    {"kind": "adapter" | "model", "method": "lora", "base": "/abs/path/or/hub-id",
     "revision": null, "head": "causal_lm", "dtype": "fp32", "num_labels": null,
     "quantization": {...} | null}

Both are plain Hugging Face formats: `PeftModel.from_pretrained(base, <run>/model)` or
`AutoModelForCausalLM.from_pretrained(<run>/model)` work without bigft.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from bigft.errors import ConfigError
from bigft.models.load import TORCH_DTYPES, resolve_source, torch_dtype

log = logging.getLogger(__name__)

OUTPUT_FILE = "bigft_output.json"
MODEL_SUBDIR = "model"
MERGED_SUBDIR = "merged"
ADAPTER_METHODS = ("lora", "qlora", "prefix")
DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _head_of(model: torch.nn.Module) -> str:
    name = type(_base_model(model)).__name__
    return "sequence_classification" if "SequenceClassification" in name else "causal_lm"


def _float_dtype(model: torch.nn.Module) -> str:
    """The dtype the base was loaded in: that of its input embeddings (never quantized)."""
    base = _base_model(model)
    weight = base.get_input_embeddings().weight
    return DTYPE_NAMES.get(weight.dtype, "fp32")


def _portable_base(base_path: str) -> str:
    # A relative local path would break as soon as bigft-export runs from another directory.
    path = Path(base_path).expanduser()
    return str(path.resolve()) if path.exists() else base_path


def output_metadata(model: torch.nn.Module, *, method: str, base_path: str) -> dict[str, Any]:
    base = _base_model(model)
    quant = getattr(base.config, "quantization_config", None)
    if quant is not None and not isinstance(quant, dict):
        quant = quant.to_dict()
    head = _head_of(model)
    return {
        "kind": "adapter" if method in ADAPTER_METHODS else "model",
        "method": method,
        "base": _portable_base(base_path),
        # The exact hub commit the base came from (None for a local directory).
        "revision": getattr(base.config, "_commit_hash", None),
        "head": head,
        "dtype": _float_dtype(model),
        "num_labels": base.config.num_labels if head == "sequence_classification" else None,
        "quantization": quant,
    }


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move the complete `tmp` to `out_dir`; an older `out_dir` is removed only afterwards."""
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def write_output_dir(out_dir: Path, write: Any, metadata: dict[str, Any]) -> Path:
    """Call `write(tmp_dir)`, add bigft_output.json, then move the result into place atomically."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        (tmp / OUTPUT_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_dir(tmp, out_dir)
    return out_dir


def save_final(
    model: torch.nn.Module,
    tokenizer: Any,
    out_dir: Path,
    *,
    method: str,
    base_path: str,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the adapter (lora, qlora, prefix) or the whole model (full, freeze) + tokenizer.

    Call on one process. Under ZeRO-3 the module's parameters are empty shards: pass the
    gathered weights as `state_dict` (the trainable ones for an adapter, all for a model).
    """
    method = str(method)
    metadata = output_metadata(model, method=method, base_path=base_path)

    def write(tmp: Path) -> None:
        # PeftModel.save_pretrained writes only the adapter (and modules_to_save, e.g. `score`);
        # a PreTrainedModel writes config + weights. Both write safetensors.
        model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)

    return write_output_dir(Path(out_dir), write, metadata)


def read_metadata(out_dir: Path) -> dict[str, Any]:
    path = Path(out_dir) / OUTPUT_FILE
    if not path.is_file():
        raise ConfigError(
            f"{out_dir} is not a bigft output directory (no {OUTPUT_FILE}); a run writes its "
            f"model to <run>/{MODEL_SUBDIR} when training finishes"
        )
    return json.loads(path.read_text())


def _auto_class(head: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if head == "sequence_classification":
        return AutoModelForSequenceClassification
    return AutoModelForCausalLM


def load_base(
    meta: dict[str, Any], tokenizer: Any, *, dtype: str, quantized: bool, device: Any = None
) -> Any:
    """The base model an adapter was trained on; 4-/8-bit exactly as in training if `quantized`."""
    from transformers import BitsAndBytesConfig

    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype), "revision": meta.get("revision")}
    if device is not None:
        kwargs["device_map"] = {"": device}
    if meta["head"] == "sequence_classification":
        kwargs["num_labels"] = meta["num_labels"]
        kwargs["pad_token_id"] = tokenizer.pad_token_id
    if quantized and meta.get("quantization"):
        kwargs["quantization_config"] = BitsAndBytesConfig.from_dict(meta["quantization"])
    source = resolve_source(meta["base"], what="base model")
    return _auto_class(meta["head"]).from_pretrained(source, **kwargs)


def _standard_layout(param: Any) -> tuple[torch.Tensor, Any]:
    """(packed data, quant_state) in the layout dequantize_4bit reads.

    On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight in place the first time it
    runs an inference forward; undo that (on a copy) before dequantizing.
    """
    if not getattr(param.quant_state, "packing_format_for_cpu", False):
        return param.data, param.quant_state
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    state = copy.deepcopy(param.quant_state)
    return _convert_weight_packed_for_cpu_inverse(param.data.clone(), state)


def dequantized_weights(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """{module name: float weight} for every bitsandbytes linear layer, as its forward sees it."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = dequantize_4bit(*_standard_layout(module.weight))
        elif isinstance(module, bnb.nn.Linear8bitLt):
            from peft.utils.integrations import dequantize_bnb_weight

            weight = dequantize_bnb_weight(module.weight, module.state)
        else:
            continue
        out[name] = weight.to("cpu", dtype)
    return out


def _dequantized_base(meta: dict[str, Any], tokenizer: Any, dtype: str) -> Any:
    """The base in `dtype` whose quantized linears hold the dequantized 4-/8-bit weights.

    QLoRA adapters learned to correct the quantized weights, not the original ones, so merging
    into the original base would not reproduce the trained model. Loading the quantized base
    once more and copying `dequantize(W_q)` into a float model gives exactly the weights the
    4-bit forward used; merging LoRA into those is then exact up to float rounding.
    """
    quantized = load_base(meta, tokenizer, dtype=meta["dtype"], quantized=True)
    weights = dequantized_weights(quantized, torch_dtype(dtype))
    del quantized
    model = load_base(meta, tokenizer, dtype=dtype, quantized=False)
    with torch.no_grad():
        for name, weight in weights.items():
            model.get_submodule(name).weight.copy_(weight)
    log.info("dequantized %d quantized linear layers of the base", len(weights))
    return model


def load_output(
    out_dir: Path, *, merged: bool = False, dtype: str | None = None, device: Any = None
) -> tuple[torch.nn.Module, Any]:
    """Load what save_final (or bigft-export) wrote, ready for inference.

    An adapter comes back on its base (quantized as in training for qlora), or, with
    merged=True, merged into a plain transformers model (qlora: into the dequantized base).
    `dtype` (fp32/bf16/fp16) defaults to the dtype the base was trained in; `device` places
    the weights while loading (None: CPU).
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    meta = read_metadata(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    dtype = str(dtype or meta.get("dtype") or "fp32")
    if meta["kind"] == "model":
        device_map = {"": device} if device is not None else None
        model = _auto_class(meta["head"]).from_pretrained(
            out_dir, dtype=torch_dtype(dtype), device_map=device_map
        )
        return model.eval(), tokenizer
    if merged and meta["method"] == "prefix":
        raise ConfigError(
            "a prefix-tuning adapter cannot be merged into the base: its prefixes are extra "
            "keys/values, not a change to any weight; use it unmerged (merged=false)"
        )
    if merged and meta.get("quantization"):
        base = _dequantized_base(meta, tokenizer, dtype)
    else:
        base = load_base(meta, tokenizer, dtype=dtype, quantized=True, device=device)
    model = PeftModel.from_pretrained(base, out_dir)
    if merged:
        model = model.merge_and_unload()
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer
