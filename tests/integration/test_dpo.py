"""task=dpo end to end on the tiny Llama: learning the preference, the reference, resume."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from bigft.engine.loop import Faults
from bigft.export import export_merged
from bigft.train import train

from .runs import read_metrics, train_losses, write_jsonl

STEPS = ["trainer.max_steps=6", "trainer.micro_batch_size=4", "optim.scheduler=constant"]


def _swapped(path: Path, out: Path) -> Path:
    """The same preferences, reversed: chosen ↔ rejected, rankings worst first."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        if "responses" in row:
            row["responses"] = row["responses"][::-1]
        else:
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
    return write_jsonl(out, rows)


def _margins(run_dir: Path) -> tuple[float, float]:
    """eval/rewards/margin before training and after it."""
    evals = [m for m in read_metrics(run_dir) if "eval/rewards/margin" in m]
    return evals[0]["eval/rewards/margin"], evals[-1]["eval/rewards/margin"]


def test_dpo_raises_the_chosen_margin_and_swapped_pairs_lower_it(make_cfg, tmp_path):
    """Cannot pass by accident: the held-out margin over the reference starts at 0, rises when
    training on the pairs, and falls when training on the same pairs swapped."""
    common = ("trainer.eval_at_start=true", *STEPS)
    right = make_cfg("dpo", "full", "name=right", *common)
    train(right)
    swapped_data = _swapped(Path(right.data.train), tmp_path / "swapped.jsonl")
    wrong = make_cfg("dpo", "full", "name=wrong", f"data.train={swapped_data}", *common)
    train(wrong)
    # Both are evaluated on the same held-out pairs, in their original orientation.
    assert wrong.data.eval == right.data.eval
    before, after = _margins(Path(right.output_dir))
    assert before == pytest.approx(0.0, abs=1e-4)  # the reference is the initial model
    assert after > 0.05
    before, after = _margins(Path(wrong.output_dir))
    assert before == pytest.approx(0.0, abs=1e-4)
    assert after < -0.05
    final = read_metrics(Path(right.output_dir))[-1]
    assert final["eval/rewards/accuracy"] > 50
    assert final["eval/logps/chosen"] < 0 and final["eval/logps/rejected"] < 0


def test_precomputed_reference_equals_the_policy_with_adapters_disabled(make_cfg):
    # The initial LoRA model is the base (B = 0), so both references are the same numbers.
    common = ("method.dropout=0", "trainer.max_steps=3", "trainer.micro_batch_size=4")
    disabled = make_cfg("dpo", "lora", "name=disabled", *common)
    precomputed = make_cfg("dpo", "lora", "name=pre", "task.reference=precompute", *common)
    train(disabled)
    train(precomputed)
    a, b = train_losses(Path(disabled.output_dir)), train_losses(Path(precomputed.output_dir))
    assert list(a) == [1, 2, 3]
    assert list(a.values()) == pytest.approx(list(b.values()), rel=1e-5)
    assert a[3] != pytest.approx(a[1], rel=1e-4)  # training happened


@pytest.mark.parametrize("loss", ["ipo", "simpo"])
def test_ipo_and_simpo_train(make_cfg, loss):
    cfg = make_cfg("dpo", "lora", f"name={loss}", f"task.loss={loss}", *STEPS)
    metrics = train(cfg)
    losses = train_losses(Path(cfg.output_dir))
    assert losses[6] < losses[1]
    assert metrics["eval/rewards/margin"] > 0


def test_resume_without_cache_scores_the_reference_on_the_initial_weights(make_cfg):
    # No cache: the resumed run scores the reference again, which must use the initial model,
    # not the checkpoint's weights (they are loaded after the reference pass).
    common = ("data.cache=false", "trainer.max_steps=5", "trainer.save_every=2")
    whole = make_cfg("dpo", "full", "name=whole", *common)
    train(whole)
    broken = make_cfg("dpo", "full", "name=broken", *common)
    with pytest.raises(RuntimeError, match="simulated crash after step 3"):
        train(broken, faults=Faults(crash_after_step=3))
    train(broken)
    resumed = train_losses(Path(broken.output_dir))
    assert sorted(resumed) == [1, 2, 3, 4, 5]
    assert resumed == pytest.approx(train_losses(Path(whole.output_dir)), rel=1e-5)


def test_resume_reads_the_reference_from_the_cache(make_cfg, caplog):
    common = ("trainer.max_steps=4", "trainer.save_every=2")
    broken = make_cfg("dpo", "full", "name=cached", *common)
    with caplog.at_level(logging.INFO, logger="bigft.tasks.reference"):
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(broken, faults=Faults(crash_after_step=2))
        assert "computed (eval, train)" in caplog.text
        caplog.clear()
        train(broken)
        assert "read from the cache" in caplog.text
    cache = Path(broken.cache_dir) / "reference"
    assert len(list(cache.glob("*.json"))) == 2  # train and eval


def test_dpo_from_an_sft_model_with_it_as_the_explicit_reference(make_cfg):
    # One sft step already moves the model: with the base as the reference instead, the
    # margin starts at about -0.008, not 0 (checked).
    sft = make_cfg("sft", "lora", "name=sft", "trainer.max_steps=1", "method.dropout=0")
    train(sft)
    sft_dir = Path(sft.output_dir)
    merged = export_merged(sft_dir, sft_dir / "merged")
    # The policy starts from the sft run's merged model; the reference is that run (its
    # adapter over the base), named by its directory.
    dpo = make_cfg(
        "dpo",
        "full",
        "name=dpo",
        f"model.path={merged}",
        f"task.reference={sft_dir}",
        "trainer.eval_at_start=true",
        *STEPS,
    )
    train(dpo)
    before, after = _margins(Path(dpo.output_dir))
    assert before == pytest.approx(0.0, abs=1e-4)  # the explicit reference is the start
    assert after > 0.05
