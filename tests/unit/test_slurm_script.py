"""The Slurm launcher's pieces that need no cluster: option parsing, the rendered script, and
the stop-on-signal path of the loop (checkpoint, then resume to the uninterrupted losses)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bigft.config import compose_config
from bigft.config.sbatch_options import mem_gb, submitit_parameters, time_minutes
from bigft.engine.checkpoint import list_checkpoints
from bigft.engine.stop import Preempted, StopRequest
from bigft.errors import ConfigError
from bigft.launch.slurm import check_sweep, render_script, submit, sweep_points
from bigft.train import train
from tests.integration.runs import train_losses, train_overrides


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("90", 90), ("4:00:00", 240), ("0:30", 1), ("1-12:00:00", 2160), ("2-0", 2880)],
)
def test_slurm_time_limits_convert_to_minutes(text, minutes):
    assert time_minutes(text) == minutes


@pytest.mark.parametrize(("text", "gb"), [("64G", 64), ("500000M", 488), ("0", 0), (None, None)])
def test_slurm_memory_converts_to_gb(text, gb):
    assert mem_gb(text) == gb


def test_bad_slurm_values_name_the_key():
    with pytest.raises(ConfigError, match=r"launcher\.time='4 hours'"):
        time_minutes("4 hours")
    with pytest.raises(ConfigError, match=r"launcher\.mem='lots'"):
        mem_gb("lots")
    with pytest.raises(ConfigError, match=r"launcher\.sbatch_extra entry 'mail-type=END'"):
        submitit_parameters(["mail-type=END"], exclusive=False)


def test_sbatch_extra_becomes_submitit_parameters():
    params = submitit_parameters(["--mail-type=END", "--reservation=big", "--nice"], True)
    assert params == {
        "mail_type": "END",
        "reservation": "big",
        "nice": True,
        "exclusive": True,
        "requeue": True,
    }


def test_rendered_script_carries_every_launcher_setting(tmp_path):
    cfg = compose_config(
        [
            "launcher=slurm",
            "name=run",
            "launcher.nodes=2",
            "launcher.nproc_per_node=4",
            "launcher.gpus_per_node=4",
            "launcher.cpus_per_task=8",
            "launcher.mem=0",
            "launcher.time=1-00:00:00",
            "launcher.partition=gpu",
            "launcher.account=proj",
            "launcher.qos=high",
            "launcher.constraint=h100",
            "launcher.exclusive=true",
            "launcher.signal_lead_seconds=600",
            'launcher.sbatch_extra=["--mail-type=END"]',
            'launcher.setup=["module load cuda/12.4","export NCCL_DEBUG=WARN"]',
            'launcher.srun_args=["--container-image=/img.sqsh"]',
            "launcher.python=python3",
        ]
    )
    script = render_script(
        cfg, config_path=tmp_path / "c.yaml", log_dir=tmp_path / "logs", workdir=Path("/work")
    )
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert directives == [
        "#SBATCH --job-name=bigft-run",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=0",
        "#SBATCH --time=1-00:00:00",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "#SBATCH --qos=high",
        "#SBATCH --constraint=h100",
        "#SBATCH --exclusive",
        "#SBATCH --chdir=/work",
        f"#SBATCH --output={tmp_path}/logs/%j.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --signal=USR2@600",
        "#SBATCH --requeue",
        "#SBATCH --mail-type=END",
    ]
    body = script.split("set -euo pipefail\n", 1)[1].splitlines()
    assert body[:3] == [
        "module load cuda/12.4",
        "export NCCL_DEBUG=WARN",
        "export OMP_NUM_THREADS=8",
    ]
    assert body[-1] == (
        "srun --kill-on-bad-exit=1 --container-image=/img.sqsh python3 -u -m "
        f"bigft.launch.slurm_job {tmp_path}/c.yaml"
    )


def test_stop_request_raises_a_flag_and_restores_the_handler():
    before = signal.getsignal(signal.SIGUSR2)
    with StopRequest(["USR2"]) as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.requested and stop.signal_name == "SIGUSR2"
    assert signal.getsignal(signal.SIGUSR2) is before
    with pytest.raises(ConfigError, match=r"launcher\.signal='USR9'"):
        StopRequest(["USR9"])


def test_a_stopped_run_checkpoints_and_resumes_to_the_uninterrupted_losses(
    tmp_path, tiny_llama_dir
):
    base = train_overrides(tmp_path, tiny_llama_dir, "sft", "lora", trainer__max_steps=5)
    train(compose_config([*base, "name=whole"]))
    stopped_run = compose_config([*base, "name=stopped"])
    with StopRequest(["USR2"]) as stop:
        os.kill(os.getpid(), signal.SIGUSR2)  # arrives during step 1
        with pytest.raises(Preempted, match="stopped after step 1 on SIGUSR2"):
            train(stopped_run, stop=stop)
    run_dir = tmp_path / "outputs" / "stopped"
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_00000001"]
    train(stopped_run)  # trainer.resume=auto
    whole = train_losses(tmp_path / "outputs" / "whole")
    assert train_losses(run_dir) == pytest.approx(whole, rel=1e-6)
    assert list(whole) == [1, 2, 3, 4, 5]


def dry_run_65b(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    data = tmp_path / "train.jsonl"
    data.write_text('{"instruction": "hi", "output": "hello"}\n')
    command = [
        *("experiment=llama65b_full_zero3", "launcher=slurm", "launcher.dry_run=true"),
        *(f"data.train={data}", f"output_root={tmp_path / 'outputs'}", *overrides),
    ]
    return subprocess.run(
        [sys.executable, "-m", "bigft.train", *command], capture_output=True, text=True, timeout=120
    )


def test_dry_run_of_a_65b_job_on_8_nodes_prints_the_script_and_writes_nothing(tmp_path):
    result = dry_run_65b(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for directive in (
        "#SBATCH --nodes=8",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --signal=USR2@300",
        "#SBATCH --requeue",
    ):
        assert directive in result.stdout
    assert "srun --kill-on-bad-exit=1" in result.stdout
    assert "-m bigft.launch.slurm_job" in result.stdout
    # (Hydra itself records the command in <run dir>/.hydra, as for every bigft-train.)
    assert not list((tmp_path / "outputs").rglob("slurm"))


def test_a_job_that_cannot_fit_is_refused_with_the_plan_unless_forced(tmp_path):
    # 65B full fine-tuning under ZeRO-3 on one node of 8 GPUs: about 129 GiB per 80 GiB GPU.
    result = dry_run_65b(tmp_path, "launcher.nodes=1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "does not fit in 80 GiB per GPU" in result.stderr
    assert "DOES NOT FIT" in result.stderr and "launcher.nodes=2" in result.stderr
    assert "#SBATCH" not in result.stdout
    forced = dry_run_65b(tmp_path, "launcher.nodes=1", "launcher.force=true")
    assert forced.returncode == 0 and "#SBATCH --nodes=1" in forced.stdout


def test_a_sweep_is_checked_before_its_job_array_is_submitted(tmp_path):
    result = subprocess.run(
        [
            *(sys.executable, "-m", "bigft.train", "-m", "launcher=slurm"),
            *(f"data.train={tmp_path / 'missing.jsonl'}", "optim.lr=1e-4,2e-4"),
            f"output_root={tmp_path / 'outputs'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    missing = f"data.train: data file not found: {tmp_path}"
    assert f"bigft: error: sweep point optim.lr=0.0001: {missing}" in result.stderr
    assert not list(tmp_path.rglob(".submitit"))


def test_sweep_points_expand_as_hydras_sweeper_does():
    points = sweep_points(["optim.lr=0.1,0.2", "name=s", "optim.betas=[0.9,0.95]", "seed=1,2"])
    assert [swept for _, swept in points] == [
        "optim.lr=0.1 seed=1",
        "optim.lr=0.1 seed=2",
        "optim.lr=0.2 seed=1",
        "optim.lr=0.2 seed=2",
    ]
    # A list value is one value, not a sweep.
    assert points[0][0] == ["optim.lr=0.1", "name=s", "optim.betas=[0.9,0.95]", "seed=1"]


def test_every_sweep_point_is_checked_and_the_one_that_cannot_run_is_named(tmp_path):
    # 65B full fine-tuning under ZeRO-3 fits on 2 nodes of 8 GPUs, not on 1: the sweep stops
    # before its job array is submitted, naming the point.
    data = tmp_path / "train.jsonl"
    data.write_text('{"instruction": "hi", "output": "hello"}\n')
    result = subprocess.run(
        [
            *(sys.executable, "-m", "bigft.train", "-m", "experiment=llama65b_full_zero3"),
            *("launcher=slurm", "launcher.dry_run=true", "launcher.nodes=2,1"),
            *(f"data.train={data}", f"output_root={tmp_path / 'outputs'}"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "bigft: error: sweep point launcher.nodes=1: this job does not fit" in result.stderr
    assert "sweep point launcher.nodes=2" not in result.stderr
    assert not list(tmp_path.rglob(".submitit"))


def test_a_dry_run_of_the_demo_builds_nothing(tmp_path, capsys):
    # The demo's base model is missing: a real submission builds it first (minutes of
    # pre-training); a dry run only prints the script.
    cfg = compose_config(
        [
            "launcher=slurm",
            "launcher.dry_run=true",
            f"cache_dir={tmp_path / 'cache'}",
            f"output_root={tmp_path / 'outputs'}",
        ]
    )
    assert submit(cfg) is None
    assert "#SBATCH --job-name=bigft-demo-lora-sft" in capsys.readouterr().out
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "outputs").exists()


def test_a_sweep_without_training_data_is_refused_before_submitting():
    # sft_qlora_8b leaves data.train to the user; the nodes would only find out after the queue.
    with pytest.raises(ConfigError, match=r"sweep point optim.lr=0.0001: data.train is missing"):
        check_sweep(["experiment=sft_qlora_8b", "launcher=slurm", "optim.lr=1e-4,2e-4"])
