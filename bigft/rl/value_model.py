"""task=ppo's value model behind one interface: values, its micro-batch, its step, its checkpoint.

Under lora/qlora it is the "value" adapter and head on the policy's own base (bigft/rl/value.py):
it trains through the policy's optimizer and is saved with the policy's weights, so every hook
but `values` does nothing. Under method=full|freeze it is a model of its own (InstructGPT's
set-up): a copy of the policy's decoder with a zero-initialised float32 scalar head
(task.value_init=policy), or the reward model's decoder and score head (task.value_init=reward),
trained with its own optimizer and schedule (optim: as the policy's) on the value loss of the
same backward. A run then holds four models: policy, value, frozen reference and reward model.
The value model trains what the method trains in the policy (method=freeze: the same blocks; its
head always trains), is wrapped for DDP like the policy, and its weights, optimizer and schedule
ride in every checkpoint (value.safetensors, value_optimizer.pt, value_scheduler.pt).

Under DeepSpeed it is a DeepSpeed engine of its own (the run's config: same stage,
precision, clipping), as DeepSpeed-Chat's and OpenRLHF's critics are: each engine runs the
backward of its own part of the loss (they share no parameter), so the value loss goes through
the value engine's backward and the policy loss through the policy's, the same gradients the one
DDP backward gives. Its ZeRO shards are saved by DeepSpeed in the checkpoint's value/ folder, its
schedule in value_scheduler.pt. Under ZeRO-3 no rank holds the policy whole to copy: the value
model is the initial policy loaded again (partitioned as it loads), as the RL reference is.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from omegaconf import DictConfig
from safetensors.torch import load_file, save_file

from bigft.distributed.deepspeed_config import zero_stage
from bigft.distributed.engine import DeepSpeedEngine, Engine, build_engine, shard_held_here
from bigft.distributed.env import DistEnv
from bigft.engine.optim import build_optimizer, build_scheduler
from bigft.errors import ConfigError
from bigft.methods.params import load_trainable_state_dict, trainable_state_dict
from bigft.rl.reward_model import load_reward_model
from bigft.rl.rollout import Rollout, rollout_inputs
from bigft.rl.value import (
    adapter_values,
    attach_value_adapter,
    head_values,
    zero_value_head,
)

log = logging.getLogger(__name__)

VALUE_FILE = "value.safetensors"
VALUE_OPTIMIZER_FILE = "value_optimizer.pt"
VALUE_SCHEDULER_FILE = "value_scheduler.pt"
VALUE_DIR = "value"  # under DeepSpeed: the value engine's own ZeRO checkpoint


class Values(Protocol):
    def values(self, rollout: Rollout) -> torch.Tensor: ...  # V [rows, response_len], grad
    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager: ...
    # The value part of a micro-batch's loss → what to add to the policy's loss: the part
    # itself (one backward reaches both), or, for an engine of its own, its value after that
    # engine's own backward (`units`: the policy's divisor, so both losses are scaled alike).
    def backward(self, value_loss: torch.Tensor, units: float) -> torch.Tensor: ...
    def step(self) -> float | None: ...  # after the policy's update: the grad norm, if own
    def schedule(self) -> None: ...  # after the policy's schedule steps
    def parameters(self) -> list[torch.nn.Parameter]: ...  # trainable, beyond the policy's
    def save(self, path: Path, is_main: bool) -> None: ...
    def load(self, path: Path) -> None: ...


class AdapterValues:
    """lora/qlora: the value adapter and head live in the policy's model, optimizer and files."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def values(self, rollout: Rollout) -> torch.Tensor:
        return adapter_values(self.model, rollout)

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, value_loss: torch.Tensor, units: float) -> torch.Tensor:
        return value_loss  # the adapter and head are the policy engine's: its backward

    def step(self) -> float | None:
        return None

    def schedule(self) -> None:
        pass

    def parameters(self) -> list[torch.nn.Parameter]:
        return []  # the adapter and head are among the policy model's own

    def save(self, path: Path, is_main: bool) -> None:
        pass

    def load(self, path: Path) -> None:
        pass


