"""One real QLoRA step of LLaMA-65B on one GPU, its measured peak beside bigft-plan's figures.

For a machine with one large GPU (written for an H200; under 5 minutes). Nothing is downloaded:
the 65B shape comes from conf/model/llama65b.yaml, and every linear layer is filled with random
bf16 values on the GPU and quantized to NF4 there, one layer at a time (never the whole 16-bit
model). Then bigft's own code trains it as `bigft-train experiment=llama65b_qlora` would:
gradient checkpointing, prepare_model_for_kbit_training + LoRA r=64 on all linear layers (peft),
paged AdamW 32-bit (bitsandbytes), micro-batch 1 × 512 tokens, bf16 autocast, two steps.

    python benchmarks/gpu/qlora65b_memory.py                       # the 65B step on cuda
    python benchmarks/gpu/qlora65b_memory.py --device cpu model.shape.num_hidden_layers=2 \
        model.shape.hidden_size=256 model.shape.intermediate_size=688 \
        model.shape.num_attention_heads=4 model.shape.num_key_value_heads=4   # a smoke run

Paged optimizer state is allocated by bitsandbytes with cudaMallocManaged, outside torch's
allocator, so torch.cuda.max_memory_allocated does not include it; the script adds the paged
bytes it finds and also reports the device-wide memory in use (CUDA context included).
Writes benchmarks/results/gpu/qlora65b_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
OUT = Path(__file__).resolve().parents[1] / "results" / "gpu"
GIB = 2**30


def build_quantized(cfg: Any, device: torch.device) -> torch.nn.Module:
    """The model skeleton on the meta device, then each tensor made for real on `device`:
    linear layers (but the head) as bitsandbytes NF4 from random bf16, the rest in bf16."""
    import bitsandbytes as bnb
    from transformers import AutoConfig, AutoModelForCausalLM

    from bigft.models.load import keep_4bit_layout_stable, torch_dtype
    from bigft.plan.shape import hf_config_dict

    keys = hf_config_dict(cfg.model)
    config = AutoConfig.for_model(keys.pop("model_type"), **keys)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    head = model.get_output_embeddings()
    m = cfg.method
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, torch.nn.Linear) or child is head:
                continue
            layer = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=False,
                compute_dtype=torch_dtype(m.compute_dtype),
                compress_statistics=bool(m.double_quant),
                quant_type=str(m.quant_type),
                device="meta",
            )
            shape = (child.out_features, child.in_features)
            weight = torch.randn(shape, dtype=torch.bfloat16, device=device).mul_(0.02)
            layer.weight = bnb.nn.Params4bit(
                weight,
                requires_grad=False,
                compress_statistics=bool(m.double_quant),
                quant_type=str(m.quant_type),
                module=layer,
            ).to(device)  # quantizes here; the bf16 values are freed after
            del weight
            setattr(parent, name, layer)
    materialize_meta(model, device)
    rotary = model.model.rotary_emb  # its inv_freq is computed at init: build it for real
    model.model.rotary_emb = type(rotary)(config).to(device)
    keep_4bit_layout_stable(model)
    model.is_loaded_in_4bit = True
    return model


def materialize_meta(model: torch.nn.Module, device: torch.device) -> None:
    """Embeddings, norms and head: random bf16 weights (norms at 1) on the device."""
    with torch.no_grad():
        for module in model.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                if p.device.type == "meta":
                    real = torch.empty_like(p, device=device)
                    real.normal_(0.0, 0.02) if real.ndim > 1 else real.fill_(1.0)
                    module.register_parameter(name, torch.nn.Parameter(real))
            for name, b in list(module.named_buffers(recurse=False)):
                if b.device.type == "meta":
                    module.register_buffer(name, torch.zeros_like(b, device=device))


def train_steps(cfg: Any, model: torch.nn.Module, device: torch.device, steps: int) -> list:
    from bigft.distributed.engine import PlainEngine
    from bigft.distributed.env import DistEnv
    from bigft.engine.optim import build_optimizer
    from bigft.methods import apply_method
    from bigft.models.load import enable_gradient_checkpointing
    from bigft.tasks.lm import causal_loss_sum

    if cfg.model.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model = apply_method(model, cfg.method, "causal_lm")
    optimizer = build_optimizer(model, cfg.optim)
    engine = PlainEngine(model, optimizer, DistEnv(device=device), cfg.optim.max_grad_norm)
    b, s = int(cfg.trainer.micro_batch_size), int(cfg.task.max_length)
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (b, s), device=device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    losses = []
    for _ in range(steps):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = causal_loss_sum(model, batch) / ids.numel()
        engine.backward(loss)
        engine.step()
        losses.append(float(loss.detach()))
    paged = sum(t.numel() * t.element_size() for t in _paged_tensors(optimizer))
    return [losses, paged]


def _paged_tensors(optimizer: Any) -> list[torch.Tensor]:
    manager = getattr(optimizer, "page_mng", None)
    return list(getattr(manager, "paged_tensors", []) or [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--trace", action="store_true", help="also trace the step (CPU, ~1 min)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides on experiment=llama65b_qlora")
    args = parser.parse_args()

    from bigft.config import compose_config
    from bigft.plan import check_fits

    cfg = compose_config(["experiment=llama65b_qlora", "trainer.grad_accum=1", *args.overrides])
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    started = time.perf_counter()
    model = build_quantized(cfg, device)
    built = time.perf_counter() - started
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    losses, paged = train_steps(cfg, model, device, args.steps)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "overrides": args.overrides,
        "build_seconds": built,
        "seconds": time.perf_counter() - started,
        "losses": losses,
        "analytic_gib": check_fits(cfg).breakdown.total / GIB,
        "paged_optimizer_gib": paged / GIB,
    }
    if cuda:
        free, total = torch.cuda.mem_get_info()
        allocated = torch.cuda.max_memory_allocated()
        result["max_memory_allocated_gib"] = allocated / GIB
        result["allocated_plus_paged_gib"] = (allocated + paged) / GIB
        result["device_in_use_gib"] = (total - free) / GIB
    if args.trace:
        from bigft.plan.trace import trace_step

        result["traced_gib"] = trace_step(cfg, steps=2).breakdown.total / GIB
    write(result)


def write(result: dict[str, Any]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "qlora65b_memory.json").write_text(json.dumps(result, indent=1))
    lines = ["# QLoRA LLaMA-65B, one real bigft step", ""]
    lines += [f"- {key}: {value}" for key, value in result.items()]
    (OUT / "qlora65b_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
