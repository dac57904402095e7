"""Training throughput: bigft against transformers' Trainer, and what sequence packing buys.

    python benchmarks/throughput.py            # what `make bench-throughput` runs (~4 min, 2 cores)

One small Llama (built from a config, fp32, sdpa attention), one generated instruction data set
whose prompt and response lengths are log-normal like real instruction data, one micro-batch size,
sequence length, optimizer (AdamW, constant lr, clipping at 1.0) and step count for every run:

- trainer          transformers' Trainer, batches padded to their longest example (dynamic
                   padding, as bigft pads), fed bigft's batches in bigft's order, so both
                   process exactly the same tensors and only the training machinery differs;
- trainer_pad_max  the same with every batch padded to max_length (a common Trainer set-up);
- bigft            `bigft.train.train` without packing;
- bigft_packed     the same with task.packing=true (best-fit-decreasing rows of max_length).

Each run is a fresh process (clean peak memory, no warm caches shared), the runs are interleaved
over rounds (alternating order) so that load from other processes on the machine hits them
alike, and the first WARMUP steps of each run are not timed. A step is timed from the end of the
previous step to the end of this one, so data collation, logging and every per-step overhead
count, for both trainers. Peak memory is the process's peak resident set size (there is no
allocator peak to read on a CPU); it includes Python, torch and the libraries, so the growth over
the RSS measured after imports is reported too.

Results: benchmarks/results/throughput.md and .json, with the date, the machine and this command.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, command, describe, machine, now, write_results

RUNS = ("trainer", "bigft", "bigft_packed", "trainer_pad_max")
# About 11M parameters: big enough that the model's compute, not Python, dominates a step.
SHAPE = {
    "hidden_size": 384,
    "intermediate_size": 1024,
    "num_hidden_layers": 6,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}
VOCAB = 2048
MAX_LENGTH = 256
MICRO_BATCH = 8
LR = 1e-4
SEED = 0


# ---- data and model (shared by every run) --------------------------------------------------


def pseudo_words(n: int, rng: random.Random) -> list[str]:
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))))
    return sorted(words)


def lognormal_count(rng: random.Random, median: float, sigma: float) -> int:
    return max(1, round(rng.lognormvariate(math.log(median), sigma)))


def make_assets(work: Path, examples: int) -> tuple[Path, Path]:
    """The model directory and an alpaca-style train.jsonl with a long-tailed length spread.

    Instruction data sets (Alpaca, Dolly, OpenAssistant) have roughly log-normal prompt and
    response lengths with medians of tens of tokens and a tail past several hundred: here,
    medians 24 and 48 words (a word is a token here) and σ = 0.9, cut at task.max_length.
    """
    from bigft.models.toy import build_tiny_llama, build_tokenizer

    rng = random.Random(SEED)
    words = pseudo_words(1200, rng)

    def text(median: float, most: int) -> str:
        count = min(most, lognormal_count(rng, median, 0.9))
        return " ".join(rng.choice(words) for _ in range(count))

    # Prompts stop at 160 words so a response always fits; responses past max_length are cut.
    rows = [{"instruction": text(24, 160), "output": text(48, 1000)} for _ in range(examples)]
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = [r["instruction"] + " " + r["output"] for r in rows]
    tokenizer = build_tokenizer(corpus, vocab_size=VOCAB)
    model_dir = build_tiny_llama(work / "model", tokenizer, seed=SEED, **SHAPE)
    return model_dir, data


def bigft_overrides(work: Path, run: str, steps: int) -> list[str]:
    return [
        "model=local",
        f"model.path={work / 'model'}",
        "model.dtype=fp32",
        "method=full",
        "task=sft",
        f"task.max_length={MAX_LENGTH}",
        f"task.packing={'true' if run == 'bigft_packed' else 'false'}",
        "data=local",
        f"data.train={work / 'train.jsonl'}",
        "logger=none",
        f"optim.lr={LR}",
        "optim.scheduler=constant",
        "optim.max_grad_norm=1.0",
        f"trainer.micro_batch_size={MICRO_BATCH}",
        f"trainer.max_steps={steps}",
        f"trainer.seed={SEED}",
        "trainer.progress_bar=false",
        "trainer.save_model=false",
        f"name={run}",
        f"output_root={work / 'outputs'}",
        f"cache_dir={work / 'cache'}",
    ]


# ---- one run, in its own process --------------------------------------------------------------


class StepClock:
    """Step-end times and each step's real (non-padding) and total token slots."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.real: list[int] = []
        self.slots: list[int] = []

    def batch(self, input_ids: Any, real: int) -> None:
        self.slots.append(int(input_ids.numel()))
        self.real.append(int(real))

    def step_end(self) -> None:
        self.ends.append(time.perf_counter())


