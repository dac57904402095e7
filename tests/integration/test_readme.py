"""Every command in README.md's code blocks runs, so the documentation cannot drift from bigft.

The commands are read from the README itself (lines of its ``` blocks that start with a program
name; `\\` continuations joined, trailing `# comments` dropped), split into arguments by bash as a
user's shell would, and run after SUBSTITUTIONS put a tiny model and small data in place of the
README's own. They run one after another in one Python process that calls each program's console
script (`bigft-train` ...) with those arguments, as the script would: a Python start-up with
torch and transformers costs seconds per command on a small machine.

- every `model.path` is a 2-layer Llama built from a config, every `data.train` / `data.eval`
  a small generated file of the format its name says (DATA_FILES), every training run takes one
  step (trainer.max_steps=1) into a temporary output root; `run=outputs/my-run` is an sft LoRA
  run trained here first;
- `launcher=slurm` adds `launcher.dry_run=true`: the whole submission path runs (config, data,
  model, output directory and GPU-memory checks, the sbatch script) without a cluster
  (tests/slurm submits real jobs);
- what needs more than this machine runs as far as it can here: commands of N > 1 ranks
  (`launcher.nproc_per_node=8`, torchrun, deepspeed) are composed and printed with `--cfg job`
  (a typo or a wrong value still fails; tests/distributed runs real 2-rank jobs), and a Slurm
  sweep (`-m`) has each of its points checked by `check_sweep`, as bigft does before submitting
  its job array. bigft-plan runs as written: it needs no weights.

Not run here (SKIPPED): `make demo` (tests/integration/test_demo.py runs the demo's training),
`make test` (this suite), `pip install` (the environment running the suite is that install) and
`wandb sync` (W&B's own command, which uploads). The Red teaming section's commands are composed
only (`--cfg job`: keys, values and Hydra quoting checked); tests/integration/test_redteam*.py
run them (a gap, to be closed with substitutions here). Any other command the README shows runs,
and a `bigft-*` program without a console script fails the test.

To cover a new command (a new task's data, a new program), add a file to DATA_FILES or a rule to
SUBSTITUTIONS: one regex → replacement each, applied in order; `{name}` in a replacement is a
path from the test (tiny_llama, data, run, out, cache).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from importlib import import_module
from pathlib import Path

import pytest

from bigft.config import DEMO_DATA_DIR, compose_config
from bigft.errors import exit_on_user_error
from bigft.launch.slurm import check_sweep
from bigft.train import train

from .runs import make_task_data, train_overrides

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
PROGRAMS = re.compile(r"^(bigft-\w+|make|pip|torchrun|deepspeed|wandb)\b")

SKIPPED = {
    r"^make demo\b": "tests/integration/test_demo.py runs the demo's training",
    r"^make test\b": "this suite",
    r"^pip install\b": "the environment running this suite is that install",
    r"^wandb sync\b": "W&B's own command, which uploads runs",
}

ONE_STEP = (
    "trainer.max_steps=1 trainer.micro_batch_size=2 trainer.grad_accum=1 trainer.eval_batch_size=2 "
    "task.max_length=64 logger=none trainer.progress_bar=false output_root={out} cache_dir={cache}"
)
NPROC = r"bigft-train launcher.nproc_per_node=\1"
SUBSTITUTIONS = {
    # The README's "..." stands for the rest of a command.
    r"\s\.\.\.(?=\s|$)": "",
    r"\bmodel\.path=(?!outputs/(?:my-run|demo-sft-40)\b)\S+": "model.path={tiny_llama}",
    # A run directory as the model: the sft run trained here, and the RL demo's short sft run
    # (a README command before it writes it to the test's outputs).
    r"\bmodel\.path=outputs/my-run\b": "model.path={run}",
    r"\bmodel\.path=outputs/demo-sft-40\b": "model.path={out}/demo-sft-40",
    r"\bdata\.(train|eval)=(?:\S*/)?([^\s/]+)": r"data.\1={data}/\2",
    r"\brun=outputs/my-run\b": "run={run}",
    # The RL demo's short sft run: the tiny Llama instead of the demo base (the grpo and ppo runs
    # read it from the test's outputs); a few held-out prompts, in both.
    r"^(bigft-train name=demo-sft-40\b.*)$": r"\1 model=local model.path={tiny_llama} "
    "data.max_eval_examples=4",
    r"^(bigft-train experiment=demo_(?:grpo|ppo)\b.*)$": r"\1 data.max_eval_examples=4",
    # A reward model run stands for one trained elsewhere (tests/unit test the reward-model
    # source): rule rewards in its place; the key itself stays, so a renamed key still fails.
    r"\breward\.model=\S+": "reward.model=null reward.fn=tests.integration.rl_rewards:letters",
    r"\breward\.eval_fn=my_checks:score\b": "reward.eval_fn=tests.integration.rl_rewards:printable",
    # External launchers of N ranks run what `bigft-train launcher.nproc_per_node=N` runs.
    r"^torchrun\b.*?--nproc_per_node[ =](\d+).*?-m bigft\.train\b": NPROC,
    r"^deepspeed\b.*?--num_gpus[ =](\d+).*?--module bigft\.train\b": NPROC,
    # The demo's reward model: the tiny Llama instead of the demo base (built in a minute), a
    # few held-out rankings.
    r"^(bigft-train experiment=demo_reward\b.*)$": r"\1 model=local model.path={tiny_llama} "
    "data.max_eval_examples=4",
    # The demo's DPO: the tiny Llama instead of the merged demo SFT model, few held-out prompts.
    r"\brun=outputs/demo-lora-sft\b": "run={run}",
    r"^(bigft-train experiment=demo_dpo\b.*)$": r"\1 model=local model.path={tiny_llama} "
    "data.max_eval_examples=4 task.max_new_tokens=4",
    # Later overrides win in Hydra: one step, tiny sizes, outputs in the test's directory.
    r"^(bigft-train .*)$": r"\1 " + ONE_STEP,
    r"\blauncher=slurm\b": "launcher=slurm launcher.dry_run=true",
    # N > 1 ranks: the same config, composed only.
    r"^(bigft-train\b(?=.*\blauncher\.nproc_per_node=(?:[2-9]|\d\d)).*)$": r"\1 --cfg job",
    # Not yet run here (a gap to close), only composed: the red-team section's commands.
    # tests/integration/test_redteam.py runs bigft-redteam's scan, review, labels and garak import,
    # and test_redteam_demo_loop.py runs the loop's steps through bigft.redteam.demo_loop.
    r"^((?:bigft-redteam\b|bigft-\w+\b.*\boutputs/rt\b).*)$": r"\1 --cfg job",
    # A pipeline prints its plan: every stage composed, validated and planned (and, for Slurm,
    # checked as before submitting); tests/integration/test_pipeline.py and tests/slurm run them.
    r"\binputs\.model=\S+": "inputs.model={tiny_llama}",
    r"\binputs\.sft_data=\S+": "inputs.sft_data={data}/train.jsonl",
    r"\binputs\.rankings=\S+": "inputs.rankings={data}/ranked.jsonl",
    r"\binputs\.prompts=\S+": "inputs.prompts={data}/prompts.jsonl",
    r"\binputs\.target=outputs/my-sft\b": "inputs.target={run}",
    r"\binputs\.(attacks|fillers)=(?:\S*/)?([^\s/]+)": r"inputs.\1={data}/\2",
    r"^(bigft-pipeline\b.*)$": r"\1 dry_run=true output_root={out}",
    # A Slurm sweep: each point checked as before its job array is submitted.
    r"^bigft-train -m\b": "bigft-check-sweep",
}


def _sft_rows(n: int = 8) -> list[dict]:
    return [{"instruction": f"name fruit {i}", "output": f"apple {i}"} for i in range(n)]


def _write_jsonl(rows: list[dict]) -> Callable[[Path], None]:
    return lambda path: path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _write_reviews(path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(8):
            writer.writerow([f"review {i}: great" if i % 2 else f"review {i}: awful", i % 2])


def _copy_demo_data(name: str) -> Callable[[Path], None]:
    return lambda path: path.write_bytes((DEMO_DATA_DIR / name).read_bytes())


def _copy_task_data(task: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_bytes(make_task_data(path.parent, task, n=8).read_bytes())

    return write


def _task_data_dir(task: str) -> Callable[[Path], None]:
    """A directory of data files (data.train=<dir> reads them all): one file here."""

    def write(path: Path) -> None:
        path.mkdir()
        _copy_task_data(task)(path / f"{task}.jsonl")

    return write


# The README's data files, by name: a small file of the format the command expects.
DATA_FILES: dict[str, Callable[[Path], None]] = {
    "train.jsonl": _write_jsonl(_sft_rows()),
    "eval.jsonl": _write_jsonl(_sft_rows(4)),
    "corpus.jsonl": _copy_task_data("lm"),
    "reviews.csv": _write_reviews,
    "ranked.jsonl": _copy_task_data("reward"),
    "pairs.jsonl": _copy_task_data("dpo"),
    "pairs_eval.jsonl": _copy_task_data("dpo"),
    "prompts.jsonl": _copy_task_data("grpo"),
    "sft.jsonl": _write_jsonl(_sft_rows()),  # the red-team loop's export
    "preferences.jsonl": _copy_task_data("dpo"),  # the red-team loop's dpo export
    # The RL demo's rankings of its policies' own answers (bigft.demo.policy_rankings): a
    # directory of every round's, for training and for evaluation.
    "train": _task_data_dir("reward"),
    "eval": _task_data_dir("reward"),
    # A red-team pipeline's people's attacks and template fillers: the demo world's.
    "attacks.jsonl": _copy_demo_data("redteam_attacks.jsonl"),
    "requests.jsonl": _copy_demo_data("redteam_fillers.jsonl"),
}


def strip_comment(line: str) -> str:
    """The line without a trailing shell comment (a `#` outside quotes, after a space)."""
    quote, escaped = "", False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = "" if char == quote[-1] else quote
        elif char in "'\"":
            quote = "$'" if char == "'" and line[i - 1 : i] == "$" else char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def readme_commands() -> list[str]:
    commands = []
    for block in re.findall(r"```[^\n]*\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            command = strip_comment(line)  # commands start a line; indented lines are listings
            if PROGRAMS.match(command):
                commands.append(re.sub(r"\s+(?=(?:[^']*'[^']*')*[^']*$)", " ", command))
    return commands


def substitute(command: str, paths: dict[str, str]) -> str:
    for pattern, replacement in SUBSTITUTIONS.items():
        command = re.sub(pattern, replacement.format(**paths), command)
    return command


def skip_reason(command: str) -> str | None:
    return next((why for pattern, why in SKIPPED.items() if re.search(pattern, command)), None)


@pytest.fixture
def workdir(tmp_path, tiny_llama_dir):
    """The directory the commands run in, its data files, and a finished sft LoRA run."""
    data = tmp_path / "data"
    data.mkdir()
    for name, write in DATA_FILES.items():
        write(data / name)
    (tmp_path / "prompts.txt").write_text("### Instruction:\nName a fruit.\n\n### Response:\n")
    run_cfg = compose_config(
        [*train_overrides(tmp_path, tiny_llama_dir, "sft", "lora"), "name=my-run"]
    )
    train(run_cfg)
    paths = {
        "tiny_llama": str(tiny_llama_dir),
        "data": str(data),
        "run": run_cfg.output_dir,
        "out": str(tmp_path / "readme-outputs"),
        "cache": str(tmp_path / "cache"),
    }
    return tmp_path, paths


def test_the_readme_has_the_commands_this_test_knows():
    commands = readme_commands()
    programs = ("bigft-train", "bigft-plan", "bigft-export", "bigft-generate", "bigft-pipeline")
    for program in (*programs, "make demo"):
        assert any(c.startswith(program) for c in commands), program
    # The generate examples a user copies first: formatted by the run's own template.
    assert any("instruction=" in c for c in commands if c.startswith("bigft-generate"))


def argv_of(command: str) -> list[str]:
    """The command's arguments as bash splits them (its quoting, $'...' included)."""
    split = subprocess.run(
        ["bash", "-c", f"printf '%s\\0' {command}"], capture_output=True, text=True, check=True
    )
    return split.stdout.split("\0")[:-1]


