"""Multi-process training for real: 2 ranks over gloo on the CPU, DDP and DeepSpeed ZeRO.

Each 2-rank run must reproduce the one-process run on the same global batch (fp32, no dropout):
the distributed modes change where the work happens, never what is computed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from bigft.config import compose_config
from bigft.engine.checkpoint import latest_checkpoint
from bigft.errors import ConfigError
from bigft.train import train
from tests.integration.runs import read_metrics, train_losses, train_overrides

pytestmark = pytest.mark.distributed

# Dropout off: two ranks draw different dropout masks than one process would.
EXACT = ["method.dropout=0", "optim.scheduler=cosine", "trainer.max_steps=3"]
# Under ZeRO-3 bigft applies QLoRA's recipe itself (4-bit storage and model in the compute
# dtype): these runs give only the compute dtype, and prove that the recipe it picks trains.
QLORA_ZERO3 = ["method.compute_dtype=fp32"]
QLORA_OTHER_MODES = ["method.quant_storage=fp32", "method.compute_dtype=fp32"]


def run_ranks(
    overrides: list[str], *, nproc: int = 2, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """`bigft-train ... launcher.nproc_per_node=N`, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "bigft.train", *overrides, f"launcher.nproc_per_node={nproc}"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


def config(tmp_path, model_dir, method, mode, *extra):
    base = train_overrides(tmp_path, model_dir, "sft", method)
    return [*base, f"distributed={mode}", *EXACT, *extra]


# Each trains, writes its model and equals one process: the matrix below leaves these cells out.
EQUAL_TO_ONE_PROCESS = [
    ("full", "zero3", []),
    ("lora", "zero3", []),
    ("qlora", "zero3", QLORA_ZERO3),
    ("full", "zero2", []),
    ("full", "ddp", []),
]


@pytest.mark.parametrize(("method", "mode", "extra"), EQUAL_TO_ONE_PROCESS)
def test_two_ranks_equal_one_process(tmp_path, tiny_llama_dir, method, mode, extra):
    # 8 eval examples in batches of 3: rank 0 evaluates two batches, rank 1 one (and a spare).
    extra = [*extra, "trainer.eval_batch_size=3", "trainer.eval_at_start=true"]
    two = config(tmp_path, tiny_llama_dir, method, mode, *extra, "trainer.micro_batch_size=2")
    two_ranks = run_ranks([*two, "name=two"])
    ok(two_ranks)
    if method == "qlora":
        assert "method=qlora under ZeRO-3: set method.quant_storage=fp32" in two_ranks.stdout
        one_storage = ["method.quant_storage=fp32"]  # what ZeRO-3 ran with, for equal numbers
    else:
        one_storage = []
    extra = [*extra, *one_storage]
    one = config(tmp_path, tiny_llama_dir, method, "single", *extra, "trainer.micro_batch_size=4")
    train(compose_config([*one, "name=one"]))
    out = tmp_path / "outputs"
    two_losses, one_losses = train_losses(out / "two"), train_losses(out / "one")
    assert list(two_losses) == [1, 2, 3]
    assert list(two_losses.values()) == pytest.approx(list(one_losses.values()), rel=1e-5)
    _same_eval(out / "two", out / "one")
    _same_outputs(out / "two" / "model", out / "one" / "model", tiny_llama_dir, method)


def _same_eval(two: Path, one: Path) -> None:
    """The split eval's metrics, before and after training, equal one process's."""
    for when in (0, -1):
        a, b = read_metrics(two)[when], read_metrics(one)[when]
        evals = sorted(k for k in b if k.startswith("eval/"))
        assert evals and sorted(k for k in a if k.startswith("eval/")) == evals
        assert [a[k] for k in evals] == pytest.approx([b[k] for k in evals], rel=1e-5)