def run_bigft(work: Path, run: str, steps: int, clock: StepClock) -> None:
    """bigft's own entry point; two observers only record batch sizes and step-end times."""
    import bigft.train as bt
    from bigft.config import compose_config

    build_task, start_tracking = bt.build_task, bt.start_tracking

    def observed_task(cfg: Any, tokenizer: Any) -> Any:
        task = build_task(cfg, tokenizer)
        collate = task.collate

        def collate_and_count(examples: list[dict]) -> dict:
            batch = collate(examples)
            clock.batch(batch["input_ids"], int(batch["num_tokens"]))
            return batch

        task.collate = collate_and_count
        return task

    def observed_tracking(*args: Any, **kwargs: Any) -> Any:
        tracker = start_tracking(*args, **kwargs)
        log = tracker.log

        def log_and_time(metrics: dict[str, float], step: int) -> None:
            if "train/loss" in metrics:  # logged right after each step (log_every=1)
                clock.step_end()
            log(metrics, step)

        tracker.log = log_and_time
        return tracker

    bt.build_task, bt.start_tracking = observed_task, observed_tracking
    cfg = compose_config(bigft_overrides(work, run, steps))
    # A fresh run every round: an existing run directory would be resumed, not trained.
    shutil.rmtree(cfg.output_dir, ignore_errors=True)
    bt.train(cfg)


