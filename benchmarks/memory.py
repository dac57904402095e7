"""`make bench-memory`: one training step of LLaMA-65B under bigft, two independent ways.

For every configuration of issue 5: the analytic estimate (bigft.plan.estimate) beside a trace of
bigft's real step on fake tensors (bigft.plan.trace), with the per-component breakdown; ZeRO-3
rows beside DeepSpeed's own estimator; and the tracer checked against a step measured for real on
this machine's CPU. Writes benchmarks/results/memory.{md,json,png}.

    .venv/bin/python benchmarks/memory.py [--skip-validation]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bigft.config import compose_config
from bigft.plan import check_fits
from bigft.plan.estimate import COMPONENTS, GIB

RESULTS = Path(__file__).resolve().parent / "results"
PAPER_FULL_GIB, PAPER_QLORA_GIB = 780, 48
GB = 1e9  # decimal, beside GiB for the headline: "48 GB" GPUs hold 48 GiB; 48e9 bytes is less

ONE_GPU = ["trainer.micro_batch_size=1", "trainer.grad_accum=1", "task.max_length=512"]
ROWS: list[tuple[str, list[str], bool]] = [
    (
        "full, 16-bit mixed precision, AdamW, 1 GPU",
        # The defaults: the bf16 checkpoint trained with fp32 master weights under bf16 autocast.
        ["model=llama65b", "method=full", "model.gradient_checkpointing=false", *ONE_GPU],
        True,
    ),
    ("QLoRA as the paper ran it, 1 GPU", ["experiment=llama65b_qlora", *ONE_GPU], True),
    (
        "QLoRA, fp32 adapters, embeddings and head (peft's defaults), 1 GPU",
        ["experiment=llama65b_qlora", "method.adapter_dtype=null", *ONE_GPU],
        True,
    ),
    (
        "LoRA r=64 (bf16 adapters) over a bf16 base, 1 GPU",
        [
            "experiment=llama65b_qlora",
            "method=lora",
            "method.r=64",
            "method.alpha=16",
            "optim=adamw",
            *ONE_GPU,
        ],
        True,
    ),
    (
        "freeze: head + last 2 blocks (fp32) over frozen bf16 blocks, 1 GPU",
        ["model=llama65b", "method=freeze", "method.train_last_n_blocks=2", *ONE_GPU],
        True,
    ),
    (
        "full, pure bf16 (trainer.precision=bf16-true, stochastic rounding), AdamW, 1 GPU",
        [
            "model=llama65b",
            "method=full",
            "trainer.precision=bf16-true",
            "model.gradient_checkpointing=false",
            *ONE_GPU,
        ],
        True,
    ),
]
for _gpus in (8, 16, 32, 64):
    for _offload in (False, True):
        ROWS.append(
            (
                f"ZeRO-3 full, {_gpus} GPUs" + (", optimizer offload" if _offload else ""),
                [
                    "experiment=llama65b_full_zero3",
                    f"launcher.nodes={_gpus // 8}",
                    f"distributed={'zero3_offload' if _offload else 'zero3'}",
                    *ONE_GPU,
                ],
                False,
            )
        )

# A 134M-parameter Llama for checking the tracer against a real step on this CPU.
VALIDATION = [
    "model=llama7b",
    "model.shape.hidden_size=768",
    "model.shape.intermediate_size=2048",
    "model.shape.num_hidden_layers=12",
    "model.shape.num_attention_heads=12",
    "model.shape.num_key_value_heads=12",
    "model.dtype=fp32",
    "model.gradient_checkpointing=false",
    "method=full",
    "optim=adamw",
    "trainer.micro_batch_size=2",
    "trainer.grad_accum=1",
    "task.max_length=256",
]


def deepspeed_zero3(overrides: list[str]) -> dict[str, float]:
    """DeepSpeed's own per-GPU estimate of ZeRO-3 model states (params, grads, optimizer).

    estimate_zero3_model_states_mem_needs_all_live(model) is model_to_params(model) followed by
    estimate_zero3_model_states_mem_needs; model_to_params deduplicates tied weights by
    data_ptr(), which is 0 for every meta tensor, so on a model without storage it counts one
    tensor. The same two numbers (total parameters, most parameters held directly by one module)
    come from the meta-device shape here; the validation section shows they equal model_to_params
    on a real model.
    """
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    plan = check_fits(compose_config(overrides))
    s = plan.setup
    _, gpu, _ = estimate_zero3_model_states_mem_needs(
        total_params=plan.shape.total_params,
        largest_layer_params=plan.shape.largest_module_params,
        num_gpus_per_node=s.ranks_per_node,
        num_nodes=s.nodes,
        cpu_offload=s.offload_optimizer,
        cpu_offload_params=s.offload_params,
        zero_init=True,
    )
    b = plan.breakdown
    return {"deepspeed": gpu / GIB, "bigft_model_states": (b.weights + b.trainable) / GIB}


def run_rows() -> list[dict[str, Any]]:
    from bigft.plan.trace import trace_step

    rows = []
    for label, overrides, traceable in ROWS:
        cfg = compose_config(overrides)
        row: dict[str, Any] = {"label": label, "overrides": overrides}
        row["analytic"] = check_fits(cfg).breakdown.as_dict()
        if traceable:
            result = trace_step(cfg, steps=2)
            row["traced"] = result.breakdown.as_dict()
            row["trace_seconds"] = result.seconds
        else:
            row["deepspeed"] = deepspeed_zero3(overrides)
        print(f"{label}: {row['analytic']['total'] / GIB:.1f} GiB", flush=True)
        rows.append(row)
    return rows


def measure_real_step(overrides: list[str]) -> dict[str, float]:
    """In this process: one real bigft step on the CPU; peak RSS above the pre-model baseline."""
    import psutil
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from bigft.distributed.engine import PlainEngine
    from bigft.distributed.env import DistEnv
    from bigft.engine.optim import build_optimizer
    from bigft.methods import apply_method
    from bigft.plan.shape import hf_config_dict
    from bigft.tasks.lm import causal_loss_sum

    cfg = compose_config(overrides)
    keys = hf_config_dict(cfg.model)
    config = AutoConfig.for_model(keys.pop("model_type"), **keys)
    torch.manual_seed(0)
    baseline = psutil.Process().memory_info().rss
    model = apply_method(AutoModelForCausalLM.from_config(config), cfg.method, "causal_lm")
    engine = PlainEngine(model, build_optimizer(model, cfg.optim), DistEnv(), 1.0)
    b, s = int(cfg.trainer.micro_batch_size), int(cfg.task.max_length)
    ids = torch.randint(0, config.vocab_size, (b, s))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    for _ in range(2):
        engine.backward(causal_loss_sum(model, batch) / ids.numel())
        engine.step()
    from deepspeed.runtime.zero.stage3 import model_to_params

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    total, largest = model_to_params(model)
    return {"measured": (peak - baseline) / GIB, "ds_total": total, "ds_largest": largest}


def validate_tracer() -> dict[str, float]:
    from bigft.plan.trace import trace_step

    cmd = [sys.executable, __file__, "--measure", json.dumps(VALIDATION)]
    # glibc raises its mmap threshold after each large free (up to 32 MiB) and then keeps freed
    # heap memory resident, so resident memory would stay above the live tensors. A fixed 64 KiB
    # threshold gives every tensor of any size its own mapping, returned to the system when freed.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    measured = json.loads(out.strip().splitlines()[-1])
    cfg = compose_config(VALIDATION)
    traced = trace_step(cfg, steps=2, gpu_optimizer=False).breakdown.total / GIB
    plan = check_fits(cfg)
    return {
        **measured,
        "params": plan.shape.total_params,
        "largest": plan.shape.largest_module_params,
        "traced": traced,
        "analytic": plan.breakdown.total / GIB,
        "error_pct": 100 * (traced - measured["measured"]) / measured["measured"],
    }


def _gib(d: dict[str, Any] | None, key: str = "total") -> str:
    return "—" if d is None else f"{d[key] / GIB:,.1f}"


def _gib_and_gb(d: dict[str, Any]) -> str:
    return f"{d['total'] / GIB:,.1f} GiB = {d['total'] / GB:,.1f} GB"


def _components(d: dict[str, Any]) -> str:
    return " / ".join(f"{d[c] / GIB:.1f}" for c in COMPONENTS)


def markdown(rows: list[dict[str, Any]], val: dict[str, float] | None, when: str) -> str:
    head = [
        "# Memory of one bigft training step, LLaMA-65B (65.29 B parameters)",
        "",
        f"Generated {when} by `make bench-memory` (`benchmarks/memory.py`) on {_hardware()}.",
        "All figures in GiB (2^30 bytes) per GPU at the step's peak, unless marked GB (10^9 "
        "bytes). Micro-batch 1 × 512 tokens.",
        "Breakdown: weights / trainable / gradients / optimizer / activations / temporaries.",
        "",
        "| configuration | analytic | traced | DeepSpeed (model states) | analytic breakdown |"
        " traced breakdown |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        ds = r.get("deepspeed")
        ds_cell = f"{ds['deepspeed']:,.1f}" if ds else "—"
        traced = r.get("traced")
        head.append(
            f"| {r['label']} | {_gib(r['analytic'])} | {_gib(traced)} | {ds_cell} | "
            f"{_components(r['analytic'])} | {_components(traced) if traced else '—'} |"
        )
    full, qlora = rows[0], rows[1]
    head += [
        "",
        "Headline, the QLoRA paper's two figures for LLaMA-65B:",
        "",
        "| configuration | analytic | traced | paper |",
        "|---|---:|---:|---|",
        f"| {full['label']} | {_gib_and_gb(full['analytic'])} | {_gib_and_gb(full['traced'])} |"
        f" > {PAPER_FULL_GIB} GB |",
        f"| {qlora['label']} | {_gib_and_gb(qlora['analytic'])} | "
        f"{_gib_and_gb(qlora['traced'])} | < {PAPER_QLORA_GIB} GB |",
        "",
        f"Full 16-bit fine-tuning needs more than {PAPER_FULL_GIB} in either unit; QLoRA fits "
        f"under {PAPER_QLORA_GIB} in either unit ({PAPER_QLORA_GIB} GB = "
        f"{PAPER_QLORA_GIB * GB / GIB:.1f} GiB).",
    ]
    if val:
        head += [
            "",
            "## The tracer against a real step",
            "",
            f"A {val['params'] / 1e6:.0f} M-parameter Llama (full fine-tuning, fp32, AdamW, "
            "micro-batch 2 × 256, two steps), run for real on this CPU: peak resident memory "
            "(getrusage) above the resident memory before the model was built, with glibc's mmap "
            f"threshold fixed at 64 KiB so freed tensors leave: {val['measured']:.3f} GiB; traced "
            f"{val['traced']:.3f} GiB ({val['error_pct']:+.1f}%); analytic "
            f"{val['analytic']:.3f} GiB.",
            f"DeepSpeed's model_to_params on that real model: {val['ds_total']:,} parameters, "
            f"largest module {val['ds_largest']:,}; bigft's meta-device count: "
            f"{val['params']:,} and {val['largest']:,}.",
        ]
    return "\n".join([*head, "", NOTES]) + "\n"


NOTES = """## How to read it

