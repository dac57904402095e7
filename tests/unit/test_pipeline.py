"""bigft-pipeline's pieces: stages and references, changed keys, stand-ins for future inputs,
the plan, the Slurm dependency options, W&B grouping."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from bigft.config import compose_config
from bigft.errors import ConfigError
from bigft.pipeline.plan import check_all, decide, render
from bigft.pipeline.slurm import dependency_options
from bigft.pipeline.stages import StageConfig, read_stages, register_pipeline_schema
from bigft.pipeline.state import PipelineState, changed_keys, set_aside

register_pipeline_schema()


def pipeline(*overrides: str):
    return compose_config(list(overrides), config_name="pipeline")


def test_demo_rlhf_stages_depend_on_what_they_refer_to():
    stages = {s.name: s for s in read_stages(pipeline("pipeline=rlhf_demo"))}
    assert list(stages) == ["sft", "reward", "rl"]
    # rl reads sft's model and reward's reward model; reward refers to none: the stage before.
    assert {n: s.depends_on for n, s in stages.items()} == {
        "sft": [],
        "reward": ["sft"],
        "rl": ["sft", "reward"],
    }
    rl = stages["rl"].overrides
    assert "model.path=outputs/rlhf_demo/sft" in rl
    assert "reward.model=outputs/rlhf_demo/reward" in rl
    assert rl[-4:] == [
        "output_root=outputs/rlhf_demo",
        "name=rl",
        "logger.group=rlhf_demo",
        "logger.job_type=rl",
    ]


def test_export_stage_writes_where_the_pipeline_says(tmp_path):
    cfg = pipeline("pipeline=rlhf_demo")
    cfg.stages.rl = StageConfig(command="export", overrides=["run=${stages.sft.output_dir}"])
    export = read_stages(cfg)[-1]
    assert export.overrides == ["run=outputs/rlhf_demo/sft", "output=outputs/rlhf_demo/rl"]
    assert export.command_line() == (
        "bigft-export run=outputs/rlhf_demo/sft output=outputs/rlhf_demo/rl"
    )


def test_redteam_round_demo_stages_compose_as_their_commands():
    stages = {s.name: s for s in read_stages(pipeline("pipeline=redteam_round_demo"))}
    assert stages["rescan"].depends_on == ["tune", "scan"]
    assert "++logger.job_type=scan" in stages["scan"].overrides
    state = PipelineState(Path("/nonexistent/pipeline.json"))
    plans = {p.stage.name: p for p in decide(list(stages.values()), state)}
    scan = plans["scan"].cfg
    assert scan.target == "outputs/redteam_round_demo/sft" and scan.export.enabled
    assert scan.logger.group == "redteam_round_demo"
    assert "role_play" in scan.attacks.templates.families
    assert plans["tune"].cfg.data.train == "outputs/redteam_round_demo/scan/export/sft.jsonl"


def test_stage_mistakes_are_named():
    later = "stages.sft.overrides=['model.path=${stages.rl.output_dir}']"
    with pytest.raises(
        ConfigError,
        match=r"'model.path=\$\{stages.rl.output_dir\}' refers to stage 'rl', which is a later",
    ):
        read_stages(pipeline("pipeline=rlhf_demo", later))
    with pytest.raises(ConfigError, match=r"'name=x': the pipeline sets where a stage writes"):
        read_stages(pipeline("pipeline=rlhf_demo", "stages.sft.overrides=['name=x']"))
    with pytest.raises(ConfigError, match=r"stages.sft.command='trian': expected one of train"):
        read_stages(pipeline("pipeline=rlhf_demo", "stages.sft.command=trian"))
    with pytest.raises(ConfigError, match=r"inputs.model is not set"):
        read_stages(pipeline("pipeline=rlhf"))


def test_stage_launcher_keys_follow_the_command_lines():
    cfg = pipeline(
        "pipeline=rlhf",
        "inputs.model=/m",
        "inputs.sft_data=/d",
        "inputs.rankings=/r",
        "inputs.prompts=/p",
    )
    sft = read_stages(cfg, ["launcher=slurm", "launcher.partition=gpu"])[0]
    i = sft.overrides.index("launcher=slurm")
    assert sft.overrides[i : i + 4] == [
        "launcher=slurm",
        "launcher.partition=gpu",
        "launcher.gpus_per_node=1",
        "launcher.time=12:00:00",
    ]


def test_changed_keys_name_what_changed_and_ignore_launch_and_logging():
    old = {"optim": {"lr": 1e-3}, "launcher": {"name": "local"}, "logger": {"group": None}}
    new = {"optim": {"lr": 2e-3}, "launcher": {"name": "slurm"}, "logger": {"group": "p"}}
    assert changed_keys(old, new) == ["optim.lr: 0.001 → 0.002"]
    assert changed_keys({"a": 1}, {"a": 1, "b": 2}) == ["b: '(unset)' → 2"]


def test_set_aside_renames_never_deletes(tmp_path):
    run = tmp_path / "sft"
    run.mkdir()
    (run / "x").write_text("kept")
    first = set_aside(run)
    run.mkdir()
    second = set_aside(run)
    assert first != second and first.name.startswith("sft.stale-")
    assert (first / "x").read_text() == "kept" and not run.exists()


def _tiny_chain(tmp_path: Path, model_dir: Path):
    data = tmp_path / "sft.jsonl"
    data.write_text('{"instruction": "a b", "output": "c"}\n' * 4)
    common = [
        "model=local",
        f"model.path={model_dir}",
        "data=local",
        f"data.train={data}",
        "task.max_length=32",
    ]
    cfg = pipeline("pipeline=rlhf_demo", f"output_root={tmp_path / 'outputs'}")
    cfg.train_overrides = common
    cfg.stages.sft.overrides = []
    cfg.stages.reward.overrides = ["method=full"]
    # A chain through an export stage (bigft-export) and references of every kind.
    with open_dict(cfg):
        cfg.stages.pop("rl")
        cfg.stages.merge = StageConfig(command="export", overrides=["run=${stages.sft.output_dir}"])
        cfg.stages.rl = StageConfig(
            overrides=[
                "task=dpo",
                "task.reference=${stages.merge.output_dir}",
                "model.path=${stages.merge.output_dir}",
                "data.train=${stages.sft.output_dir}/x.jsonl",
            ]
        )
    return cfg


def test_future_inputs_stand_in_for_checks_and_the_plan(tmp_path, tiny_llama_dir):
    stages = read_stages(_tiny_chain(tmp_path, tiny_llama_dir))
    plans = decide(stages, PipelineState(tmp_path / "pipeline.json"))
    # task.reference and model.path of a directory that does not exist yet would be refused;
    # they stand in as the model merge's run starts from, and the data is not read.
    check_all(plans, slurm=False)
    rl = plans[-1]
    merge = str(tmp_path / "outputs" / "rlhf_demo" / "merge")
    assert sorted(rl.produced_inputs) == [
        f"data.train={tmp_path}/outputs/rlhf_demo/sft/x.jsonl: will be produced by stage sft",
        f"model.path={merge}: will be produced by stage merge",
        f"task.reference={merge}: will be produced by stage merge",
    ]
    assert rl.cfg.model.path == merge  # the stage runs with its real inputs
    assert "GiB per GPU, fits on a 80 GiB GPU" in rl.memory
    text = render(plans, slurm=False)
    assert "4. rl [run] (after: merge, sft)" in text
    assert "3. merge [run] (after: sft)" in text
    assert "bigft-plan: 0.0 GiB per GPU" in text


def test_a_finished_stage_is_read_from_its_run_directory(tmp_path, tiny_llama_dir):
    stages = read_stages(_tiny_chain(tmp_path, tiny_llama_dir))
    state = PipelineState(tmp_path / "pipeline.json")
    sft = decide(stages, state)[0]
    # A run made by hand, with the same config: finished, whoever ran it.
    run = Path(stages[0].output_dir)
    (run / "model").mkdir(parents=True)
    (run / "model" / "bigft_output.json").write_text("{}")
    (run / "config.yaml").write_text(OmegaConf.to_yaml(sft.cfg, resolve=True))
    plans = decide(stages, state)
    assert [p.status for p in plans] == ["finished", "run", "run", "run"]
    changed = OmegaConf.create(OmegaConf.to_container(sft.cfg, resolve=True))
    changed.optim.lr = 0.5
    (run / "config.yaml").write_text(OmegaConf.to_yaml(changed))
    plans = decide(stages, state)
    assert [p.status for p in plans] == ["rerun"] * 4
    assert plans[0].changes == [f"optim.lr: 0.5 → {sft.cfg.optim.lr!r}"]
    assert [p.why for p in plans[1:]] == [
        "stage sft runs again",
        "stage sft runs again",
        "stage merge runs again",
    ]


def test_dependency_options():
    assert dependency_options([]) == []
    assert dependency_options(["12", "13"]) == [
        "--dependency=afterok:12:13",
        "--kill-on-invalid-dep=yes",
    ]


def test_wandb_run_gets_the_pipeline_group_and_stage_job_type(tmp_path, monkeypatch):
    import wandb

    from bigft.tracking import start_tracking

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    real_init, seen = wandb.init, []

    def init(**kwargs):  # the real wandb.init, watched
        run = real_init(**kwargs)
        seen.append((run.group, run.job_type))
        return run

    monkeypatch.setattr(wandb, "init", init)
    cfg = compose_config(["logger=wandb", "logger.group=rlhf", "logger.job_type=reward"])
    start_tracking(cfg, tmp_path, is_main=True, wandb_id=None).finish()
    assert seen == [("rlhf", "reward")]


def _export_then_scan(tmp_path, target: str):
    """A pipeline whose scan targets `target` (an export stage's output: a future input)."""
    cfg = pipeline(
        "pipeline=redteam_round_demo",
        f"output_root={tmp_path}",
        "launcher=slurm",
        "launcher.partition=cpu",
    )
    cfg.stages = {
        "merge": StageConfig(command="export", overrides=[f"run={tmp_path}/sft"]),
        "scan": StageConfig(
            command="redteam",
            overrides=[f"target={target}", "judges.refusal.enabled=true"],
            launcher={"time": "00:30:00"},
        ),
    }
    slurm = ["launcher=slurm", "launcher.partition=cpu", "launcher.nproc_per_node=4"]
    stages = read_stages(cfg, [*slurm, "launcher.dry_run=true"])
    return cfg, decide(stages, PipelineState(tmp_path / "pipeline.json"))


def test_a_redteam_stage_is_submitted_by_bigft_redteams_launcher(tmp_path, capsys):
    from bigft.pipeline.slurm import submit_job

    _, plans = _export_then_scan(tmp_path, "${stages.merge.output_dir}")
    scan = plans[1].stage
    # The rank layout is the train stages'; a scan runs in one process.
    assert [o for o in scan.overrides if o.startswith("launcher")] == [
        "launcher=slurm",
        "launcher.partition=cpu",
        "launcher.dry_run=true",
        "launcher.time=00:30:00",
    ]
    check_all(plans, slurm=True)  # the target is merge's future output: only Slurm's needs
    assert plans[1].checked
    assert submit_job(plans[1], ["41", "42"]) is None  # launcher.dry_run: printed
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[1] == "# bigft scan: written by `bigft-redteam launcher=slurm`; resubmit with sbatch."
    )
    for directive in (
        "--job-name=bigft-scan",
        "--ntasks-per-node=1",
        "--partition=cpu",
        "--time=00:30:00",
        "--requeue",
        "--dependency=afterok:41:42",
        "--kill-on-invalid-dep=yes",
    ):
        assert f"#SBATCH {directive}" in lines
    # The scan stops after its batch on Slurm's warning and requeues (bigft.redteam.slurm_job).
    assert any(line.startswith("#SBATCH --signal=") for line in lines)
    task = next(line for line in lines if line.startswith("srun"))
    assert f"-m bigft.redteam.slurm_job {tmp_path}/redteam_round_demo/scan/slurm/config-" in task


