"""DPO in the demo world: settings against the held-out ground truth, each run recorded.

    python benchmarks/demo_dpo.py --sft outputs/demo-lora-sft/merged --name NAME [-- OVERRIDE ...]

Runs `bigft-train experiment=demo_dpo` from an exported SFT model with the given overrides
(one run, minutes on 2 CPU cores), then records in benchmarks/results/demo_dpo.json (a run of
the same name is replaced) and renders demo_dpo.md from it:

- the run's first and last evaluation: held-out truth score (bigft.demo.truth:score of each of
  the 240 held-out questions' greedy answer), win rate against the SFT model's answers, pairwise
  accuracy and margin of the implicit reward, the chosen and rejected responses' log-probs;
- the kinds of the final greedy answers (how many the rule grades a right sentence, a right bare
  word, ...), generated again here from the saved model, and the SFT model's, so a change of
  score can be read as a change of what the model says;
- wall and CPU time of the training process (the machine is shared: wall time varies with load).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, ROOT, describe, machine, now

from bigft.demo import truth

RUNS = ROOT / "outputs" / "demo_dpo_runs"
KINDS = {
    truth.RIGHT_SENTENCE: "right sentence",
    truth.RIGHT_WORD: "right word",
    truth.RIGHT_OTHER: "right, unclean",
    truth.WRONG_SENTENCE: "wrong sentence",
    truth.WRONG_WORD: "wrong word",
    truth.NO_ANSWER: "no answer",
}
METRICS = [
    "truth_score",
    "win_rate",
    "rewards/accuracy",
    "rewards/margin",
    "logps/chosen",
    "logps/rejected",
    "nll/chosen",
]


def run_training(sft: Path, name: str, overrides: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one `bigft-train experiment=demo_dpo`, run in RUNS/name."""
    args = [
        "experiment=demo_dpo",
        f"model.path={sft}",
        f"name={name}",
        f"output_root={RUNS}",
        "trainer.progress_bar=false",
        *overrides,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bigft.train", *args], check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def evaluations(run_dir: Path) -> tuple[dict[str, float], dict[str, float]]:
    """The first and the last evaluation in the run's metrics.jsonl, without the eval/ prefix."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/truth_score" in r]
    pick = [
        {k.removeprefix("eval/"): v for k, v in r.items() if k.startswith("eval/")} for r in evals
    ]
    return pick[0] | {"step": evals[0]["step"]}, pick[-1] | {"step": evals[-1]["step"]}


def answer_kinds(model_dir: Path, max_new_tokens: int = 16) -> tuple[dict[str, int], list[str]]:
    """How the rule grades the greedy answers to the held-out questions; a few answers."""
    from omegaconf import OmegaConf

    from bigft.config import DEMO_DATA_DIR
    from bigft.config.schema import TaskConfig, TaskName
    from bigft.data.readers import Record
    from bigft.models.decode import greedy_answers
    from bigft.outputs import load_output
    from bigft.tasks import build_task

    model, tokenizer = load_output(model_dir)
    cfg = TaskConfig(name=TaskName.dpo, max_length=64, eval_generate=True)
    cfg.eval_score_fn = "bigft.demo.truth:score"
    task = build_task(OmegaConf.structured(cfg), tokenizer)
    lines = (DEMO_DATA_DIR / "preferences_eval.jsonl").read_text().splitlines()
    prompts = [
        task.encode(Record(json.loads(line), f"eval:{n}"))[0]["prompt_ids"]
        for n, line in enumerate(lines)
    ]
    answers: list[str] = []
    with torch.no_grad():
        for i in range(0, len(prompts), 60):
            rows = [torch.tensor(ids) for ids in prompts[i : i + 60]]
            answers += greedy_answers(
                model, tokenizer, rows, max_new_tokens=max_new_tokens, pad_id=task.pad_id
            )
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in prompts]
    kinds = Counter(KINDS[truth.score(p, a)] for p, a in zip(texts, answers, strict=True))
    examples = [f"{json.loads(lines[i])['prompt']} -> {answers[i]!r}" for i in range(0, 240, 47)]
    return {k: kinds.get(k, 0) for k in KINDS.values()}, examples


def machine_and_load() -> str:
    return (
        f"{describe(machine())}; no GPU; load average {os.getloadavg()[0]:.1f} at the end "
        "(other jobs running: wall time varies with it)"
    )


def record(
    name: str, overrides: list[str], sft: Path, note: str, times: list[float] | None = None
) -> dict[str, Any]:
    """One run's entry; `times` (wall, CPU seconds) re-records a finished run without training."""
    wall, cpu = times or run_training(sft, name, overrides)
    run_dir = RUNS / name
    before, after = evaluations(run_dir)
    kinds, examples = answer_kinds(run_dir / "model")
    return {
        "name": name,
        "sft": str(sft),
        "overrides": overrides,
        "note": note,
        "date": now(),
        "machine": machine_and_load(),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "before": before,
        "after": after,
        "answer_kinds": kinds,
        "examples": examples,
    }


def sft_kinds(sft: Path) -> dict[str, Any]:
    kinds, examples = answer_kinds(sft)
    return {
        "name": f"sft:{sft.parent.name}",
        "sft": str(sft),
        "answer_kinds": kinds,
        "examples": examples,
    }


def render(results: list[dict[str, Any]]) -> str:
    lines = [
        "# DPO in the demo world: held-out ground truth before and after",
        "",
        "Written by `python benchmarks/demo_dpo.py` (see its docstring); every run is",
        "`bigft-train experiment=demo_dpo model.path=SFT <overrides>`, evaluated on the 240",
        "held-out questions (about 40 creatures no training data names). truth = mean grade of",
        "the greedy answers by `bigft.demo.truth:score`; win = % of questions whose answer grades",
        "higher than the SFT model's (ties half); acc/margin = the implicit reward's held-out",
        "pairwise accuracy and mean margin; answer kinds after training (right sentence / right",
        "word / wrong sentence / wrong word / other) out of 240.",
        "",
        "| run | SFT model | overrides | truth before | after | win rate | acc | margin "
        "| logps chosen | rejected | kinds (RS/RW/WS/WW/other) | wall s | CPU s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in results:
        k = r["answer_kinds"]
        kinds = "/".join(
            str(k[x]) for x in ("right sentence", "right word", "wrong sentence", "wrong word")
        )
        kinds += f"/{k['right, unclean'] + k['no answer']}"
        sft = Path(r["sft"]).parent.name
        if "before" not in r:
            lines.append(f"| {r['name']} | {sft} | (no DPO) | | | | | | | | {kinds} | | |")
            continue
        b, a = r["before"], r["after"]
        lines.append(
            f"| {r['name']} | {sft} | `{' '.join(r['overrides']) or '(defaults)'}` "
            f"| {b['truth_score']:.3f} | {a['truth_score']:.3f} | {a['win_rate']:.1f} "
            f"| {a['rewards/accuracy']:.1f} | {a['rewards/margin']:.2f} "
            f"| {b['logps/chosen']:.1f} → {a['logps/chosen']:.1f} "
            f"| {b['logps/rejected']:.1f} → {a['logps/rejected']:.1f} "
            f"| {kinds} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} |"
        )
    lines += ["", "## Notes and example answers", ""]
    for r in results:
        lines.append(f"- **{r['name']}** ({r.get('date', '')}): {r.get('note', '')}")
        lines += [f"  - `{e}`" for e in r["examples"]]
    machines = sorted({r["machine"] for r in results if "machine" in r})
    lines += ["", "Machines: " + "; ".join(machines), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", type=Path, required=True, help="the exported SFT model")
    parser.add_argument("--name", help="the run's name (omit to record the SFT model's answers)")
    parser.add_argument("--note", default="", help="what the run tries")
    parser.add_argument(
        "--times",
        type=float,
        nargs=2,
        metavar=("WALL", "CPU"),
        help="re-record the finished run of this name with these times, without training",
    )
    parser.add_argument("overrides", nargs="*", help="bigft-train overrides")
    args = parser.parse_args()
    path = RESULTS / "demo_dpo.json"
    sft = args.sft.resolve()
    entry = (
        record(args.name, args.overrides, sft, args.note, args.times)
        if args.name
        else sft_kinds(sft)
    )
    # Read only now: runs take minutes, and another may have recorded meanwhile.
    results = json.loads(path.read_text()) if path.exists() else []
    results = [r for r in results if r["name"] != entry["name"]] + [entry]
    path.write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / "demo_dpo.md").write_text(render(results))
    print(render([entry]))


if __name__ == "__main__":
    main()
