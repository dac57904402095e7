"""Generation alone, in one process: bigft's rollout against transformers' `generate`.

    python benchmarks/rl_generate.py [--repeats 5]

benchmarks/rl.py compares whole frameworks in separate processes, which a loaded machine makes
noisy. Here the two samplers take turns on one model in one process, so that load hits both
alike: bigft's `generate_rollout` and transformers' `generate` with the GenerationConfig TRL's
GRPOTrainer builds (sampling at temperature 1, top_k 0, top_p 1, no compile), on benchmarks/rl.py's
model, 32 copies of a demo prompt, 32 new tokens. Prints each turn's seconds and the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import rl as bench
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from bigft.rl.rollout import generate_rollout

ROWS, NEW_TOKENS = 32, 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bigft-rl-generate-") as tmp:
        bench.make_assets(Path(tmp))
        tokenizer = AutoTokenizer.from_pretrained(Path(tmp) / "model")
        model = AutoModelForCausalLM.from_pretrained(
            Path(tmp) / "model", dtype=torch.float32, attn_implementation="sdpa"
        ).eval()
        # The demo's first question as bigft formats it, which TRL's prompt file holds.
        first = (Path(tmp) / "prompts_trl.jsonl").read_text().splitlines()[0]
    prompts = [tokenizer(json.loads(first)["prompt"])["input_ids"]] * ROWS
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    config = GenerationConfig(
        max_new_tokens=NEW_TOKENS,
        do_sample=True,
        pad_token_id=pad,
        eos_token_id=[eos],
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        disable_compile=True,
    )
    ids = torch.tensor(prompts)
    times: dict[str, list[float]] = {"transformers generate": [], "bigft rollout": []}
    for turn in range(args.repeats):
        started = time.perf_counter()
        with torch.no_grad():
            model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config
            )
        times["transformers generate"].append(time.perf_counter() - started)
        started = time.perf_counter()
        seeds = list(range(turn * ROWS, (turn + 1) * ROWS))
        generate_rollout(
            model, prompts, max_new_tokens=NEW_TOKENS, eos_ids=[eos], pad_id=pad, seeds=seeds
        )
        times["bigft rollout"].append(time.perf_counter() - started)
        print(" ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    for name, seconds in times.items():
        print(f"{name}: median {statistics.median(seconds):.2f} s, fastest {min(seconds):.2f} s")


if __name__ == "__main__":
    main()
