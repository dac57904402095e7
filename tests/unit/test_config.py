"""Every config composes; mistakes fail at start-up naming the key and the allowed values."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from bigft.config import CONF_DIR, compose_config
from bigft.config.validate import validate
from bigft.errors import ConfigError

GROUPS = [
    "model",
    "method",
    "task",
    "data",
    "optim",
    "trainer",
    "distributed",
    "launcher",
    "logger",
]
# Options whose required values (???) a user must fill in.
REQUIRED = {
    "model/local": ["model.path=/models/x"],
    "data/local": ["data.train=train.jsonl"],
    "task/classify": ["task.labels=[neg,pos]"],
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("choice", [f"{g}/{o}" for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_resolves(choice):
    group, option = choice.split("/")
    cfg = compose_config([f"{group}={option}", *REQUIRED.get(choice, [])])
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert resolved[group]


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(experiment):
    cfg = compose_config([f"experiment={experiment}"])
    assert cfg.name


def test_default_is_the_demo_and_run_dir_is_named_after_the_run():
    cfg = compose_config([])
    assert (cfg.model.name, cfg.method.name, cfg.task.name) == ("demo", "lora", "sft")
    assert cfg.output_dir == "outputs/demo-lora-sft"
    assert compose_config(["name=mine"]).output_dir == "outputs/mine"


def test_misspelled_key_is_refused_with_its_name():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["method.rank=8"])
    assert "rank" in str(err.value.__cause__ or err.value)
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["trainer.max_step=8"])
    assert "max_step" in str(err.value.__cause__)
    # Hydra's hint "use +trainer.max_step=8" gets past composition; validation still catches it.
    with pytest.raises(ConfigError, match=r"unknown config key 'trainer\.max_step'"):
        validate(compose_config(["+trainer.max_step=8"]))


def test_wrong_type_and_unknown_choice_list_what_is_allowed():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["trainer.max_steps=many"])
    assert isinstance(err.value.__cause__, ValidationError)
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["method.name=adapter"])
    assert "expected one of [full, freeze, lora, qlora, prefix]" in str(err.value.__cause__)
    with pytest.raises(ConfigCompositionException, match="method/sparse"):
        compose_config(["method=sparse"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.micro_batch_size=0", "trainer.micro_batch_size=0 is not allowed: expected >= 1"),
        ("optim.lr=-1", "optim.lr=-1.0 is not allowed"),
        ("method.bits=3", "method.bits=3 is not allowed: expected 4 or 8"),
        ("trainer.resume=/no/such/checkpoint", "trainer.resume='/no/such/checkpoint'"),
        ("launcher.nproc_per_node=2", "launcher.nproc_per_node=2"),
        ("method=full method.adapter_dtype=bf16", "method.adapter_dtype=bf16 with method=full"),
        ("method=freeze method.adapter_dtype=bf16", "applies to method=lora and method=qlora"),
        (
            "method=qlora method.adapter_dtype=bf16",
            "method.adapter_dtype=bf16 with method=qlora needs autocast",
        ),
        (
            "experiment=llama65b_qlora distributed=zero3 model.dtype=bf16 "
            "method.quant_storage=bf16",
            "method.adapter_dtype=bf16 with distributed=zero3",
        ),
    ],
)
def test_impossible_values_are_refused_before_loading_anything(override, message):
    with pytest.raises(ConfigError) as err:
        validate(compose_config(override.split()))
    assert message in str(err.value)


def test_adapter_dtype_with_lora_or_autocast_qlora_is_accepted():
    validate(compose_config(["method=lora", "method.adapter_dtype=fp16"]))
    validate(compose_config(["method=qlora", "method.adapter_dtype=fp32"]))
    validate(compose_config(["experiment=llama65b_qlora", "data.train=train.jsonl"]))
