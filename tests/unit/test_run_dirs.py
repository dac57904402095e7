"""What a user-given model path is: a finished bigft run, a run that has not finished (refused by
name), or a plain model directory / hub id; and what a run directory is called and planned as."""

from __future__ import annotations

import json
import re

import pytest
from omegaconf import OmegaConf

from bigft.config import compose_config, model_dir_name
from bigft.config.schema import ModelConfig
from bigft.errors import ConfigError
from bigft.launch.slurm import check_before_submit
from bigft.outputs import OUTPUT_FILE
from bigft.plan.shape import hf_config_dict
from bigft.run_dirs import finished_output, starting_model


def output(path, **meta):
    path.mkdir(parents=True)
    defaults = {"kind": "adapter", "method": "lora", "base": "base", "head": "causal_lm"}
    (path / OUTPUT_FILE).write_text(json.dumps({**defaults, **meta}))
    return path


def run_dir(path, *files):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("name: x\n")
    for name in files:
        (path / name).mkdir(parents=True)
    return path


def model_cfg(path):
    return OmegaConf.structured(ModelConfig(name="x", path=str(path)))


def test_a_finished_run_is_its_model_and_an_output_dir_is_itself(tmp_path):
    out = output(tmp_path / "run" / "model")
    assert finished_output(tmp_path / "run", key="k") == out
    assert finished_output(out, key="k") == out
    merged = output(tmp_path / "run" / "merged", kind="model")
    assert finished_output(merged, key="k") == merged


def test_a_model_directory_or_hub_id_is_not_a_run(tiny_llama_dir):
    assert finished_output(tiny_llama_dir, key="k") is None
    assert finished_output("meta-llama/Llama-3.1-8B", key="k") is None


def test_a_run_without_a_model_is_refused_naming_it(tmp_path):
    run = run_dir(tmp_path / "run", "checkpoints/step-00000002")
    with pytest.raises(ConfigError) as err:
        finished_output(run, key="reward.model")
    message = str(err.value)
    assert f"reward.model={str(run)!r} is a bigft run directory that has not finished" in message
    assert "model/bigft_output.json" in message and "resumes it" in message
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("- task=dpo\n- name=my run\n")
    with pytest.raises(ConfigError, match=r"`bigft-train task=dpo 'name=my run'` resumes it"):
        finished_output(run / "model", key="model.path")


def test_a_run_that_never_saved_says_so(tmp_path):
    run = run_dir(tmp_path / "run")
    with pytest.raises(ConfigError, match="has no checkpoint either"):
        finished_output(run, key="task.reference")


def test_a_prefix_run_cannot_be_trained_on(tmp_path):
    output(tmp_path / "run" / "model", method="prefix")
    with pytest.raises(ConfigError, match=r"prefix-tuning run: .* cannot be merged"):
        starting_model(model_cfg(tmp_path / "run"), tmp_path / "new", head="causal_lm")


def test_a_classifier_run_is_not_a_causal_lm_to_train(tmp_path):
    output(tmp_path / "run" / "model", kind="model", head="sequence_classification")
    with pytest.raises(ConfigError, match="holds a sequence-classification model"):
        starting_model(model_cfg(tmp_path / "run"), tmp_path / "new", head="causal_lm")


@pytest.mark.parametrize(
    ("meta", "task", "message"),
    [
        ({"method": "prefix"}, "sft", "prefix-tuning run"),
        ({"kind": "model", "head": "sequence_classification"}, "dpo", "sequence-classification"),
    ],
)
def test_slurm_submission_refuses_such_a_run_before_any_job(tmp_path, meta, task, message):
    """The job's rank 0 would refuse it minutes into the queue; the submitting host does now."""
    output(tmp_path / "run" / "model", **meta)
    data = "" if task == "sft" else "data=demo_preferences"
    overrides = [f"task={task}", data, "launcher=slurm", "launcher.dry_run=true", "model=local"]
    cfg = compose_config(
        [o for o in overrides if o]
        + [f"model.path={tmp_path / 'run'}", f"output_root={tmp_path / 'out'}"]
    )
    with pytest.raises(ConfigError, match=message):
        check_before_submit(cfg)