class ValueModel(torch.nn.Module):
    """A decoder without its LM head, and a scalar head reading its last hidden states."""

    def __init__(self, decoder: torch.nn.Module, head: torch.nn.Linear) -> None:
        super().__init__()
        self.decoder = decoder
        self.head = head

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        width: int,
    ) -> torch.Tensor:
        hidden = self.decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state
        return head_values(self.head, hidden, width)


class SeparateValues:
    """method=full|freeze: a ValueModel with its own engine (DDP or DeepSpeed) and schedule."""

    def __init__(self, engine: Engine, scheduler: Any) -> None:
        self.engine = engine
        self.scheduler = scheduler
        # A DeepSpeed engine runs its own backward; DDP's gradients come from the policy's.
        self.own_backward = isinstance(engine, DeepSpeedEngine)

    def values(self, rollout: Rollout) -> torch.Tensor:
        width = rollout.response_ids.shape[1]
        return self.engine.forward_model(**rollout_inputs(rollout), width=width)

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        return self.engine.micro_batch(last)

    def backward(self, value_loss: torch.Tensor, units: float) -> torch.Tensor:
        if not self.own_backward:
            return value_loss
        # DeepSpeed: a backward through the value engine alone, divided as the policy's loss
        # is; the policy's backward then gets its value only (for the logged loss).
        self.engine.backward(value_loss / max(units, 1.0))
        return value_loss.detach()

    def step(self) -> float | None:
        # The value loss reached these gradients through the policy engine's backward (or the
        # value engine's own), already scaled by the world size that DDP's (DeepSpeed's)
        # average takes back out. A non-finite norm skips this update alone, as the policy's.
        return self.engine.step()[1]

    def schedule(self) -> None:
        self.scheduler.step()

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.engine.module.parameters() if p.requires_grad]

    def save(self, path: Path, is_main: bool) -> None:
        if self.own_backward:
            self._save_sharded(path, is_main)
            return
        if is_main:  # every DDP replica holds the same weights and optimizer state
            save_file(trainable_state_dict(self.engine.module), path / VALUE_FILE)
            torch.save(self.engine.optimizer.state_dict(), path / VALUE_OPTIMIZER_FILE)
            torch.save(self.scheduler.state_dict(), path / VALUE_SCHEDULER_FILE)

    def _save_sharded(self, path: Path, is_main: bool) -> None:
        # Collective: every rank writes its ZeRO shard (weights and optimizer state).
        (path / VALUE_DIR).mkdir(exist_ok=True)
        self.engine.save_sharded(path / VALUE_DIR)
        if is_main:
            torch.save(self.scheduler.state_dict(), path / VALUE_SCHEDULER_FILE)

    def load(self, path: Path) -> None:
        if self.own_backward:
            self._load_sharded(path)
            return
        load_trainable_state_dict(self.engine.module, load_file(path / VALUE_FILE))
        self.engine.optimizer.load_state_dict(
            torch.load(path / VALUE_OPTIMIZER_FILE, weights_only=True)
        )
        self.scheduler.load_state_dict(torch.load(path / VALUE_SCHEDULER_FILE, weights_only=True))

    def _load_sharded(self, path: Path) -> None:
        if self.engine.engine.load_universal_checkpoint():
            # The policy's shards were converted for the new world size, the value's are not.
            raise ConfigError(
                "resuming task=ppo's value model under DeepSpeed on another number of ranks "
                "than wrote the checkpoint is not supported: its ZeRO shards only load at the "
                "world size that saved them; resume on that many ranks"
            )
        self.engine.load_sharded(path / VALUE_DIR)
        self.scheduler.load_state_dict(torch.load(path / VALUE_SCHEDULER_FILE, weights_only=True))


def decoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """A causal-LM or sequence-classification model's decoder (transformers' `base_model`)."""
    return model.base_model