def two_ranks_and_one(tmp_path: Path, base: list[str], mode: str) -> tuple[Path, Path]:
    """Run `base` on 2 ranks under `mode` with micro-batch 2 and in one process with micro-batch
    4 (the same examples per step); the two run directories."""
    ok(run_ranks([*base, f"distributed={mode}", "trainer.micro_batch_size=2", "name=two"]))
    train(compose_config([*base, "trainer.micro_batch_size=4", "name=one"]))
    return tmp_path / "outputs" / "two", tmp_path / "outputs" / "one"


def _same_losses_and_eval(two: Path, one: Path) -> None:
    """Three steps of equal training losses, and equal split eval before and after them."""
    two_losses, one_losses = train_losses(two), train_losses(one)
    assert list(two_losses) == [1, 2, 3]
    assert list(two_losses.values()) == pytest.approx(list(one_losses.values()), rel=1e-5)
    _same_eval(two, one)


@pytest.mark.parametrize("mode", ["ddp", "zero3"])
def test_eval_with_generation_on_two_ranks_equals_one_process(tmp_path, tiny_llama_dir, mode):
    """DDP splits the generating eval across ranks; ZeRO-3 runs it on every rank in lockstep."""
    extra = ["task.eval_generate=true", "task.max_new_tokens=6", "trainer.eval_batch_size=3"]
    extra = [*extra, "trainer.max_steps=1", "trainer.eval_at_start=true"]
    two = config(tmp_path, tiny_llama_dir, "full", mode, *extra, "trainer.micro_batch_size=2")
    ok(run_ranks([*two, "name=two"]))
    one = config(tmp_path, tiny_llama_dir, "full", "single", *extra, "trainer.micro_batch_size=4")
    train(compose_config([*one, "name=one"]))
    out = tmp_path / "outputs"
    assert "eval/exact_match" in read_metrics(out / "one")[-1]
    _same_eval(out / "two", out / "one")


def _logits(model_dir: Path, base_dir: Path, method: str) -> torch.Tensor:
    """Load a run's output with plain transformers / peft, as a user would."""
    if method in ("lora", "qlora"):
        base = AutoModelForCausalLM.from_pretrained(base_dir)
        model = PeftModel.from_pretrained(base, model_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def _same_outputs(two: Path, one: Path, base_dir: Path, method: str) -> None:
    weights = sum(f.stat().st_size for f in two.glob("*.safetensors"))
    assert weights > 10_000, f"{two} holds only {weights} bytes of weights"
    if method == "qlora":
        # Loading a QLoRA adapter over a 4-bit base is export's job (tests/unit); here the
        # adapter tensors must equal the one-process run's.
        from safetensors.torch import load_file

        a, b = (
            load_file(two / "adapter_model.safetensors"),
            load_file(one / "adapter_model.safetensors"),
        )
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4)
        return
    torch.testing.assert_close(_logits(two, base_dir, method), _logits(one, base_dir, method))


def test_zero3_builds_the_model_sharded_and_each_rank_holds_half(tmp_path, tiny_llama_dir):
    overrides = config(tmp_path, tiny_llama_dir, "full", "zero3")
    probe = Path(__file__).with_name("probe_shards.py")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(probe),
            str(tmp_path),
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    ok(result)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and len(ranks[0]) > 10
    for name, (held, full, at_load) in ranks[0].items():
        assert at_load, f"{name} was loaded whole, not sharded at load time"
        assert held == math.ceil(full / 2), (name, held, full)
        assert ranks[1][name][0] == held


def test_killed_two_rank_run_resumes_to_the_uninterrupted_losses(tmp_path, tiny_llama_dir):
    common = config(tmp_path, tiny_llama_dir, "lora", "zero3", "trainer.micro_batch_size=2")
    common = [*common, "trainer.max_steps=6", "trainer.save_every=2"]
    ok(run_ranks([*common, "name=whole"]))
    crashed = run_ranks([*common, "name=broken"], env={"BIGFT_CRASH_AFTER_STEP": "3"})
    assert crashed.returncode != 0
    out = tmp_path / "outputs"
    assert latest_checkpoint(out / "broken").name == "step_00000002"
    ok(run_ranks([*common, "name=broken"]))
    resumed = train_losses(out / "broken")
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    assert resumed == pytest.approx(train_losses(out / "whole"), rel=1e-5)