def run_commands(argvs: list[list[str]], cwd: Path) -> tuple[list[int], list[str]]:
    """Run the commands one after another in one process (a Python start-up and the imports
    cost seconds each; see `main` below); their exit statuses and output."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "tests.integration.test_readme", json.dumps(argvs)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    codes = json.loads(result.stdout.strip().splitlines()[-1])
    outputs = (result.stdout + result.stderr).split(SEPARATOR)
    return codes, outputs


def test_every_readme_command_runs(workdir):
    cwd, paths = workdir
    commands, argvs = [], []
    for command in readme_commands():
        if skip_reason(command):
            continue
        if data := re.findall(r"\bdata\.(?:train|eval)=(?:\S*/)?([^\s/]+)", command):
            missing = [name for name in data if name not in DATA_FILES]
            assert not missing, f"add {missing} to DATA_FILES for: {command}"
        argv = argv_of(substitute(command, paths))
        if argv not in argvs:
            commands.append(command)
            argvs.append(argv)
    assert len(argvs) >= 15, argvs  # the README's training, Slurm, plan, export and generate
    codes, outputs = run_commands(argvs, cwd)
    failures = [
        f"{command}\n  ran: {' '.join(argv)}\n  exit {code}: {_tail(outputs, i)}"
        for i, (command, argv, code) in enumerate(zip(commands, argvs, codes, strict=True))
        if code != 0
    ]
    assert not failures, "README commands that fail:\n\n" + "\n\n".join(failures)


def _tail(outputs: list[str], i: int) -> str:
    """The output of command i (stdout and stderr are split at each command's separator)."""
    mine = [part.split("\n", 1)[-1] for part in outputs if part.startswith(f" {i} ")]
    return "\n".join(part for part in mine if part.strip())[-1500:]


def test_a_drifted_command_fails(tmp_path):
    """The runner is not blind: commands with an unknown key, a wrong value or a missing file
    fail, each with its own status."""
    paths = dict.fromkeys(("tiny_llama", "data", "run", "out", "cache"), str(tmp_path))
    drifted = [
        "bigft-plan experiment=llama65b_qlora method.rank=4",
        "bigft-generate run=outputs/my-run instruction=x",
        "bigft-plan experiment=llama65b_qlora",
    ]
    codes, outputs = run_commands([argv_of(substitute(c, paths)) for c in drifted], tmp_path)
    assert codes[0] != 0 and "rank" in _tail(outputs, 0)
    assert codes[1] == 2 and "run=" in _tail(outputs, 1)
    assert codes[2] == 0


SEPARATOR = "\n### bigft README command"


def _console_scripts() -> dict[str, Callable[[], object]]:
    from importlib.metadata import entry_points

    scripts: dict[str, Callable[[], object]] = {
        # A Slurm sweep's points, checked as bigft does before submitting its job array.
        "bigft-check-sweep": lambda: exit_on_user_error(check_sweep)(sys.argv[1:]),
    }
    for entry in entry_points(group="console_scripts"):
        if entry.name.startswith("bigft-"):
            scripts[entry.name] = entry.load()
    # A program added since the editable install was made has no console script until the next
    # `pip install -e .`: run it from pyproject.toml's entry, as the script will.
    section = (REPO / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n[")[0]
    for name, module, function in re.findall(r'^([\w-]+) = "([\w.]+):(\w+)"', section, re.M):
        scripts.setdefault(name, lambda m=module, f=function: getattr(import_module(m), f)())
    return scripts


def _run_one(argv: list[str], scripts: dict[str, Callable[[], object]]) -> int:
    """One command in this process, as its console script would run it; its exit status."""
    import traceback

    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    if argv[0] not in scripts:
        print(f"no such bigft program: {argv[0]}", file=sys.stderr)
        return 127
    sys.argv = argv
    try:
        scripts[argv[0]]()
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    except Exception:
        traceback.print_exc()
        return 1
    return 0


def main(argvs: list[list[str]]) -> None:
    scripts = _console_scripts()
    codes = []
    for i, argv in enumerate(argvs):
        for stream in (sys.stdout, sys.stderr):
            print(f"{SEPARATOR} {i} {' '.join(argv)}", file=stream, flush=True)
        codes.append(_run_one(argv, scripts))
    sys.stdout.flush()
    sys.stderr.flush()
    print("\n" + json.dumps(codes), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