def test_a_redteam_stage_with_inputs_at_hand_is_checked_before_any_submission(tmp_path):
    _, plans = _export_then_scan(tmp_path, "/nonexistent/run")
    with pytest.raises(ConfigError, match=r"^stage scan \(bigft-redteam .*\): target='/nonex"):
        check_all(plans, slurm=True)


def test_an_export_stage_job_waits_and_runs_its_command(tmp_path):
    from bigft.pipeline.slurm import stage_script

    cfg, _ = _export_then_scan(tmp_path, "${stages.merge.output_dir}")
    cfg.stages.merge.launcher = {"time": "00:30:00"}
    plan = decide(read_stages(cfg), PipelineState(tmp_path / "pipeline.json"))[0]
    script, _ = stage_script(plan, ["41", "42"], cfg)
    lines = script.splitlines()
    for directive in (
        "--job-name=bigft-redteam_round_demo-merge",
        "--partition=cpu",
        "--time=00:30:00",
        "--dependency=afterok:41:42",
        "--kill-on-invalid-dep=yes",
        "--requeue",
    ):
        assert f"#SBATCH {directive}" in lines
    assert not any("--signal" in line for line in lines)  # nothing to checkpoint on a warning
    assert lines[-1].split()[1:4] == ["-u", "-m", "bigft.export"]
    assert f"output={tmp_path}/redteam_round_demo/merge" in lines[-1]
