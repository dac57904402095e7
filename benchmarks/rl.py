"""Online RL throughput: bigft's task=grpo against TRL's GRPOTrainer, side by side.

    make bench-rl             # builds TRL's venv, then runs this (~20 min on 2 busy cores)
    python benchmarks/rl.py --trl-python .venv-bench-rl/bin/python
    python benchmarks/rl.py --only bigft --steps 2 --warmup 1 --rounds 1   # bigft alone

One Llama built from a config (random weights, fp32, sdpa attention) with a tokenizer trained on
the demo world's texts, the demo's questions (bigft/demo/data/prompts_train.jsonl) as prompts,
the same reward function (the demo's ground truth, `bigft.demo.truth:score`), and the same GRPO
settings for both: full fine-tuning, PROMPTS_PER_STEP prompts × NUM_GENERATIONS samples per
step generated in one batch with the KV cache (no vLLM), up to MAX_NEW_TOKENS at temperature 1,
KL to a frozen reference copy as a k3 loss term (β = KL_COEF), one clipped update per rollout
(no old log-probs), each response's tokens averaged (bigft's loss_aggregation=sequence, TRL's
loss_type="grpo"), AdamW at a constant lr with clipping at 1.0, gradient accumulation 1.

Each run is a fresh process: bigft through `bigft-train` in bigft's venv, TRL through
benchmarks/rl_trl.py in TRL's venv; the runs alternate over rounds (A B, B A, ...) so that load
from other processes hits both alike, and the first WARMUP steps of each are not timed. Figures
come from each framework's step: bigft's own metrics (train/step_seconds, and the rollout's
tokens and seconds behind train/gen_tokens_per_sec), TRL's from callbacks around its step and
a clock around its policy's `generate` (rl_trl.py says exactly where).

Results: benchmarks/results/rl.md and .json, with the date, the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    DEMO_FAMILY_SHAPE,
    RESULTS,
    ROOT,
    command,
    demo_family_model,
    describe,
    load_average,
    machine,
    now,
    write_results,
)

TRL_PYTHON = ROOT / ".venv-bench-rl" / "bin" / "python"
RUNS = ("bigft", "trl")
PROMPTS_PER_STEP = 8
NUM_GENERATIONS = 4
MAX_NEW_TOKENS = 32
TEMPERATURE = 1.0
KL_COEF = 0.04
CLIP_RANGE = 0.2
LR = 1e-5
SEED = 0


def setup(work: Path, steps: int) -> dict[str, Any]:
    """What both frameworks share; rl_trl.py reads it as JSON."""
    return {
        "work": str(work),
        "model": str(work / "model"),
        "bigft_prompts": str(work / "prompts.jsonl"),
        "trl_prompts": str(work / "prompts_trl.jsonl"),
        "steps": steps,
        "prompts_per_step": PROMPTS_PER_STEP,
        "num_generations": NUM_GENERATIONS,
        "max_new_tokens": MAX_NEW_TOKENS,
        "temperature": TEMPERATURE,
        "kl_coef": KL_COEF,
        "clip_range": CLIP_RANGE,
        "lr": LR,
        "seed": SEED,
    }


def bigft_overrides(shared: dict[str, Any], name: str) -> list[str]:
    work = Path(shared["work"])
    return [
        "model=local",
        f"model.path={shared['model']}",
        "model.dtype=fp32",
        "method=full",
        "task=grpo",
        "task.max_length=128",
        f"task.num_generations={shared['num_generations']}",
        f"task.max_new_tokens={shared['max_new_tokens']}",
        f"task.temperature={shared['temperature']}",
        f"task.kl_coef={shared['kl_coef']}",
        f"task.clip_range={shared['clip_range']}",
        "task.loss_aggregation=sequence",
        "reward.fn=bigft.demo.truth:score",
        "data=local",
        f"data.train={shared['bigft_prompts']}",
        "logger=none",
        f"optim.lr={shared['lr']}",
        "optim.scheduler=constant",
        "optim.warmup_ratio=0",
        "optim.max_grad_norm=1.0",
        f"trainer.micro_batch_size={shared['prompts_per_step']}",
        f"trainer.max_steps={shared['steps']}",
        f"trainer.seed={shared['seed']}",
        "trainer.progress_bar=false",
        "trainer.save_model=false",
        f"name={name}",
        f"output_root={work / 'outputs'}",
        f"cache_dir={work / 'cache'}",
    ]


# ---- assets: the model, the prompts as each framework reads them -------------------------------


def make_assets(work: Path) -> dict[str, Any]:
    """The model directory, bigft's prompts and TRL's: the same prompt tokens for both.

    bigft formats a bare question with its prompt template; TRL tokenizes the text it is given.
    TRL's file holds bigft's formatted prompt, decoded, and is checked to tokenize back to
    exactly bigft's prompt tokens.
    """
    from bigft.config import DEMO_DATA_DIR, compose_config
    from bigft.data.readers import Record
    from bigft.tasks import build_task

    tokenizer = demo_family_model(work / "model", seed=SEED)
    shutil.copy(DEMO_DATA_DIR / "prompts_train.jsonl", work / "prompts.jsonl")
    shared = setup(work, 1)
    cfg = compose_config(bigft_overrides(shared, "assets"))
    task = build_task(cfg.task, tokenizer)
    rows, lengths = [], []
    for n, line in enumerate((work / "prompts.jsonl").read_text().splitlines()):
        (example,) = task.encode(Record(json.loads(line), f"prompts.jsonl:{n + 1}"))
        ids = example["prompt_ids"]
        rows.append({"prompt": _text_for(tokenizer, ids)})
        lengths.append(len(ids))
    (work / "prompts_trl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {
        "prompts": len(rows),
        "prompt_tokens_median": statistics.median(lengths),
        "prompt_tokens_max": max(lengths),
        "parameters": _parameters(work / "model"),
        "vocab": len(tokenizer),
    }


def _text_for(tokenizer: Any, ids: list[int]) -> str:
    """The text TRL's `tokenizer(text)` turns into exactly `ids`."""
    for skip in (False, True):
        text = tokenizer.decode(ids, skip_special_tokens=skip)
        if tokenizer(text)["input_ids"] == ids:
            return text
    raise RuntimeError(f"no text tokenizes back to the prompt {ids}")


