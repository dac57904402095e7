"""Rollouts from a real 2-rank DeepSpeed ZeRO-3 engine (gloo, CPU): same tokens as an unsharded
model, shards gathered once per rollout instead of once per token, ranks that end at different
steps kept in step, and training afterwards still sharded."""

from __future__ import annotations

import datetime
import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.unit.test_rl_rollout import EOSAt

pytestmark = pytest.mark.distributed

TEXTS = ["Reverse the word cat.", "The quick brown fox", "Positive reviews say", "Numbers: 0 1"]
DS_CONFIG = {
    "train_micro_batch_size_per_gpu": 1,
    "gradient_accumulation_steps": 1,
    # Threshold 0: even the tiny model's small parameters are sharded, as a big model's are.
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "zero_allow_untested_optimizer": True,
}
GATHER_FUNCTIONS = ("allgather_fn", "all_gather_into_tensor", "all_gather")


def _count_gathers(ds_comm) -> dict[str, int]:
    """Count the elements DeepSpeed all-gathers (calls are not comparable: it coalesces)."""
    counts = {"n": 0}
    for name in GATHER_FUNCTIONS:
        original = getattr(ds_comm, name)

        def counted(output, *args, _original=original, **kwargs):
            outputs = output if isinstance(output, list) else [output]
            counts["n"] += sum(t.numel() for t in outputs)
            return _original(output, *args, **kwargs)

        setattr(ds_comm, name, counted)
    return counts


def _rank(rank: int, world: int, model_dir: str, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    import deepspeed
    import deepspeed.comm as ds_comm
    from transformers import AutoTokenizer, LlamaForCausalLM

    from bigft.rl.rollout import generate_rollout, generation_model, rollout_seeds

    # A rank left waiting in a collective (ranks decoding different numbers of steps) fails
    # the test within a minute instead of hanging it.
    timeout = datetime.timedelta(seconds=60)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timeout)
    deepspeed.init_distributed(dist_backend="gloo", timeout=timeout)
    tok = AutoTokenizer.from_pretrained(model_dir)
    reference = LlamaForCausalLM.from_pretrained(model_dir).eval()
    model = LlamaForCausalLM.from_pretrained(model_dir)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=DS_CONFIG)
    counts = _count_gathers(ds_comm)
    indices = [rank, rank + 2]
    prompts = [tok(TEXTS[i])["input_ids"] for i in indices]
    # Rank 0's rows end after 1 and 2 tokens; rank 1's never: rank 0 must keep decoding with
    # rank 1 wherever its forwards are collectives.
    steps = {0: 1, 1: 2} if rank == 0 else {}
    opts = {"eos_ids": [tok.eos_token_id], "pad_id": tok.pad_token_id, "temperature": 1.0}
    opts["seeds"] = rollout_seeds(0, 0, indices)

    def roll(module, max_new_tokens, stop_together=False):
        handle = module.lm_head.register_forward_hook(EOSAt(tok.eos_token_id, steps))
        try:
            r = generate_rollout(
                module, prompts, max_new_tokens=max_new_tokens, stop_together=stop_together, **opts
            )
            return r.response_ids.tolist()
        finally:
            handle.remove()

    result = {"reference": roll(reference, 8)}
    # bigft's engine wrapper (what the loop holds) is accepted as well as DeepSpeed's engine.
    wrapper = SimpleNamespace(engine=engine, module=engine.module)
    for gather, name in ((True, "gathered"), (False, "sharded")):
        for max_new, holder in ((4, engine), (8, wrapper)):
            before = counts["n"]  # the rollout phase's all-gathers, entering the context included
            with generation_model(holder, gather=gather) as gen:
                tokens = roll(gen.module, max_new, gen.stop_together)
            result[f"{name}_{max_new}"] = [tokens, counts["n"] - before]
    # Training goes on, sharded, after the rollouts.
    ids = torch.tensor([prompts[0]])
    loss = engine(input_ids=ids, use_cache=False).logits.float().logsumexp(-1).mean()
    engine.backward(loss)
    engine.step()
    embed = engine.module.model.embed_tokens.weight
    result["shard"] = [embed.ds_tensor.numel(), embed.ds_numel]
    result["numel"] = sum(p.ds_numel for p in engine.module.parameters())
    result["loss"], result["pad"] = float(loss.detach()), tok.pad_token_id
    Path(f"{out}.{rank}").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_zero3_rollouts_gather_once_and_match_the_unsharded_model(tmp_path, tiny_llama_dir):
    out = str(tmp_path / "result")
    mp.spawn(_rank, args=(2, str(tiny_llama_dir), _free_port(), out), nprocs=2)
    for rank in range(2):
        r = json.loads(Path(f"{out}.{rank}").read_text())
        gathered, gathers_8 = r["gathered_8"]
        sharded, sharded_gathers_8 = r["sharded_8"]
        reference, width = r["reference"], len(r["reference"][0])
        assert gathered == reference
        assert r["gathered_4"][0] == [row[:4] for row in reference]
        # Sharded decoding ran as long as the other rank's (padding after the EOS), same tokens.
        assert [row[:width] for row in sharded] == reference
        assert len(sharded[0]) == 8 and set(sharded[0][width:]) <= {r["pad"]}
        # Gathered once per rollout phase (the model's size), whatever its length; sharded:
        # the model again on every forward (8 here: the prefill and 7 more tokens).
        assert r["gathered_4"][1] == gathers_8 == r["numel"]
        assert sharded_gathers_8 >= 8 * r["numel"]
        shard, total = r["shard"]
        assert shard < total and r["loss"] == r["loss"]  # still sharded; a finite loss
