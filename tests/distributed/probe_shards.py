"""Run under torchrun by test_distributed.py: load the model the way bigft does under ZeRO-3 and
write, per rank, how much of each parameter this rank holds (at load time and in the engine)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bigft.config import compose_config
from bigft.distributed import close_process_group, discover, init_process_group
from bigft.distributed.comm import barrier
from bigft.distributed.deepspeed_config import build_deepspeed_config
from bigft.distributed.engine import build_engine
from bigft.engine.optim import build_optimizer
from bigft.methods import apply_method
from bigft.models.load import load_model, load_tokenizer
from bigft.train import sharded_loading


def main(out_dir: str, overrides: list[str]) -> None:
    cfg = compose_config(overrides)
    env = discover(cfg.distributed.name)
    init_process_group(env, "gloo", 5, deepspeed=True)
    ds_config = build_deepspeed_config(cfg, env.world_size)
    tokenizer = load_tokenizer(cfg.model)
    with sharded_loading(ds_config):
        model = load_model(cfg.model, cfg.method, "causal_lm", None, tokenizer)
    at_load = {n: hasattr(p, "ds_tensor") for n, p in model.named_parameters()}
    model = apply_method(model, cfg.method, "causal_lm")
    engine = build_engine(
        model, build_optimizer(model, cfg.optim), env, ds_config=ds_config, max_grad_norm=1.0
    )
    held = {
        n: [p.ds_tensor.numel(), p.ds_numel, at_load.get(n, False)]
        for n, p in engine.module.named_parameters()
    }
    Path(out_dir, f"rank{env.rank}.json").write_text(json.dumps(held))
    # Leave the group together, as bigft's train() does: a rank that exits while the other
    # still has collectives (or DeepSpeed's comm threads) in flight aborts at interpreter exit.
    barrier()
    close_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