def _parameters(model_dir: Path) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())


# ---- one run, in its own process ---------------------------------------------------------------


def run_bigft(shared: dict[str, Any], name: str) -> list[dict[str, float]]:
    """`bigft-train` in this venv; its steps from the run's metrics.jsonl."""
    command = [str(Path(sys.executable).with_name("bigft-train")), *bigft_overrides(shared, name)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=ROOT, env=_env())
    metrics = Path(shared["work"]) / "outputs" / name / "metrics.jsonl"
    steps = []
    for line in metrics.read_text().splitlines():
        m = json.loads(line)
        if "train/step_seconds" not in m:
            continue
        tokens = m["train/response_length"] * shared["prompts_per_step"] * shared["num_generations"]
        steps.append(
            {
                "step_seconds": m["train/step_seconds"],
                "gen_seconds": tokens / m["train/gen_tokens_per_sec"],
                "gen_tokens": tokens,
            }
        )
    return steps


def run_trl(shared: dict[str, Any], name: str, python: Path) -> list[dict[str, float]]:
    work = Path(shared["work"])
    setup_file, out = work / f"{name}-setup.json", work / f"{name}.json"
    setup_file.write_text(json.dumps(shared))
    shutil.rmtree(work / "trl-output", ignore_errors=True)
    command = [str(python), str(ROOT / "benchmarks" / "rl_trl.py"), str(setup_file), str(out)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=ROOT, env=_env())
    return json.loads(out.read_text())["steps"]


def _env() -> dict[str, str]:
    # rl_trl.py imports bigft.demo.truth from this checkout; nothing may reach a hub.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("WANDB_MODE", "disabled")
    return env


def run_rounds(work: Path, args: argparse.Namespace, runs: tuple[str, ...]) -> dict[str, list]:
    """{run: [each round's timed steps]}, the runs alternating order round by round."""
    shared = setup(work, args.warmup + args.steps)
    results: dict[str, list] = {run: [] for run in runs}
    for r in range(args.rounds):
        for run in runs if r % 2 == 0 else runs[::-1]:
            started = time.perf_counter()
            name = f"{run}-{r}"
            if run == "bigft":
                steps = run_bigft(shared, name)
            else:
                steps = run_trl(shared, name, args.trl_python)
            timed = steps[args.warmup :]
            results[run].append(timed)
            median = statistics.median(s["step_seconds"] for s in timed)
            print(
                f"round {r + 1}/{args.rounds} {run:5s} median {median:.3f} s/step "
                f"({time.perf_counter() - started:.0f} s with start-up)",
                flush=True,
            )
    return results


# ---- summary and report ------------------------------------------------------------------------


def figures(rounds: list[list[dict[str, float]]]) -> dict[str, float]:
    """Medians over every timed step of every round, and the fastest step."""
    steps = [s for r in rounds for s in r]
    step_times = [s["step_seconds"] for s in steps]
    gen_rates = [s["gen_tokens"] / max(s["gen_seconds"], 1e-9) for s in steps]
    return {
        "step_seconds": statistics.median(step_times),
        "step_seconds_min": min(step_times),
        "gen_tokens_per_s": statistics.median(gen_rates),
        "gen_seconds": statistics.median(s["gen_seconds"] for s in steps),
        "gen_tokens_per_step": statistics.median(s["gen_tokens"] for s in steps),
        "other_seconds": statistics.median(s["step_seconds"] - s["gen_seconds"] for s in steps),
        "steps_timed": len(steps),
    }


def ratios(figs: dict[str, dict[str, float]]) -> dict[str, float]:
    """bigft ÷ TRL, each a speed (higher is better for bigft): the issue's target is ≥ 1.0."""
    bigft, trl = figs["bigft"], figs["trl"]
    return {
        "gen_tokens_per_s": bigft["gen_tokens_per_s"] / trl["gen_tokens_per_s"],
        "step_speed": trl["step_seconds"] / bigft["step_seconds"],
        "step_speed_fastest": trl["step_seconds_min"] / bigft["step_seconds_min"],
    }