- **analytic**: bigft.plan.estimate, bytes per parameter by component and per-layer activation
  formulas (Korthikanti et al. 2022, redone for the Llama block); what `bigft-plan` prints.
- **traced**: bigft.plan.trace, bigft's own model set-up, method, optimizer, loss and step run
  twice on fake tensors under torch's MemTracker; nothing is allocated. Substituted: the
  `Params4bit` wrapper of the 4-bit weights (a plain uint8 Parameter with the same bytes and
  bitsandbytes' own QuantState; quantization, layer and matmul are bitsandbytes' code through its
  registered fake kernels); torch's AdamW is fused, as bigft builds it on a GPU and a CPU (one
  kernel per parameter group, no temporaries beside its state).
- **Full fine-tuning in 16-bit mixed precision** is bigft's default from the bf16 checkpoint
  (`trainer.precision=auto`, i.e. `bf16-mixed`): fp32 master weights under bf16 autocast, 4 + 4
  + 8 bytes per parameter for weights, gradients and AdamW's moments; the QLoRA paper's
  ">780 GB" is the 12 bytes/parameter lower bound. **Pure bf16** (`trainer.precision=bf16-true`,
  only by name) holds 2 + 2 + 4 bytes, plus the stochastic-rounding step's fp32 temporaries for
  the largest tensor (the embeddings); updates below bf16's spacing survive only on average.
  MemTracker files whatever `optimizer.step()` allocates as optimizer state, so the trace shows
  those temporaries under "optimizer" (248.1 = 243.2 + 4.9); the totals agree within 0.1%.