def value_from_policy(policy: torch.nn.Module, *, copy_decoder: bool = True) -> ValueModel:
    """The initial policy's decoder (its requires_grad flags too) and a zero head: a copy of it,
    or (copy_decoder=False, a policy loaded again for this) the decoder itself."""
    decoder = decoder_of(policy)
    decoder = copy.deepcopy(decoder) if copy_decoder else decoder
    device = next(decoder.parameters()).device
    # V ≡ 0 at the start: the first advantages are Monte-Carlo returns, not a random head's noise.
    head = zero_value_head(policy.config.get_text_config().hidden_size, device)
    return ValueModel(decoder, head)


def value_from_reward(
    source: str, policy: torch.nn.Module, tokenizer: Any, device: torch.device
) -> ValueModel:
    """The reward model's decoder and score head, training the blocks the policy trains."""
    where = f"task.value_init=reward with reward.model={source!r}"
    reward, reward_tokenizer = load_reward_model(source, device=device)
    if reward_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(
            f"{where}: the reward model's tokenizer is not the policy's, so it cannot read the "
            "policy's token ids; use task.value_init=policy"
        )
    if getattr(reward, "is_loaded_in_4bit", False) or getattr(reward, "is_loaded_in_8bit", False):
        raise ConfigError(
            f"{where}: the reward model is quantized and cannot be trained as the value model; "
            "use task.value_init=policy"
        )
    if hasattr(reward, "merge_and_unload"):  # a reward run's LoRA adapter: fold it in
        reward = reward.merge_and_unload()
    head = getattr(reward, "score", None)
    if not isinstance(head, torch.nn.Linear) or head.out_features != 1:
        raise ConfigError(
            f"{where}: {type(reward).__name__} has no one-output `score` head to start the "
            "value head from; use task.value_init=policy"
        )
    policy_decoder = decoder_of(policy)
    dtype = next(policy_decoder.parameters()).dtype
    decoder = decoder_of(reward).to(dtype=dtype)
    trains = {name: p.requires_grad for name, p in policy_decoder.named_parameters()}
    for name, param in decoder.named_parameters():
        param.requires_grad_(trains.get(name, True))
    return ValueModel(decoder.train(), head.float().requires_grad_(True))


def build_values(
    cfg: DictConfig,
    *,
    policy: torch.nn.Module,
    tokenizer: Any,
    env: DistEnv,
    total_steps: int,
    bf16_update: str,
    ds_config: dict[str, Any] | None = None,
    load_policy: Callable[[], torch.nn.Module] | None = None,
) -> Values:
    """The value model task=ppo trains with this method (see the module's docstring).

    Called before the policy's optimizer and engine are built: under lora/qlora the value adapter
    and head are added to `policy` itself, so that they train, checkpoint and shard with it.
    With `ds_config` the separate value model gets a DeepSpeed engine of its own; under ZeRO-3
    `load_policy` loads the initial policy (its method applied) again, as the policy was.
    """
    if cfg.method.name in ("lora", "qlora"):
        attach_value_adapter(policy)
        return AdapterValues(policy)
    if str(cfg.task.value_init) == "reward":
        model = value_from_reward(str(cfg.reward.model), policy, tokenizer, env.device)
    elif zero_stage(ds_config) >= 3:
        if load_policy is None:
            raise ValueError("a ZeRO-3 value model needs load_policy, the policy's loader")
        # No rank holds the policy whole to copy: the initial policy loaded again, partitioned
        # as it loads (DeepSpeed partitions the head when its engine is built).
        model = value_from_policy(load_policy(), copy_decoder=False)
    else:
        model = value_from_policy(policy)
    optimizer = build_optimizer(model, cfg.optim, bf16_update=bf16_update)
    engine = build_engine(
        model, optimizer, env, ds_config=ds_config, max_grad_norm=cfg.optim.max_grad_norm
    )
    if zero_stage(ds_config) >= 3:
        log.info(
            "value model: the initial policy's decoder loaded again, sharded by ZeRO-3: %s",
            shard_held_here(engine.module),
        )
    # As the policy's: DeepSpeed steps bigft's optimizer with the lr this schedule sets.
    return SeparateValues(engine, build_scheduler(optimizer, cfg.optim, total_steps))