@pytest.mark.parametrize(("method", "mode"), [("full", "zero3"), ("lora", "zero2")])
def test_a_zero_run_resumes_on_another_world_size_with_its_optimizer_state(
    tmp_path, tiny_llama_dir, method, mode
):
    """2 ranks checkpoint at step 2 and die after step 3; 1 rank, same global batch, finishes.

    ZeRO-3 and ZeRO-2 take different paths through DeepSpeed's universal-checkpoint converter.
    At lr 1e-2 a restarted optimizer would change steps 4 and 5: equal losses mean the Adam
    moments came across.
    """
    overrides = config(tmp_path, tiny_llama_dir, method, mode, "trainer.micro_batch_size=2")
    overrides = [*overrides, "trainer.max_steps=5", "trainer.save_every=2", "trainer.keep_last=3"]
    overrides = [*overrides, "optim.lr=1e-2"]
    ok(run_ranks([*overrides, "name=straight"]))
    moved = [*overrides, "name=moved"]
    assert run_ranks(moved, env={"BIGFT_CRASH_AFTER_STEP": "3"}).returncode != 0
    ok(run_ranks([*moved, "trainer.micro_batch_size=4"], nproc=1))

    straight = train_losses(tmp_path / "outputs" / "straight")
    resumed = train_losses(tmp_path / "outputs" / "moved")
    assert sorted(resumed) == [1, 2, 3, 4, 5]
    for step, loss in straight.items():
        assert math.isclose(resumed[step], loss, rel_tol=1e-5), (step, resumed[step], loss)
    # The converted form stays in the checkpoint it came from, for the next resume.
    assert (tmp_path / "outputs" / "moved" / "checkpoints" / "step_00000002" / "universal").is_dir()