def run_trainer(work: Path, run: str, steps: int, clock: StepClock) -> None:
    """transformers' Trainer on bigft's tokenized examples, in the order bigft draws them."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from bigft.config import compose_config
    from bigft.data.collate import IGNORE_INDEX, pad_right
    from bigft.data.load import load_examples
    from bigft.engine.batches import BatchPlan
    from bigft.models.load import load_tokenizer
    from bigft.tasks import build_task

    cfg = compose_config(bigft_overrides(work, "bigft", steps))
    tokenizer = load_tokenizer(cfg.model)
    examples, _ = load_examples(cfg, build_task(cfg.task, tokenizer), tokenizer)
    plan = BatchPlan(len(examples), MICRO_BATCH, 1, 1, SEED)
    ordered = [examples[i] for s in range(steps) for i in plan.micro_batches(s, 0)[0]]
    width = MAX_LENGTH if run == "trainer_pad_max" else None

    def collate(batch: list[dict]) -> dict[str, torch.Tensor]:
        ids = [ex["input_ids"] for ex in batch]
        longest = width or max(len(x) for x in ids)
        padded = [x + [tokenizer.pad_token_id] * (longest - len(x)) for x in ids]
        out = {
            "input_ids": torch.tensor(padded),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (longest - len(x)) for x in ids]),
            "labels": pad_right(
                [ex["labels"] + [IGNORE_INDEX] * (longest - len(ex["labels"])) for ex in batch],
                IGNORE_INDEX,
            ),
        }
        clock.batch(out["input_ids"], sum(len(x) for x in ids))
        return out

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.step_end()

    model = AutoModelForCausalLM.from_pretrained(
        cfg.model.path, dtype=torch.float32, attn_implementation="sdpa"
    )
    args = TrainingArguments(
        output_dir=str(work / "outputs" / run),
        per_device_train_batch_size=MICRO_BATCH,
        max_steps=steps,
        learning_rate=LR,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=SEED,
    )
    trainer = Trainer(model=model, args=args, train_dataset=ordered, data_collator=collate)
    trainer.add_callback(Clock())
    trainer.train()


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(work: Path, run: str, steps: int, out: Path) -> None:
    import torch  # noqa: F401 (imported before the baseline RSS is read)
    import transformers  # noqa: F401

    import bigft.train  # noqa: F401

    baseline = rss_mib()
    clock = StepClock()
    (run_trainer if run.startswith("trainer") else run_bigft)(work, run, steps, clock)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"ends": clock.ends, "real": clock.real, "slots": clock.slots}
    out.write_text(json.dumps({**result, "rss_after_imports_mib": baseline, "peak_rss_mib": peak}))


# ---- the parent: interleaved rounds, summary, report -------------------------------------------


def timed_steps(raw: dict, warmup: int) -> list[dict[str, float]]:
    """Each step after `warmup`: its time (previous step's end to its end) and tokens."""
    ends = raw["ends"]
    return [
        {"time": ends[i] - ends[i - 1], "real": raw["real"][i], "slots": raw["slots"][i]}
        for i in range(warmup, len(ends))
    ]


def run_rounds(work: Path, steps: int, warmup: int, rounds: int) -> dict[str, list[dict]]:
    """{run: [one record per round]}, each with its timed steps and its memory."""
    results: dict[str, list[dict]] = {run: [] for run in RUNS}
    for r in range(rounds):
        # Alternate the order so that no run always goes first (or last) in a round.
        for run in RUNS if r % 2 == 0 else RUNS[::-1]:
            out = work / f"{run}-{r}.json"
            cmd = [sys.executable, __file__, "--child", run, "--work", str(work)]
            cmd += ["--steps", str(steps), "--out", str(out)]
            started = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
            raw = json.loads(out.read_text())
            record = {
                "steps": timed_steps(raw, warmup),
                "peak_rss_mib": raw["peak_rss_mib"],
                "rss_growth_mib": raw["peak_rss_mib"] - raw["rss_after_imports_mib"],
            }
            results[run].append(record)
            median = statistics.median(s["time"] for s in record["steps"])
            print(
                f"round {r + 1}/{rounds} {run:16s} median {median:.3f} s/step "
                f"({time.perf_counter() - started:.0f} s with start-up)",
                flush=True,
            )
    return results


def best_of_rounds(records: list[dict]) -> list[dict]:
    """Step by step, the fastest of the rounds: every round trains the same batches in the same
    order, so each step's minimum is its cost with the least interference."""
    rounds = [r["steps"] for r in records]
    return [min(group, key=lambda s: s["time"]) for group in zip(*rounds, strict=True)]


def figures(records: list[dict]) -> dict[str, float]:
    """One run's figures: best-of-rounds (the headline) and over every timed step.

    Other processes share this machine's two cores; a step that loses a core for a while takes
    up to ten times as long, in bursts of several steps. The best of the rounds, step by step,
    is what each trainer costs; the all-steps mean shows how much the interference weighed.
    """
    best = best_of_rounds(records)
    every = [s for r in records for s in r["steps"]]
    total = sum(s["time"] for s in best)
    real, slots = sum(s["real"] for s in best), sum(s["slots"] for s in best)
    return {
        "step_time_s": total / len(best),
        "tokens_per_s": slots / total,
        "real_tokens_per_s": real / total,
        "real_tokens_per_s_all_steps": sum(s["real"] for s in every)
        / sum(s["time"] for s in every),
        "padding_fraction": 1 - real / slots,
        "peak_rss_mib": max(r["peak_rss_mib"] for r in records),
        "rss_growth_mib": max(r["rss_growth_mib"] for r in records),
        "steps_timed": len(every),
    }


def ratios(figs: dict[str, dict]) -> dict[str, dict]:
    """The issue's two ratios (and one for reference), best-of-rounds and over all steps.

    bigft and the Trainer train identical batches in identical order, so their ratio of real
    tokens per second is their ratio of step times: the training machinery alone.
    """
    pairs = {
        "bigft_vs_trainer": ("bigft", "trainer", "≥ 1.0"),
        "packed_vs_unpacked_real_tokens": ("bigft_packed", "bigft", "≥ 1.5"),
        "bigft_packed_vs_trainer_pad_max_real_tokens": (
            "bigft_packed",
            "trainer_pad_max",
            "for reference",
        ),
    }
    key = "real_tokens_per_s"
    return {
        name: {
            "best": figs[a][key] / figs[b][key],
            "all_steps": figs[a][f"{key}_all_steps"] / figs[b][f"{key}_all_steps"],
            "target": target,
        }
        for name, (a, b, target) in pairs.items()
    }


def data_facts(work: Path) -> dict[str, Any]:
    """Token lengths of the examples every run trains on, and how full packing fills rows."""
    import torch

    from bigft.config import compose_config
    from bigft.data.load import load_examples
    from bigft.data.packing import fill_ratio, pack_examples
    from bigft.models.load import load_tokenizer
    from bigft.tasks import build_task

    cfg = compose_config(bigft_overrides(work, "bigft", 1))
    tokenizer = load_tokenizer(cfg.model)
    examples, _ = load_examples(cfg, build_task(cfg.task, tokenizer), tokenizer)
    lengths = sorted(len(ex["input_ids"]) for ex in examples)
    rows = pack_examples(examples, MAX_LENGTH, SEED)
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(cfg.model.path))
    return {
        "examples": len(examples),
        "length_median": statistics.median(lengths),
        "length_p90": lengths[int(0.9 * (len(lengths) - 1))],
        "length_max": lengths[-1],
        "truncated_at_max_length": sum(n == MAX_LENGTH for n in lengths),
        "packed_rows": len(rows),
        "packed_fill": fill_ratio(rows, MAX_LENGTH),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


COLUMNS = (
    ("step_time_s", "step time (s)", "{:.3f}"),
    ("tokens_per_s", "tokens/s (all)", "{:.0f}"),
    ("real_tokens_per_s", "real tokens/s", "{:.0f}"),
    ("real_tokens_per_s_all_steps", "real tokens/s, all steps", "{:.0f}"),
    ("padding_fraction", "padding", "{:.1%}"),
    ("peak_rss_mib", "peak RSS (MiB)", "{:.0f}"),
    ("rss_growth_mib", "RSS growth (MiB)", "{:.0f}"),
)


def setup_lines(payload: dict[str, Any]) -> list[str]:
    facts, setup = payload["data"], payload["setup"]
    return [
        f"- date: {payload['date']}",
        f"- machine: {payload['machine']}",
        f"- command: `{payload['command']}` (`make bench-throughput` runs it with the defaults)",
        f"- model: Llama, {facts['parameters'] / 1e6:.1f}M parameters ({setup['shape']}), "
        "fp32, sdpa attention, random weights built from a config",
        f"- data: {facts['examples']} generated alpaca-style records, log-normal prompt and "
        f"response lengths; tokens per example: median {facts['length_median']}, "
        f"p90 {facts['length_p90']}, max {facts['length_max']} "
        f"({facts['truncated_at_max_length']} cut at max_length)",
        f"- task=sft, method=full, max_length {MAX_LENGTH}, micro-batch {MICRO_BATCH}, AdamW at a "
        f"constant lr, clipping at 1.0; {setup['steps']} steps per run, the first "
        f"{setup['warmup']} not timed; {setup['rounds']} interleaved rounds, each run a fresh "
        "process",
        f"- packing: {facts['examples']} examples → {facts['packed_rows']} rows, "
        f"{facts['packed_fill']:.1%} of their slots filled",
    ]


def report(payload: dict[str, Any]) -> str:
    means = payload["figures"]
    lines = [
        "# Training throughput: bigft vs transformers' Trainer, and sequence packing",
        "",
        *setup_lines(payload),
        "",
        "| run | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for run in RUNS:
        cells = [fmt.format(means[run][key]) for key, _, fmt in COLUMNS]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    lines += ["", "| ratio | best of rounds | all steps | target |", "|---|---:|---:|---|"]
    for name, r in payload["ratios"].items():
        lines.append(f"| {name} | {r['best']:.2f} | {r['all_steps']:.2f} | {r['target']} |")
    lines += ["", *NOTES]
    return "\n".join(lines) + "\n"


NOTES = [
    "How to read it:",
    "",
    "- `trainer` and `bigft` train identical tensors: the Trainer is fed bigft's tokenized",
    "  examples in bigft's batch order, padded to each batch's longest as bigft pads, with the",
    "  same optimizer settings. `bigft_vs_trainer` is the ratio of their real tokens per second,",
    "  which here is the inverse ratio of their step times. `trainer_pad_max` pads every batch",
    "  to max_length, a common Trainer set-up.",
    "- real tokens are the non-padding ones; `tokens/s (all)` counts padding too.",
    "- a step is timed from the end of the previous step to the end of this one: collation,",
    "  logging and every per-step overhead count, for both trainers.",
    "- step time and tokens/s are best of rounds, step by step (each round trains the same",
    "  batches): other processes share this machine's two cores and slow some steps up to",
    "  tenfold, in bursts. `real tokens/s, all steps` and the `all steps` ratios include them.",
    "- peak RSS is the process's peak resident memory (a CPU has no allocator peak to read);",
    "  RSS growth is that peak minus the RSS after importing torch, transformers and bigft.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=18)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--examples", type=int, default=1500)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=RUNS)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        child(args.work, args.child, args.steps, args.out)
        return
    with tempfile.TemporaryDirectory(prefix="bigft-throughput-") as tmp:
        work = Path(tmp)
        make_assets(work, args.examples)
        facts = data_facts(work)
        results = run_rounds(work, args.steps, args.warmup, args.rounds)
    payload = {
        "date": now(),
        "machine": describe(machine()),
        "command": command(__file__),
        "setup": {
            "shape": SHAPE,
            "steps": args.steps,
            "warmup": args.warmup,
            "rounds": args.rounds,
        },
        "data": facts,
        "runs": results,
    }
    payload["figures"] = {run: figures(records) for run, records in results.items()}
    payload["ratios"] = ratios(payload["figures"])
    write_results(args.results, "throughput", payload, report(payload))
    print(report(payload))


if __name__ == "__main__":
    main()