def machine_and_trl(trl_python: Path | None) -> dict[str, Any]:
    """This venv's machine and versions, and TRL's (from its venv) if it ran."""
    facts = machine()
    if trl_python is not None:
        code = "import trl, transformers, torch; print(trl.__version__, transformers.__version__)"
        out = subprocess.run([str(trl_python), "-c", code], capture_output=True, text=True)
        trl_version, trl_transformers = [*out.stdout.split(), "?", "?"][:2]
        facts.update(trl=trl_version, trl_transformers=trl_transformers)
    return facts


def report(payload: dict[str, Any]) -> str:
    m, facts, figs = payload["machine"], payload["assets"], payload["figures"]
    trl = f"; trl {m['trl']} (transformers {m['trl_transformers']})" if "trl" in m else ""
    lines = [
        "# Online RL throughput: bigft's task=grpo vs TRL's GRPOTrainer",
        "",
        f"- date: {payload['date']}",
        f"- machine: {describe(m)}{trl}",
        f"- load average (1, 5, 15 min) before: {payload['load_before']}, "
        f"after: {payload['load_after']}",
        f"- command: `{payload['command']}`",
        f"- model: Llama, {facts['parameters'] / 1e6:.1f}M parameters, vocabulary {facts['vocab']}"
        ", fp32, sdpa attention, random weights; method=full (reference: a frozen copy)",
        f"- prompts: the demo's {facts['prompts']} questions, {facts['prompt_tokens_median']} "
        f"tokens median (max {facts['prompt_tokens_max']}), the same tokens for both",
        f"- per step: {PROMPTS_PER_STEP} prompts × {NUM_GENERATIONS} samples in one generation "
        f"batch, ≤ {MAX_NEW_TOKENS} new tokens, temperature {TEMPERATURE}, reward "
        f"bigft.demo.truth:score, KL β {KL_COEF} (k3, in the loss), clip {CLIP_RANGE}, one "
        f"update, lr {LR}; {payload['setup']['steps']} timed steps after "
        f"{payload['setup']['warmup']} warm-up, {payload['setup']['rounds']} rounds alternating",
        "",
        "| run | step (s), median | fastest step (s) | generation tokens/s | generation (s) "
        "| rest of the step (s) | tokens generated per step |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run, f in figs.items():
        lines.append(
            f"| {run} | {f['step_seconds']:.3f} | {f['step_seconds_min']:.3f} | "
            f"{f['gen_tokens_per_s']:.0f} | {f['gen_seconds']:.3f} | {f['other_seconds']:.3f} "
            f"| {f['gen_tokens_per_step']:.0f} |"
        )
    if "ratios" in payload:
        r = payload["ratios"]
        lines += [
            "",
            "| bigft ÷ TRL (higher: bigft faster; target ≥ 1.0) | ratio |",
            "|---|---:|",
            f"| generation tokens/s | {r['gen_tokens_per_s']:.2f} |",
            f"| whole step (TRL's median time ÷ bigft's) | {r['step_speed']:.2f} |",
            f"| whole step, fastest steps | {r['step_speed_fastest']:.2f} |",
        ]
    return "\n".join([*lines, "", *NOTES]) + "\n"


NOTES = [
    "How to read it: a step is rollout, scoring, the reference's log-probs, the policy's forward",
    "and backward and the optimizer step (bigft's train/step_seconds; TRL from on_step_begin to",
    "on_step_end). Generation is timed around the sampling loop (bigft's rollout, TRL's",
    "`generate`), prefill included; its tokens count up to and including each response's EOS.",
    "The machine's 2 cores are shared with other jobs: read the ratios, not the absolute times.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--trl-python", type=Path, default=TRL_PYTHON)
    parser.add_argument("--only", choices=RUNS, help="one framework alone (no ratio)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    runs = (args.only,) if args.only else RUNS
    if "trl" in runs and not args.trl_python.is_file():
        sys.exit(f"no TRL venv at {args.trl_python}: `make bench-rl` builds it")
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bigft-bench-rl-") as tmp:
        work = Path(tmp)
        assets = make_assets(work)
        results = run_rounds(work, args, runs)
    payload: dict[str, Any] = {
        "date": now(),
        "machine": machine_and_trl(args.trl_python if "trl" in runs else None),
        "load_before": load_before,
        "load_after": load_average(),
        "command": command(__file__),
        "setup": {
            **setup(Path("<tmp>"), args.steps),
            "shape": DEMO_FAMILY_SHAPE,
            "warmup": args.warmup,
            "rounds": args.rounds,
        },
        "assets": assets,
        "runs": results,
        "figures": {run: figures(rounds) for run, rounds in results.items()},
    }
    if len(runs) == 2:
        payload["ratios"] = ratios(payload["figures"])
    write_results(args.results, "rl", payload, report(payload))
    print(report(payload))


if __name__ == "__main__":
    main()