def test_a_failing_rank_ends_the_job_with_its_error(tmp_path, tiny_llama_dir):
    overrides = config(tmp_path, tiny_llama_dir, "full", "zero3", "trainer.micro_batch_size=2")
    overrides = [*overrides, "trainer.max_steps=50", "distributed.timeout_minutes=1"]
    result = run_ranks(
        overrides, env={"BIGFT_CRASH_AFTER_STEP": "2", "BIGFT_CRASH_RANK": "1"}, timeout=240
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    # The failing rank's own error reaches the user (not only the other rank's lost connection).
    assert "simulated crash after step 2" in output
    assert "bigft: error: the 2-process job failed" in result.stderr


METHODS = ["full", "freeze", "lora", "qlora", "prefix"]
MODES = ["ddp", "zero1", "zero2", "zero3", "zero3_offload"]
# What the libraries cannot do is refused at start-up, with the reason.
REFUSED = {("qlora", "zero3_offload"): "CPU offload with a 4-bit base"}


def _method_extra(method: str, mode: str) -> list[str]:
    if method != "qlora":
        return []
    return QLORA_ZERO3 if mode == "zero3" else QLORA_OTHER_MODES


@pytest.mark.parametrize(
    ("method", "mode"),
    # With the cells test_two_ranks_equal_one_process runs (and asserts more of), every method
    # under every mode, each cell one 2-rank job (five fewer than the whole matrix).
    [
        (method, mode)
        for method in METHODS
        for mode in MODES
        if (method, mode) not in {(m, d) for m, d, _ in EQUAL_TO_ONE_PROCESS}
    ],
)
def test_every_method_trains_under_every_mode(tmp_path, tiny_llama_dir, method, mode):
    overrides = [
        *config(tmp_path, tiny_llama_dir, method, mode, *_method_extra(method, mode)),
        "trainer.micro_batch_size=2",
        "trainer.max_steps=1",
    ]
    if (method, mode) in REFUSED:
        with pytest.raises(ConfigError, match=REFUSED[method, mode]):
            train(compose_config(overrides))
        return
    ok(run_ranks(overrides))
    run_dir = Path(compose_config(overrides).output_dir)
    assert math.isfinite(train_losses(run_dir)[1])
    assert (run_dir / "model" / "bigft_output.json").is_file()


@pytest.mark.parametrize("task", ["lm", "classify", "reward"])
def test_every_task_trains_under_zero3(tmp_path, tiny_llama_dir, task):
    overrides = [
        *train_overrides(tmp_path, tiny_llama_dir, task, "lora"),
        "distributed=zero3",
        "trainer.micro_batch_size=2",
        "trainer.max_steps=1",
    ]
    ok(run_ranks(overrides))
    metrics = read_metrics(Path(compose_config(overrides).output_dir))
    assert math.isfinite(metrics[0]["train/loss"]) and math.isfinite(metrics[-1]["eval/loss"])


def test_a_config_mistake_is_reported_once_before_any_rank_starts(tmp_path, tiny_llama_dir):
    overrides = [*config(tmp_path, tiny_llama_dir, "qlora", "zero3_offload"), "method.bits=3"]
    result = run_ranks(overrides)
    assert result.returncode == 2
    assert result.stderr.count("bigft: error: method.bits=3") == 1
    assert "torch.distributed.run" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("method", "mode"), [("lora", "zero3"), ("full", "zero3"), ("lora", "ddp")]
)
def test_dpo_on_two_ranks_equals_one_process(tmp_path, tiny_llama_dir, method, mode):
    """lora: the reference is the (sharded) policy with its adapters disabled, in every step,
    under DDP's wrapper or DeepSpeed's; full: the reference pass runs on the sharded initial
    model, half the pairs per rank (11 eval pairs: one rank repeats a pair so that both run the
    same forwards)."""
    base = [
        *train_overrides(tmp_path, tiny_llama_dir, "dpo", method),
        *EXACT,
        "data.max_eval_examples=7",
        "trainer.eval_batch_size=3",
        "trainer.eval_at_start=true",
    ]
    two, one = two_ranks_and_one(tmp_path, base, mode)
    _same_losses_and_eval(two, one)
    assert read_metrics(two)[-1]["eval/rewards/margin"] != 0


def test_zero2_with_the_default_precision_moves_every_master_weight_of_a_bf16_checkpoint(
    tmp_path, bf16_llama_dir
):
    """trainer.precision=auto from a bf16 checkpoint under ZeRO-2 is DeepSpeed's bf16 mode: the
    optimizer's fp32 master weights take every update at lr 2e-4, norms included (the bf16
    module alone would round them away)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file

    small = ["model.dtype=bf16", "optim.lr=2e-4", "optim.scheduler=constant", "name=bf16"]
    result = run_ranks(config(tmp_path, bf16_llama_dir, "full", "zero2", *small))
    ok(result)
    assert "trainer.precision=bf16-mixed (from auto)" in result.stdout
    checkpoint = latest_checkpoint(tmp_path / "outputs" / "bf16")
    masters = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag="deepspeed")
    base = load_file(str(bf16_llama_dir / "model.safetensors"))
    assert {t.dtype for t in masters.values()} == {torch.float32}
    assert any("norm" in name for name in base)
    unchanged = [n for n, t in base.items() if torch.equal(masters[n], t.float())]
    assert unchanged == []


@pytest.mark.parametrize("mode", ["ddp", "zero3"])
def test_reward_rankings_on_two_ranks_equal_one_process(tmp_path, tiny_llama_dir, mode):
    """Rankings of 2 to 4 responses, some with two reviewers' pairs (task.aggregate=pairs): the
    rankings per rank differ, and the loss is still divided by the whole step's rankings."""
    base = [
        *train_overrides(tmp_path, tiny_llama_dir, "reward", "full"),
        *EXACT,
        "task.aggregate=pairs",
        "trainer.eval_batch_size=3",
        "trainer.eval_at_start=true",
    ]
    _same_losses_and_eval(*two_ranks_and_one(tmp_path, base, mode))
