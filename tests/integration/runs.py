"""Helpers to run `bigft.train.train` end to end on the tiny local Llama and generated data."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "echo",
    "fox",
    "quick",
    "brown",
    "lazy",
    "dog",
    "cat",
    "reward",
    "model",
    "great",
    "awful",
]


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_task_data(root: Path, task: str, n: int = 24, seed: int = 0) -> Path:
    """A small data set in the task's native format, with varied lengths."""
    rng = random.Random(seed)
    rows: list[dict]
    if task == "lm":
        rows = [{"text": _sentence(rng, rng.randint(3, 20))} for _ in range(n)]
    elif task == "sft":
        rows = [
            {
                "instruction": _sentence(rng, rng.randint(2, 8)),
                "output": _sentence(rng, rng.randint(1, 6)),
            }
            for _ in range(n)
        ]
    elif task == "classify":
        rows = [
            {"text": _sentence(rng, rng.randint(2, 10)), "label": rng.choice(["neg", "pos"])}
            for _ in range(n)
        ]
    elif task == "reward":
        rows = [_ranked(rng, reviewers=i % 2 + 1) for i in range(n)]
    elif task == "dpo":
        rows = [_preference(rng, ranked=i % 3 == 2) for i in range(n)]
    elif task in ("grpo", "ppo"):
        rows = [{"prompt": _sentence(rng, rng.randint(2, 5))} for _ in range(n)]
    else:
        raise ValueError(task)
    return write_jsonl(root / f"{task}-{seed}.jsonl", rows)


def _ranked(rng: random.Random, reviewers: int) -> dict:
    """2 to 4 responses, best first (one reviewer) or with several reviewers' rankings."""
    row = {
        "prompt": _sentence(rng, 4),
        "responses": [_sentence(rng, rng.randint(1, 5)) for _ in range(rng.randint(2, 4))],
    }
    if reviewers > 1:
        k = len(row["responses"])
        row["rankings"] = [rng.sample(range(k), k) for _ in range(reviewers)]
    return row


def _preference(rng: random.Random, *, ranked: bool) -> dict:
    """A pair (or a ranking of 3) where the better answers end in "great", the worse in "awful"."""
    prompt = _sentence(rng, 3)
    best, worst = (f"{_sentence(rng, rng.randint(1, 4))} {end}" for end in ("great", "awful"))
    if ranked:
        return {"prompt": prompt, "responses": [best, _sentence(rng, 2), worst]}
    return {"prompt": prompt, "chosen": best, "rejected": worst}


def train_overrides(
    tmp_path: Path, model_dir: Path, task: str, method: str = "full", **extra
) -> list[str]:
    data = make_task_data(tmp_path, task)
    evaluation = make_task_data(tmp_path, task, n=8, seed=1)
    overrides = [
        "model=local",
        f"model.path={model_dir}",
        "model.dtype=fp32",
        f"method={method}",
        f"task={task}",
        "task.max_length=64",
        "data=local",
        f"data.train={data}",
        f"data.eval={evaluation}",
        "logger=none",
        "optim.lr=1e-3",
        "optim.warmup_ratio=0",
        "trainer.micro_batch_size=2",
        "trainer.max_steps=2",
        "trainer.progress_bar=false",
        f"output_root={tmp_path / 'outputs'}",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    if method == "qlora":
        overrides.append("method.compute_dtype=fp32")
    if task == "classify":
        overrides.append("task.labels=[neg,pos]")
    overrides += [f"{k.replace('__', '.')}={v}" for k, v in extra.items()]
    return overrides


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def from_demo_sft40(demo_sft40: tuple, output_root: Path, *overrides: str) -> tuple[dict, dict]:
    """(first evaluation, final metrics) of a run started from the session's 40-step demo sft run
    (the `demo_sft40` fixture) and evaluated on 90 held-out questions."""
    from bigft.config import compose_config
    from bigft.train import train

    sft_run, cache_dir = demo_sft40
    cfg = compose_config(
        [
            f"output_root={output_root}",
            f"cache_dir={cache_dir}",
            "logger=none",
            "trainer.progress_bar=false",
            f"model.path={sft_run}",
            "data.max_eval_examples=90",
            *overrides,
        ]
    )
    final = train(cfg)
    before = read_metrics(Path(cfg.output_dir))[0]
    assert before["step"] == 0
    return before, final


def train_losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["train/loss"] for m in read_metrics(run_dir) if "train/loss" in m}


def step_metrics(run_dir: Path, keys: tuple[str, ...]) -> dict[int, tuple[float, ...]]:
    """Each training step's values of `keys` (a resumed run's re-done step: its last record)."""
    return {m["step"]: tuple(m[k] for k in keys) for m in read_metrics(run_dir) if keys[0] in m}


def run_module(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """A bigft command as a user runs it: `python -m <module> <overrides>`, in a real process."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def user_error(result: subprocess.CompletedProcess) -> str:
    """The stderr of a command that stopped on a user mistake: exit code 2, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr
    return result.stderr
