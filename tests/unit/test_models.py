"""Loading tokenizers and models from local directories; clear errors for unusable sources."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from bigft.config.schema import MethodConfig, ModelConfig
from bigft.errors import ConfigError
from bigft.models import load_model, load_tokenizer
from bigft.models.load import looks_local


def model_cfg(path, **overrides):
    return OmegaConf.structured(ModelConfig(name="tiny", path=str(path), **overrides))


def method_cfg(name="lora", **overrides):
    return OmegaConf.structured(MethodConfig(name=name, **overrides))


def test_tokenizer_pads_on_the_right(tiny_llama_dir):
    tok = load_tokenizer(model_cfg(tiny_llama_dir))
    assert tok.padding_side == "right"
    assert tok.pad_token == "<pad>"


def test_tokenizer_without_pad_uses_eos(tmp_path, tiny_llama_dir, caplog):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)  # a tokenizer-only directory: no config.json
    with caplog.at_level("INFO"):
        loaded = load_tokenizer(model_cfg(tiny_llama_dir, tokenizer=str(tmp_path)))
    assert loaded.pad_token == loaded.eos_token == "</s>"
    assert "EOS" in caplog.text


def test_causal_lm_loads_in_the_configured_dtype(tiny_llama_dir):
    cfg = model_cfg(tiny_llama_dir, dtype="bf16")
    model = load_model(cfg, method_cfg("full"), "causal_lm", None, load_tokenizer(cfg))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16


def test_sequence_classification_head_gets_labels_and_pad_id(tiny_llama_dir):
    cfg = model_cfg(tiny_llama_dir)
    tok = load_tokenizer(cfg)
    model = load_model(cfg, method_cfg("freeze"), "sequence_classification", 3, tok)
    assert model.score.weight.shape == (3, 64)
    assert model.config.pad_token_id == tok.pad_token_id
    ids = torch.tensor([[5, 6, 7, tok.pad_token_id]])
    assert model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long()).logits.shape == (
        1,
        3,
    )


def test_qlora_loads_a_4bit_nf4_base(tiny_llama_dir):
    import bitsandbytes as bnb

    cfg = model_cfg(tiny_llama_dir)
    method = method_cfg("qlora", compute_dtype="fp32")
    model = load_model(cfg, method, "causal_lm", None, load_tokenizer(cfg))
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, bnb.nn.Linear4bit)
    assert q_proj.weight.quant_state.quant_type == "nf4"
    assert q_proj.weight.quant_state.nested  # double quantization
    assert q_proj.compute_dtype == torch.float32
    assert isinstance(model.lm_head, torch.nn.Linear)  # the head stays in float


def test_qlora_quant_storage_follows_the_config(tiny_llama_dir):
    cfg = model_cfg(tiny_llama_dir)
    method = method_cfg("qlora", quant_storage="bf16", compute_dtype="bf16")
    model = load_model(cfg, method, "causal_lm", None, load_tokenizer(cfg))
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16


def test_8bit_base_loads_and_runs_on_cpu(tiny_llama_dir):
    import bitsandbytes as bnb

    cfg = model_cfg(tiny_llama_dir)
    model = load_model(cfg, method_cfg("qlora", bits=8), "causal_lm", None, load_tokenizer(cfg))
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear8bitLt)
    ids = torch.tensor([[5, 6, 7]])
    assert torch.isfinite(model(input_ids=ids).logits).all()


def test_gradient_checkpointing_is_enabled_non_reentrant(tiny_llama_dir):
    cfg = model_cfg(tiny_llama_dir, gradient_checkpointing=True)
    model = load_model(cfg, method_cfg("lora"), "causal_lm", None, load_tokenizer(cfg))
    assert model.is_activation_checkpointing
    # The input-require-grads hook: a frozen embedding still yields an output that needs grad.
    model.requires_grad_(False)
    assert model.get_input_embeddings()(torch.tensor([[1, 2]])).requires_grad


@pytest.mark.parametrize(
    ("path", "local"),
    [
        ("/abs/x", True),
        ("./x", True),
        ("../x", True),
        ("~/x", True),
        ("meta-llama/Llama-3.1-8B", False),
        ("gpt2", False),
    ],
)
def test_local_paths_and_hub_ids_are_told_apart(path, local):
    assert looks_local(path) is local


def test_relative_path_under_an_existing_directory_is_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert looks_local("models/llama")


def test_missing_local_directory_is_named(tmp_path, tiny_llama_dir):
    missing = tmp_path / "nowhere" / "model"
    cfg = model_cfg(missing, tokenizer=str(tiny_llama_dir))
    with pytest.raises(ConfigError, match="does not exist") as err:
        load_model(cfg, method_cfg("full"), "causal_lm", None, load_tokenizer(cfg))
    assert str(missing) in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_tokenizer(model_cfg(missing))


def test_directory_without_config_json_is_refused(tmp_path, tiny_llama_dir):
    cfg = model_cfg(tmp_path, tokenizer=str(tiny_llama_dir))
    with pytest.raises(ConfigError, match=r"config\.json"):
        load_model(cfg, method_cfg("full"), "causal_lm", None, load_tokenizer(cfg))


def test_unreachable_hub_id_says_how_to_use_a_local_directory(monkeypatch, tiny_llama_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_id = "bigft-tests/no-such-model"
    cfg = model_cfg(hub_id, tokenizer=str(tiny_llama_dir))
    with pytest.raises(ConfigError) as err:
        load_model(cfg, method_cfg("full"), "causal_lm", None, load_tokenizer(cfg))
    message = str(err.value)
    assert hub_id in message
    assert "model.path=/path/to/model" in message
    assert "config.json" in message
    with pytest.raises(ConfigError, match="no-such-model"):
        load_tokenizer(model_cfg(hub_id))


def test_local_directory_without_weights_is_a_config_error(tmp_path, tiny_llama_dir):
    (tmp_path / "config.json").write_text((tiny_llama_dir / "config.json").read_text())
    cfg = model_cfg(tmp_path, tokenizer=str(tiny_llama_dir))
    with pytest.raises(ConfigError, match="cannot load model from"):
        load_model(cfg, method_cfg("full"), "causal_lm", None, load_tokenizer(cfg))


def test_a_new_head_is_one_log_line_not_transformers_load_report(
    tiny_llama_dir, transformers_printed, caplog
):
    cfg = model_cfg(tiny_llama_dir)
    tok = load_tokenizer(cfg)
    with caplog.at_level("INFO", logger="bigft"):
        load_model(cfg, method_cfg("lora"), "sequence_classification", 2, tok)
    assert not [m for m in transformers_printed if "LOAD REPORT" in m]
    lines = [r.getMessage() for r in caplog.records if "new " in r.getMessage()]
    assert lines == [
        "new LlamaForSequenceClassification head score with 2 outputs, randomly initialised for "
        "training; the checkpoint's lm_head is not used (expected: transformers' load report of "
        "it is not shown)"
    ]


@pytest.mark.parametrize(
    ("loading", "expected"),
    [
        ({"missing_keys": ["score.weight"], "unexpected_keys": ["lm_head.weight"]}, True),
        ({"missing_keys": ["score.weight"], "unexpected_keys": []}, True),  # tied head
        ({"missing_keys": ["score.weight", "model.norm.weight"], "unexpected_keys": []}, False),
        ({"missing_keys": ["score.weight"], "unexpected_keys": ["model.extra"]}, False),
        ({"missing_keys": ["score.weight"], "mismatched_keys": [("a", (1,), (2,))]}, False),
    ],
)
def test_only_a_report_of_the_new_head_is_hidden(loading, expected):
    from bigft.models.load import _is_new_head

    assert _is_new_head(loading) is expected


def test_any_other_load_report_still_reaches_the_user(
    tmp_path, tiny_llama_dir, transformers_printed
):
    # A checkpoint without its final norm: transformers' report must be printed, as it is.
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_llama_dir.iterdir():
        if f.suffix != ".safetensors":
            (broken / f.name).write_bytes(f.read_bytes())
    weights = load_file(tiny_llama_dir / "model.safetensors")
    del weights["model.norm.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    cfg = model_cfg(broken)
    load_model(cfg, method_cfg("lora"), "sequence_classification", 2, load_tokenizer(cfg))
    (report,) = [m for m in transformers_printed if "LOAD REPORT" in m]
    assert "model.norm.weight" in report and "MISSING" in report
