"""Model FLOPs utilisation (MFU) of bigft's training step: full fine-tuning and LoRA, 7B Llama.

    python benchmarks/gpu/mfu.py                       # one H200: ~2 minutes
    python benchmarks/gpu/mfu.py --shape tiny --seq 64 --micro-batch 2 --steps 4 --warmup 1 \\
        --dtype fp32 --results /tmp/mfu                # CPU smoke run of the same code path

The model is a Llama-2-7B-shaped network with random weights, built straight on the GPU in bf16
(nothing downloaded). Each mode runs bigft's own step, `Loop.train_step`, on the model that
bigft's `apply_method` made trainable, with bigft's optimizer, engine and task (lm, rows of
exactly --seq random tokens, so there is no padding): collation, forward, loss, backward,
clipping and the optimizer step are all inside the timed step. Only model loading from disk is
skipped (random weights are built in memory instead of written and read back).

Model FLOPs per trained token (PaLM, Chowdhery et al. 2022, appendix B):

    full: 6·N + 12·L·d·s
    LoRA: 4·N + 6·N_lora + 12·L·d·s

N counts the weights that multiply activations (all parameters but the input embedding table;
the output head counts), L layers, d the model width, s the sequence length. 6·N is 2·N for the
forward pass, 2·N for the gradients of the activations and 2·N for the gradients of the weights.
A frozen base (LoRA) skips the weight gradients but still carries activation gradients back
through every layer, hence 4·N, plus the full 6 for the adapters' N_lora. 12·L·d·s is the
attention score and value matmuls, forward and backward (no weights, so LoRA pays it in full),
counted over the whole s×s square as PaLM and most MFU reports do, though a causal kernel
skips half of it. Recomputation (gradient checkpointing) is not model FLOPs; it is off here.

MFU = model FLOPs per step ÷ step time ÷ peak. Peak: 989 TFLOP/s, NVIDIA's H200 SXM dense BF16
Tensor Core figure (the H200 datasheet lists 1,979 TFLOP/s "with sparsity", twice the dense
rate). Pass --peak-tflops for another GPU.

Results: benchmarks/results/gpu/mfu.md and .json, with the date, the GPU and this command.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
H200_BF16_DENSE_TFLOPS = 989.0
DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "gpu"
SHAPES: dict[str, dict[str, int]] = {
    # Llama-2-7B (config.json of meta-llama/Llama-2-7b-hf).
    "7b": {
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 4096,
    },
    # For a CPU smoke run of the same code.
    "tiny": {
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 512,
    },
}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def flops_per_token(model: torch.nn.Module, shape: dict[str, int], seq: int, mode: str) -> float:
    embedding = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    attention = 12 * shape["num_hidden_layers"] * shape["hidden_size"] * seq
    if mode == "full":
        return 6 * (total - embedding) + attention
    # LoRA: the adapters are the trainable parameters; the frozen base is the rest.
    return 4 * (total - trainable - embedding) + 6 * trainable + attention


def build_model(shape: dict[str, int], dtype: torch.dtype, device: torch.device) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, attn_implementation="sdpa", tie_word_embeddings=False)
    config.use_cache = False
    # Built in the training dtype on the device: a 7B model never exists in fp32 or on the CPU.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model


def bigft_loop(model: Any, mode: str, args: argparse.Namespace, run_dir: Path) -> Any:
    """bigft's Loop around `model`, put together as bigft.train does, minus loading from disk."""
    from bigft.config import compose_config
    from bigft.distributed import discover
    from bigft.distributed.engine import build_engine
    from bigft.engine.batches import BatchPlan
    from bigft.engine.loop import Loop
    from bigft.engine.optim import build_optimizer, build_scheduler
    from bigft.methods import apply_method
    from bigft.models.toy import build_tokenizer
    from bigft.tasks import build_task
    from bigft.tracking import Tracker

    cfg = compose_config(
        [
            "model=local",
            "model.path=unused",
            f"method={mode}",
            "task=lm",
            f"task.max_length={args.seq}",
            "data=local",
            "data.train=unused",
            "optim.lr=1e-5",
            "optim.scheduler=constant",
            f"trainer.micro_batch_size={args.micro_batch}",
            "trainer.progress_bar=false",
        ]
    )
    model = apply_method(model, cfg.method, "causal_lm")
    env = discover("single")
    optimizer = build_optimizer(model, cfg.optim)
    engine = build_engine(model, optimizer, env, ds_config=None, max_grad_norm=1.0)
    # The task needs a tokenizer for its pad id only: the rows are token ids already.
    task = build_task(cfg.task, build_tokenizer(["a b c d e f"], vocab_size=300))
    generator = torch.Generator().manual_seed(0)
    rows = args.micro_batch * args.steps
    ids = torch.randint(3, model.config.vocab_size, (rows, args.seq), generator=generator)
    examples = [{"input_ids": row.tolist()} for row in ids]
    plan = BatchPlan(rows, args.micro_batch, 1, 1, seed=0)
    return Loop(
        engine=engine,
        task=task,
        train_examples=examples,
        eval_examples=[],
        scheduler=build_scheduler(optimizer, cfg.optim, args.steps),
        plan=plan,
        total_steps=args.steps,
        trainer=cfg.trainer,
        autocast_dtype="none",
        checkpoint_trainable=True,
        env=env,
        run_dir=run_dir,
        tracker=Tracker(None),
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(mode: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    shape = SHAPES[args.shape]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    model = build_model(shape, DTYPES[args.dtype], device)
    with tempfile.TemporaryDirectory() as tmp:
        loop = bigft_loop(model, mode, args, Path(tmp))
        built = time.perf_counter() - started
        times, losses = [], []
        for step in range(args.steps):
            sync(device)
            t0 = time.perf_counter()
            metrics = loop.train_step(step)
            sync(device)
            times.append(time.perf_counter() - t0)
            losses.append(metrics["train/loss"])
    step_time = statistics.median(times[args.warmup :])
    tokens = args.micro_batch * args.seq
    per_token = flops_per_token(loop.engine.module, shape, args.seq, mode)
    achieved = per_token * tokens / step_time
    result = {
        "mode": mode,
        "parameters": sum(p.numel() for p in loop.engine.module.parameters()),
        "trainable": sum(p.numel() for p in loop.engine.module.parameters() if p.requires_grad),
        "flops_per_token": per_token,
        "tokens_per_step": tokens,
        "step_time_s": step_time,
        "step_times_s": times,
        "tokens_per_s": tokens / step_time,
        "achieved_tflops": achieved / 1e12,
        "mfu": achieved / (args.peak_tflops * 1e12),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "build_s": built,
        "peak_memory_gib": peak_memory_gib(device),
    }
    # Free this mode's model and optimizer state before the next mode builds its own.
    del loop, model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    else:
        gpu = f"no GPU: CPU {platform.processor() or platform.machine()}"
    return f"{gpu}; torch {torch.__version__}; {platform.platform()}"


def report(payload: dict[str, Any]) -> str:
    a = payload["args"]
    lines = [
        "# MFU of bigft's training step (full fine-tuning and LoRA)",
        "",
        f"- date: {payload['date']}",
        f"- hardware: {payload['hardware']}",
        f"- command: `{payload['command']}`",
        f"- model: Llama `{a['shape']}` shape, random weights, {a['dtype']}, sdpa attention; "
        f"micro-batch {a['micro_batch']} × {a['seq']} tokens, no padding; {a['steps']} steps, "
        f"median of the last {a['steps'] - a['warmup']}",
        f"- peak: {a['peak_tflops']:.0f} TFLOP/s; FLOPs per token: full 6·N + 12·L·d·s, "
        "LoRA 4·N + 6·N_lora + 12·L·d·s (see benchmarks/gpu/mfu.py)",
        "",
        "| mode | trainable | step (s) | tokens/s | TFLOP/s | MFU | peak memory (GiB) | loss |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in payload["results"]:
        lines.append(
            f"| {r['mode']} | {r['trainable'] / 1e6:.1f}M | {r['step_time_s']:.3f} | "
            f"{r['tokens_per_s']:.0f} | {r['achieved_tflops']:.1f} | {r['mfu']:.1%} | "
            f"{r['peak_memory_gib']:.1f} | {r['first_loss']:.3f} → {r['last_loss']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--modes", nargs="+", choices=["full", "lora"], default=["lora", "full"])
    parser.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS)
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and args.results == DEFAULT_RESULTS:
        parser.error("no GPU here: give --results elsewhere, the committed results are GPU ones")
    results = []
    for mode in args.modes:
        results.append(measure(mode, args, device))
        r = results[-1]
        print(f"{mode}: {r['step_time_s']:.3f} s/step, MFU {r['mfu']:.1%}", flush=True)
    payload = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "hardware": hardware(device),
        "command": "python " + " ".join(["benchmarks/gpu/mfu.py", *sys.argv[1:]]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "results": results,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "mfu.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.results / "mfu.md").write_text(report(payload))
    print(report(payload))


if __name__ == "__main__":
    main()
