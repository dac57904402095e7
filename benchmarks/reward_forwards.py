"""Reward-model steps: one forward per response (bigft now) against two per pair (bigft before).

    python benchmarks/reward_forwards.py       # ~2 min on 2 cores

InstructGPT scores each of a prompt's K ranked responses once and takes the loss over the
K(K-1)/2 pairs from those K scores; bigft used to put both sides of every pair through the model,
K(K-1) sequences per ranking. Both are run here on the same rankings, the same model and the same
micro-batches (B rankings), side by side:

- per_pair_sides   each pair's two sequences forwarded (the old collate), -log sigmoid summed;
- per_response     bigft's RewardTask: K sequences per ranking, the pairs indexed into their
                   scores (task.pair_weighting=per_pair, so both losses are the same number).

A step is forward, backward and an AdamW update, of which forward and backward are timed; steps
of the two are interleaved (so load from other processes hits both alike), the first WARMUP of
each are not timed, and the median and the fastest step are reported. Rankings are the demo
world's answers (bigft/demo/reviewers.py), K = 4 (the bundled data) and K = 9 (InstructGPT's
largest), ordered by the ground-truth rule.

Results: benchmarks/results/reward_forwards.md and .json, with the date and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import DEMO_FAMILY_SHAPE, RESULTS, demo_family_model, describe, machine, now
from omegaconf import OmegaConf
from transformers import AutoModelForSequenceClassification

from bigft.config.schema import TaskConfig, TaskName
from bigft.data.collate import collate_sequences
from bigft.data.readers import Record
from bigft.demo import reviewers, truth
from bigft.demo.make_data import SEED, make_creatures
from bigft.demo.world import ATTRIBUTES, QUESTIONS
from bigft.tasks.base import forward_logits
from bigft.tasks.reward import RewardTask


def rankings(k: int, count: int, seed: int = 0) -> list[Record]:
    """`count` demo questions with K answers each (kinds may repeat), best first by the rule."""
    rng = random.Random(seed)
    creatures = make_creatures(random.Random(SEED))
    records = []
    for n in range(count):
        creature, attr = rng.choice(creatures), rng.choice(list(ATTRIBUTES))
        prompt = QUESTIONS[attr][0].format(n=creature.name)
        answers = [
            reviewers.candidate(rng, rng.choice(reviewers.KINDS), creature, attr) for _ in range(k)
        ]
        answers.sort(key=lambda a: -truth.score(prompt, a))
        records.append(Record({"prompt": prompt, "responses": answers}, f"bench:{n}"))
    return records


def old_batch(group: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """The previous collate: both sides of every pair, all chosen rows, then all rejected."""
    chosen = [e["response_ids"][b] for e in group for b, _ in e["pairs"]]
    rejected = [e["response_ids"][w] for e in group for _, w in e["pairs"]]
    return collate_sequences(chosen + rejected, pad_id)


def old_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    rewards = forward_logits(model, batch).squeeze(-1)
    half = rewards.shape[0] // 2
    return -F.logsigmoid(rewards[:half] - rewards[half:]).sum()


def timed_step(model, optimizer, loss_fn, batch) -> tuple[float, float]:
    """Seconds of forward and backward (what the number of sequences changes), and the loss.
    The AdamW update is the same work either way and is left out of the time: on a shared CPU
    its time varied more than the difference being measured."""
    start = time.perf_counter()
    loss = loss_fn(model, batch)
    loss.backward()
    seconds = time.perf_counter() - start
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return seconds, float(loss.detach())


def bench_k(k: int, micro_batch: int, steps: int, warmup: int, work: Path) -> dict[str, Any]:
    model_dir = work / f"model-{k}"
    tokenizer = demo_family_model(model_dir, seed=0)
    task = RewardTask(
        OmegaConf.structured(TaskConfig(name=TaskName.reward, pair_weighting="per_pair")),
        tokenizer,
    )
    examples = [task.encode(r)[0] for r in rankings(k, micro_batch * (steps + warmup))]
    groups = [examples[i : i + micro_batch] for i in range(0, len(examples), micro_batch)]
    new_batches = [task.collate(g) for g in groups]
    old_batches = [old_batch(g, task.pad_id) for g in groups]

    def new_loss(model, batch):
        return task.loss(model, batch).loss_sum

    runs = {}
    for name in ("per_pair_sides", "per_response"):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
        runs[name] = (model.train(), torch.optim.AdamW(model.parameters(), lr=1e-4))
    times: dict[str, list[float]] = {"per_pair_sides": [], "per_response": []}
    losses: dict[str, list[float]] = {"per_pair_sides": [], "per_response": []}
    for step in range(len(groups)):
        order = ["per_pair_sides", "per_response"][:: 1 if step % 2 else -1]
        for name in order:
            model, optimizer = runs[name]
            fn, batch = (
                (old_loss, old_batches[step])
                if name == "per_pair_sides"
                else (new_loss, new_batches[step])
            )
            seconds, loss = timed_step(model, optimizer, fn, batch)
            losses[name].append(loss)
            if step >= warmup:
                times[name].append(seconds)
    first = {n: losses[n][0] for n in losses}
    return {
        "k": k,
        "pairs_per_ranking": k * (k - 1) // 2,
        "micro_batch_rankings": micro_batch,
        "sequences_per_ranking": {"per_pair_sides": k * (k - 1), "per_response": k},
        "step_seconds": {n: statistics.median(t) for n, t in times.items()},
        "fastest_step_seconds": {n: min(t) for n, t in times.items()},
        "first_step_loss": first,
        "tokens_per_step": {
            "per_pair_sides": int(old_batches[0]["attention_mask"].sum()),
            "per_response": int(new_batches[0]["attention_mask"].sum()),
        },
    }


def write(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = now()
    load = os.getloadavg()[0]
    payload = {
        "date": stamp,
        "machine": describe(machine()) + "; no GPU",
        "load_average": load,
        "shape": DEMO_FAMILY_SHAPE,
    }
    payload["results"] = results
    (RESULTS / "reward_forwards.json").write_text(json.dumps(payload, indent=1) + "\n")
    lines = [
        "# Reward model: one forward per response vs both sides of every pair",
        "",
        f"- date: {stamp}",
        f"- machine: {payload['machine']}; load average {load:.1f} at the end (other jobs "
        "running: absolute times inflate with it, the ratios are what to read)",
        f"- command: `python benchmarks/reward_forwards.py --steps {args.steps}`",
        f"- model: Llama {DEMO_FAMILY_SHAPE}, fp32, random weights, a one-output head; AdamW",
        f"- micro-batch: {args.micro_batch} rankings of the demo world's answers; step time: "
        f"forward + backward, median of {args.steps} steps after {args.warmup}, the two ways "
        "interleaved (the AdamW update, the same either way, is not timed)",
        "",
        "| K | pairs per ranking | sequences per ranking, before | after | tokens per step, "
        "before | after | step time (s), before | after | speed-up | fastest step, speed-up | "
        "first-step loss, before | after |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        seq, sec, tok, loss = (
            r["sequences_per_ranking"],
            r["step_seconds"],
            r["tokens_per_step"],
            r["first_step_loss"],
        )
        before, after = sec["per_pair_sides"], sec["per_response"]
        fastest = r["fastest_step_seconds"]
        lines.append(
            f"| {r['k']} | {r['pairs_per_ranking']} | {seq['per_pair_sides']} | "
            f"{seq['per_response']} | {tok['per_pair_sides']} | {tok['per_response']} | "
            f"{before:.3f} | {after:.3f} | {before / after:.1f}× | "
            f"{fastest['per_pair_sides'] / fastest['per_response']:.1f}× | "
            f"{loss['per_pair_sides']:.4f} | {loss['per_response']:.4f} |"
        )
    lines += [
        "",
        "Both ways compute the same loss (the first-step columns; `per_pair` weighting, the sum",
        "over pairs); only the number of sequences forwarded differs: K(K-1) before, K now.",
        "",
    ]
    (RESULTS / "reward_forwards.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--k", type=int, nargs="+", default=[4, 9])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_k(k, args.micro_batch, args.steps, args.warmup, Path(tmp)) for k in args.k]
    write(results, args)


if __name__ == "__main__":
    main()
