"""The reward-hacking check of RL runs: ground truth and reward-model score, before and after.

A policy tuned against a learned reward model can raise that model's score while the answers get
no better (or worse) by the rule the reward model was meant to learn. The demo world knows the
rule (bigft/demo/truth.py), so every RL run there can report both; this reads them back from the
runs' metrics.jsonl and prints one row per run:

    python -m bigft.demo.rl_report outputs/demo-grpo-rm outputs/demo-ppo-rm

"before" is the evaluation at step 0 (`trainer.eval_at_start=true`), "after" the last one. The
ground truth is the eval-only score (`reward.eval_fn`: eval/reward_eval_fn; or a task's
`task.eval_score_fn`: eval/truth_score), or the trained-on reward itself when that is the demo's
truth (`reward.fn=bigft.demo.truth:score`). KL is the last logged train/kl: the policy's
per-response KL to its reference (k3, summed over a response's tokens).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from bigft.errors import DataError, exit_on_user_error

TRUTH_FN = "bigft.demo.truth:score"
TRUTH_KEYS = ("eval/reward_eval_fn", "eval/truth_score")
MODEL_KEY = "eval/reward_model"
FN_KEY = "eval/reward_fn"
KL_KEY = "train/kl"
HEADER = (
    "| run | trained on | steps | truth before | truth after "
    "| RM score before | RM score after | KL at the end |"
)


@dataclass
class RLResult:
    """One RL run's figures; None where the run did not measure it."""

    run: str
    reward: str
    steps: int
    truth_before: float | None
    truth_after: float | None
    model_before: float | None
    model_after: float | None
    kl_end: float | None


def read_metrics(run_dir: Path) -> list[dict]:
    """The lines of a run's metrics.jsonl; a DataError naming the file and line if unreadable."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{run_dir}: no metrics.jsonl (expected the directory of a bigft run)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            raise DataError(f"{path}:{number}: not a JSON line: {line[:80]!r}") from None
    return rows


def _reward_config(run_dir: Path) -> dict:
    """The run's `reward:` section (config.yaml), empty if the run has none."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return {}
    reward = OmegaConf.to_container(OmegaConf.load(path)).get("reward") or {}
    return {k: v for k, v in reward.items() if v is not None}


def _trained_on(reward: dict) -> str:
    sources = []
    if reward.get("model"):
        sources.append(f"reward model {Path(str(reward['model'])).name}")
    if reward.get("fn"):
        sources.append(f"reward.fn {reward['fn']}")
    return " + ".join(sources) or "?"


def _truth_key(evals: list[dict], reward: dict) -> str | None:
    keys = list(TRUTH_KEYS)
    if reward.get("fn") == TRUTH_FN:
        keys.append(FN_KEY)
    return next((k for k in keys if any(k in e for e in evals)), None)


def rl_result(run_dir: Path | str) -> RLResult:
    """The figures of one RL run (task=grpo or task=ppo) read from its directory."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    reward = _reward_config(run_dir)
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    if not evals:
        raise DataError(f"{run_dir}/metrics.jsonl: no eval/ metrics (is it an RL run?)")
    start = evals[0] if evals[0]["step"] == 0 else {}
    end = evals[-1]
    truth = _truth_key(evals, reward)
    kl = [r[KL_KEY] for r in rows if KL_KEY in r]
    return RLResult(
        run=run_dir.name,
        reward=_trained_on(reward),
        steps=int(max(r["step"] for r in rows)),
        truth_before=start.get(truth) if truth else None,
        truth_after=end.get(truth) if truth else None,
        model_before=start.get(MODEL_KEY),
        model_after=end.get(MODEL_KEY),
        kl_end=kl[-1] if kl else None,
    )


def _cell(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _row(r: RLResult) -> str:
    cells = [
        r.run,
        r.reward,
        str(r.steps),
        _cell(r.truth_before),
        _cell(r.truth_after),
        _cell(r.model_before),
        _cell(r.model_after),
        _cell(r.kl_end, 2),
    ]
    return "| " + " | ".join(cells) + " |"


def rl_table(run_dirs: Sequence[Path | str]) -> str:
    """A Markdown table, one row per RL run directory: truth and RM score before/after, KL."""
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    lines += [_row(rl_result(d)) for d in run_dirs]
    return "\n".join(lines)


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bigft.demo.rl_report",
        description="Ground truth and reward-model score before and after RL, and the final KL.",
    )
    parser.add_argument("runs", nargs="+", type=Path, help="RL run directories (outputs/<name>)")
    print(rl_table(parser.parse_args(argv).runs))


if __name__ == "__main__":
    main()
