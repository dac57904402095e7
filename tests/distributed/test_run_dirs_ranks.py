"""model.path=<run dir> on 2 ranks: rank 0 merges the run's adapter while the others wait, and
ZeRO-3 builds the model partitioned from that merge, training as one process does."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from bigft.config import compose_config
from bigft.train import train
from tests.integration.runs import train_overrides

from .test_distributed import EXACT, _same_losses_and_eval, two_ranks_and_one

pytestmark = pytest.mark.distributed


def test_two_zero3_ranks_train_from_a_lora_run_as_one_process_does(tmp_path, tiny_llama_dir):
    train(compose_config([*train_overrides(tmp_path, tiny_llama_dir, "sft", "lora"), "name=sft"]))
    sft = tmp_path / "outputs" / "sft"
    base = [*train_overrides(tmp_path, sft, "sft", "lora"), *EXACT, "trainer.eval_at_start=true"]
    two, one = two_ranks_and_one(tmp_path, base, "zero3")
    _same_losses_and_eval(two, one)
    merged = [load_file(str(run / "base" / "model.safetensors")) for run in (two, one)]
    assert merged[0].keys() == merged[1].keys()
    assert all(merged[0][k].equal(merged[1][k]) for k in merged[0])
