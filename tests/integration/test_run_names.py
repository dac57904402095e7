"""Default run names: runs of two models never share (and refuse to resume) one run directory."""

from __future__ import annotations

import shutil

from bigft.config import compose_config
from bigft.train import train

from .runs import train_overrides


def test_two_local_models_get_their_own_run_directories(tmp_path, tiny_llama_dir):
    run_dirs = []
    for model in ("tiny-qwen2", "tiny-mistral"):
        model_dir = shutil.copytree(tiny_llama_dir, tmp_path / "models" / model)
        cfg = compose_config(train_overrides(tmp_path, model_dir, "sft", "lora"))
        assert cfg.name == f"{model}-lora-sft"
        metrics = train(cfg)
        assert metrics["train/loss"] > 0
        run_dirs.append(tmp_path / "outputs" / f"{model}-lora-sft")
    for run_dir in run_dirs:
        assert (run_dir / "model" / "adapter_config.json").is_file()


def test_a_hub_id_names_the_run_by_its_last_part():
    cfg = compose_config(["model=local", "model.path=meta-llama/Llama-3.1-8B/"])
    assert cfg.name == "Llama-3.1-8B-lora-sft"