def test_a_full_run_is_loaded_from_its_model_with_its_tokenizer(tmp_path):
    out = output(tmp_path / "run" / "model", kind="model", method="full")
    resolved = starting_model(model_cfg(tmp_path / "run"), tmp_path / "new", head="causal_lm")
    assert resolved.path == resolved.tokenizer == str(out.resolve())
    plain = model_cfg("meta-llama/Llama-3.1-8B")
    assert starting_model(plain, tmp_path / "new", head="causal_lm") is plain


def test_model_local_names_a_run_after_the_run(tmp_path):
    output(tmp_path / "demo-lora-sft" / "model")
    output(tmp_path / "demo-lora-sft" / "merged", kind="model")
    assert model_dir_name(str(tmp_path / "demo-lora-sft")) == "demo-lora-sft"
    assert model_dir_name(str(tmp_path / "demo-lora-sft" / "merged")) == "demo-lora-sft"
    assert model_dir_name(str(tmp_path / "demo-lora-sft" / "model/")) == "demo-lora-sft"
    # By the name alone: the same before the run has finished (a pipeline composes its later
    # stages then, and compares their configs on every rerun) as after.
    assert model_dir_name(str(tmp_path / "not-yet" / "model")) == "not-yet"


def test_plan_reads_a_runs_base_config(tmp_path, tiny_llama_dir):
    output(tmp_path / "sft" / "model", base=str(tiny_llama_dir))
    # A run trained on the sft run's merge names that merge (a full model) as its base.
    merge = output(tmp_path / "dpo" / "base", kind="model")
    (merge / "config.json").write_text((tiny_llama_dir / "config.json").read_text())
    output(tmp_path / "dpo" / "model", base=str(merge))
    expected = json.loads((tiny_llama_dir / "config.json").read_text())
    assert hf_config_dict(model_cfg(tmp_path / "sft")) == expected
    assert hf_config_dict(model_cfg(tmp_path / "dpo")) == expected


def test_dpo_reference_cache_is_keyed_on_the_runs_model_files(tmp_path):
    from bigft.config import compose_config
    from bigft.tasks.reference import _identity

    run = tmp_path / "run"
    output(run / "model", kind="model", method="full")
    cfg = compose_config(["task=dpo", "method=full", f"model.path={run}", "logger=none"])
    before = _identity(cfg, "precompute", "none")
    (run / "checkpoints" / "step_00000001").mkdir(parents=True)  # not the model: same key
    assert _identity(cfg, "precompute", "none") == before
    (run / "model" / OUTPUT_FILE).write_text('{"kind": "model", "head": "causal_lm"} ')
    assert _identity(cfg, "precompute", "none") != before  # the run was trained again
    reference = _identity(cfg, str(run), "none")
    (run / "model" / "model.safetensors").write_bytes(b"new")
    assert _identity(cfg, str(run), "none") != reference


def _readers():
    import torch

    from bigft.export import output_dir_of
    from bigft.redteam.judges import _load_head
    from bigft.redteam.target import load_target
    from bigft.rl.reward_model import load_reward_model
    from bigft.tasks.reference import load_reference

    return {
        "reward.model": lambda p: load_reward_model(p),
        "task.reference": lambda p: load_reference(p, "fp32", torch.device("cpu")),
        "target": lambda p: load_target(p),
        "judges.classifier.run": lambda p: _load_head(
            p, "judges.classifier.run", "sequence_classification"
        ),
        "run": lambda p: output_dir_of(p),
    }


@pytest.mark.parametrize(
    "key", ["reward.model", "task.reference", "target", "judges.classifier.run", "run"]
)
def test_every_reader_refuses_an_unfinished_run_by_name(tmp_path, key):
    run = run_dir(tmp_path / "run", "checkpoints/step_00000004")
    with pytest.raises(
        ConfigError,
        match=rf"^{re.escape(key)}='.*/run' is a bigft run directory that has not finished",
    ):
        _readers()[key](str(run))


@pytest.mark.parametrize("key", ["judges.classifier.run", "run"])
def test_keys_that_take_only_a_run_refuse_anything_else(tmp_path, tiny_llama_dir, key):
    read = _readers()[key]
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}='.*/nope' does not exist$"):
        read(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}=.* is not a bigft run directory"):
        read(str(tiny_llama_dir))