- **freeze** trains the head and the last 2 blocks in fp32 (master weights) over frozen blocks
  kept in the checkpoint's bf16.
- **QLoRA as the paper ran it** (`experiment=llama65b_qlora`): NF4 with double quantization
  (0.516 bytes/weight); LoRA adapters, embeddings and head in bf16 and norms in fp32
  (`method.adapter_dtype=bf16`, what the paper's qlora.py casts after
  prepare_model_for_kbit_training); paged AdamW with 32-bit state (8 bytes per adapter weight,
  whatever the adapter's dtype). `method.adapter_dtype=null` keeps peft's defaults (fp32
  adapters; embeddings, norms and head upcast to fp32): the "fp32 adapters" row. The LoRA row
  inherits the experiment's bf16 adapters.
- **ZeRO-3 rows** are not traced: DeepSpeed cannot run on fake tensors. DeepSpeed's column is its
  `estimate_zero3_model_states_mem_needs` (what `..._all_live` computes): 18 bytes/parameter / GPUs
  (2 for 16-bit parameters, 16 for fp32 gradients, master weights and Adam moments) plus 4 bytes ×
  the largest module for gathering, without offload; 2 bytes/parameter / GPUs plus the largest
  module with optimizer offload. It counts model states only (no activations, no communication
  buckets) and keeps gradients in fp32; bigft's analytic column counts 16 bytes/parameter (bf16
  gradients, as DeepSpeed's bf16 mode keeps them) plus DeepSpeed's working buffers (gathered block
  and prefetch, reduce bucket, one fp32 sub-group of gradients and Adam's temporary at the step).
"""


def _hardware() -> str:
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {gpu}"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Stacked bars by component on linear axes (a log axis distorts stacked shares): the
    one-GPU full fine-tuning rows on their own panel (~1,000 GiB), the rest up to 140.
    The paper's thresholds are drawn and labelled on their panels: 780 above, 48 below (48 GiB
    dashed, 48 GB = 44.7 GiB dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = []
    for r in rows:
        bars.append((r["label"] + " (analytic)", r["analytic"]))
        if r.get("traced"):
            bars.append((r["label"] + " (traced)", r["traced"]))
    big = [b for b in bars if b[1]["total"] / GIB > 300]
    rest = [b for b in bars if b[1]["total"] / GIB <= 300]
    fig, axes = plt.subplots(
        2, 1, figsize=(11, 0.4 * len(bars) + 2.5), height_ratios=[len(big) + 1, len(rest) + 1]
    )
    thresholds = (
        [(PAPER_FULL_GIB, "--", f"{PAPER_FULL_GIB} GiB: the paper's full 16-bit figure", "left")],
        [
            (PAPER_QLORA_GIB, "--", f"{PAPER_QLORA_GIB} GiB", "right"),
            (
                PAPER_QLORA_GIB * GB / GIB,
                ":",
                f"{PAPER_QLORA_GIB} GB = {PAPER_QLORA_GIB * GB / GIB:.1f} GiB",
                "left",
            ),
        ],
    )
    for ax, panel, lines in zip(axes, (big, rest), thresholds, strict=True):
        left = [0.0] * len(panel)
        for i, comp in enumerate(COMPONENTS):
            widths = [b[comp] / GIB for _, b in panel]
            ax.barh(range(len(panel)), widths, left=left, label=comp, color=f"C{i}")
            left = [x + w for x, w in zip(left, widths, strict=True)]
        for x, style, text, side in lines:
            ax.axvline(x, color="black", linestyle=style, linewidth=1)
            # x in data, y in axes coordinates: always inside the panel, whatever its bars.
            right = side == "right"
            ax.annotate(
                text,
                (x, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3 if right else -3, -3),
                textcoords="offset points",
                ha="left" if right else "right",
                va="top",
                fontsize=8,
                bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none"},
            )
        ax.set_yticks(range(len(panel)), [name for name, _ in panel], fontsize=8)
        ax.set_ylim(len(panel) - 0.5, -1.2)  # top down, with a free strip for the labels
        ax.set_xlabel("GiB (2^30 bytes) per GPU at the step's peak")
    axes[0].set_title("LLaMA-65B, one bigft training step, by component")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-validation", action="store_true")
    parser.add_argument("--plot-only", action="store_true", help="redraw from memory.json")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # the child process of validation
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_real_step(json.loads(args.measure))))
        return
    if args.plot_only:
        plot(json.loads((RESULTS / "memory.json").read_text())["rows"], RESULTS / "memory.png")
        return
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = run_rows()
    val = None if args.skip_validation else validate_tracer()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory.json").write_text(
        json.dumps({"date": when, "rows": rows, "validation": val}, indent=1, default=str)
    )
    (RESULTS / "memory.md").write_text(markdown(rows, val, when))
    plot(rows, RESULTS / "memory.png")
    print((RESULTS / "memory.md").read_text())


if __name__ == "__main__":
    main()
