"""bigft-pipeline run here: the stages run in order; a rerun skips what finished, resumes what
was interrupted, and reruns a changed stage with every stage after it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .pipelines import bigft_pipeline, common_overrides, ok, tiny_stages, write_pipeline
from .runs import train_losses, user_error


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_llama_dir):
    """A two-stage pipeline run to the end once; tests work on copies of it."""
    root = tmp_path_factory.mktemp("pipeline")
    write_pipeline(root / "conf", "tiny", common_overrides(root, tiny_llama_dir), tiny_stages(root))
    out = ok(bigft_pipeline(root / "conf", "tiny", cwd=root))
    return root, out


def _copy(finished, tmp_path: Path) -> Path:
    root, _ = finished
    shutil.copytree(root, tmp_path / "copy")
    return tmp_path / "copy"


def test_stages_run_in_order_and_record_their_state(finished):
    root, out = finished
    runs = root / "outputs" / "tiny"
    assert out.index("stage base") < out.index("stage tune")
    assert "2. tune [run] (after: base)" in out
    for stage in ("base", "tune"):
        assert (runs / stage / "model" / "bigft_output.json").is_file()
        assert list(train_losses(runs / stage)) == [1, 2, 3]
    state = json.loads((runs / "pipeline.json").read_text())["stages"]
    assert [state[s]["status"] for s in ("base", "tune")] == ["finished", "finished"]
    assert state["tune"]["config"]["model"]["path"] == "outputs/tiny/base/model"
    # The LoRA stage trained on the base stage's model, not on the tiny Llama.
    adapter = json.loads((runs / "tune" / "model" / "bigft_output.json").read_text())
    assert adapter["base"] == str((runs / "base" / "model").resolve())


def test_rerun_skips_finished_stages(finished, tmp_path):
    root = _copy(finished, tmp_path)
    metrics = root / "outputs" / "tiny" / "tune" / "metrics.jsonl"
    before = metrics.read_text()
    out = ok(bigft_pipeline(root / "conf", "tiny", cwd=root))
    assert "base [finished]" in out and "tune [finished]" in out
    assert "bigft: stage base: finished: its outputs are reused" in out
    assert "$ bigft-train" in out  # the plan shows the commands ...
    assert "finished in" not in out  # ... and none ran
    assert metrics.read_text() == before


def test_changed_stage_reruns_with_the_stages_after_it(finished, tmp_path, tiny_llama_dir):
    root = _copy(finished, tmp_path)
    runs = root / "outputs" / "tiny"
    old_losses = train_losses(runs / "base")
    # The same pipeline (its data and cache where the original's are) but base's learning rate.
    original = finished[0]
    stages = tiny_stages(original, "2e-3")
    write_pipeline(root / "conf", "tiny", common_overrides(original, tiny_llama_dir), stages)
    out = ok(bigft_pipeline(root / "conf", "tiny", cwd=root))
    assert "stage base: its config changed: optim.lr: 0.001 → 0.002" in out
    assert "stage tune: stage base runs again" in out
    aside = {p.name.split(".stale-")[0] for p in runs.glob("*.stale-*")}
    assert aside == {"base", "tune"}  # moved aside, not deleted
    assert all((p / "model" / "bigft_output.json").is_file() for p in runs.glob("*.stale-*"))
    new_losses = train_losses(runs / "base")
    assert new_losses[1] == pytest.approx(old_losses[1])  # the same first step's loss ...
    assert new_losses[3] != pytest.approx(old_losses[3])  # ... then the new learning rate
    assert (runs / "tune" / "model" / "bigft_output.json").is_file()


def test_interrupted_stage_resumes(finished, tmp_path, tiny_llama_dir):
    reference, _ = finished
    root = tmp_path
    write_pipeline(root / "conf", "tiny", common_overrides(root, tiny_llama_dir), tiny_stages(root))
    crash = bigft_pipeline(root / "conf", "tiny", cwd=root, env={"BIGFT_CRASH_AFTER_STEP": "2"})
    assert crash.returncode != 0
    assert "stage base failed" in crash.stderr and "base resumes" in crash.stderr
    runs = root / "outputs" / "tiny"
    assert not (runs / "tune").exists()  # nothing after the failed stage ran

    out = ok(bigft_pipeline(root / "conf", "tiny", cwd=root))
    assert "base [resume]" in out
    assert "resumed from" in out and "(step 2)" in out
    expected = train_losses(reference / "outputs" / "tiny" / "base")
    assert train_losses(runs / "base") == pytest.approx(expected, rel=1e-6)
    assert (runs / "tune" / "model" / "bigft_output.json").is_file()


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, tiny_llama_dir):
    write_pipeline(
        tmp_path / "conf", "tiny", common_overrides(tmp_path, tiny_llama_dir), tiny_stages(tmp_path)
    )
    out = ok(bigft_pipeline(tmp_path / "conf", "tiny", "--dry-run", cwd=tmp_path))
    assert "1. base [run] (after: nothing)" in out and "2. tune [run] (after: base)" in out
    assert "model.path=outputs/tiny/base/model: will be produced by stage base" in out
    assert "bigft-plan: 0.0 GiB per GPU, fits" in out
    assert not (tmp_path / "outputs").exists()
    # A mistake in the last stage stops the pipeline before the first stage starts.
    stages = tiny_stages(tmp_path)
    stages["tune"]["overrides"].append("trainer.micro_batch_size=0")
    write_pipeline(tmp_path / "conf", "tiny", common_overrides(tmp_path, tiny_llama_dir), stages)
    bad = bigft_pipeline(tmp_path / "conf", "tiny", cwd=tmp_path)
    assert "stage tune (bigft-train" in user_error(bad)
    assert not (tmp_path / "outputs").exists()
