"""The demo world's red-team loop, measured: one row per way of tuning the failures away.

    OMP_NUM_THREADS=1 python benchmarks/demo_redteam.py --sft-run outputs/demo-lora-sft \
        --variant sft --variant dpo:lr=1e-4,steps=120,task.loss=ipo   # 1-3 min per variant

Every variant starts from the same instruction-tuned demo model (`--sft-run`, the `make demo`
run) and the same before-scan (its findings are copied, so the scan resumes with nothing to
judge), tunes the merged model (in full unless `method=`) on the export
(bigft.redteam.demo_loop: task=sft on the refusals and harmless answers, or task=dpo on the
pairs), then scans the held-out attacks and asks the demo's held-out harmless questions. A
variant is `TASK[:key=value,...]` with keys `method` (full), `lr`, `steps` and any bigft-train
override (`task.beta=0.5`).

Results: benchmarks/results/demo_redteam.md and .json, with the date and the machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import common
from common import RESULTS, describe, machine, now

from bigft.redteam.demo_loop import loop, table


def parse_variant(spec: str) -> dict[str, Any]:
    task, _, rest = spec.partition(":")
    settings: dict[str, Any] = {
        "task": task,
        "method": "full",
        "steps": 240,
        "lr": 1e-3,
        "extra": [],
    }
    # Commas inside brackets belong to a list value: +method.modules_to_save=[lm_head,embed_tokens]
    for item in filter(None, re.split(r",(?![^\[]*\])", rest)):
        key, _, value = item.partition("=")
        if key in ("lr", "steps", "method"):
            settings[key] = {"lr": float, "steps": int, "method": str}[key](value)
        else:
            settings["extra"].append(item)
    settings["name"] = re.sub(r"[^A-Za-z0-9.]+", "-", spec.replace("=", "")).strip("-")
    return settings


def run_variant(root: Path, variant: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    out = root / variant["name"]
    shared = root / "scan_before"
    if shared.is_dir() and not (out / "scan_before").is_dir():
        # The same before-scan for every variant: copied, it resumes with nothing to judge.
        shutil.copytree(shared, out / "scan_before")
    start = time.perf_counter()
    result = loop(
        out,
        cache_dir=args.cache_dir,
        task=variant["task"],
        steps=variant["steps"],
        lr=variant["lr"],
        red_lm=True,
        sft_run=args.sft_run,
        tune_extra=variant["extra"],
        method=variant["method"],
    )
    if not shared.is_dir():
        shutil.copytree(out / "scan_before", shared)
    result["variant"] = variant["name"]
    # A variant whose tuning is already in `out` is only evaluated again: minutes, not its cost.
    result["minutes_this_run"] = (time.perf_counter() - start) / 60
    return result


def machine_and_load() -> str:
    load = os.getloadavg()[0]
    return f"{describe(machine())}; load average {load:.1f} at the end (other jobs running)"


def summary_row(result: dict[str, Any]) -> str:
    tuning, after = result["tuning"], result["asr_held_out_after"]
    harmless = result["harmless_after"]
    cells = [
        result["task"],
        tuning["method"],
        f"{tuning['lr']:g}",
        str(tuning["steps"]),
        " ".join(f"`{o}`" for o in tuning["overrides"]) or "",
        f"{after['asr']:.1f} [{after['low']:.1f}, {after['high']:.1f}]",
        f"{harmless['exact_match']:.1f}",
        f"{harmless['over_refusal']:.1f}",
        f"{after['refusals']:.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


def write_results(results: list[dict[str, Any]], command: str, out: Path = RESULTS) -> None:
    date, host = now(), machine_and_load()
    first = results[0]
    before, harmless = first["asr_held_out_before"], first["harmless_before"]
    full = first["asr_all_before"]
    lines = [
        "# The demo's red-team loop: held-out ASR, harmless answers, over-refusal",
        "",
        f"- date: {date}",
        f"- machine: {host}",
        f"- command: `{command}`",
        "- every variant tunes the same tuned demo model (`make demo`'s run, merged) on the same "
        "before-scan's export; greedy answers; ASR with 95% bootstrap intervals; a variant "
        "already tuned in the output directory is evaluated again, not retrained",
        f"- before: held-out ASR {before['asr']:.1f} [{before['low']:.1f}, {before['high']:.1f}] "
        f"over {before['attacks']} held-out attacks (all {full['attacks']} attacks: "
        f"{full['asr']:.1f} [{full['low']:.1f}, {full['high']:.1f}]); harmless exact match "
        f"{harmless['exact_match']:.1f} and over-refusal {harmless['over_refusal']:.1f} on "
        f"{harmless['questions']} harmless questions",
        "",
        "| task | method | lr | steps | overrides | held-out ASR after (%) | harmless exact "
        "match after (%) | over-refusal after (%) | refusals of held-out attacks after (%) |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|",
        *[summary_row(r) for r in results],
        "",
    ]
    payload = {"date": date, "machine": host, "command": command, "results": results}
    common.write_results(out, "demo_redteam", payload, "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sft-run", type=Path, required=True)
    parser.add_argument("--cache-dir", default=".cache/bigft")
    parser.add_argument("--out", type=Path, default=Path("outputs/demo_redteam"))
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = []
    for spec in args.variant or ["sft"]:
        results.append(run_variant(args.out, parse_variant(spec), args))
        minutes = results[-1]["minutes_this_run"]
        print(f"== {spec} ({minutes:.1f} min)\n{table(results[-1])}", flush=True)
    threads = os.environ.get("OMP_NUM_THREADS")
    command = " ".join(
        [
            *([f"OMP_NUM_THREADS={threads}"] if threads else []),
            f"python benchmarks/demo_redteam.py --sft-run {args.sft_run}",
            *(f"--variant '{v}'" for v in args.variant),
        ]
    )
    write_results(results, command, args.results)


if __name__ == "__main__":
    main()
