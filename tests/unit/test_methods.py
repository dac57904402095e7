"""Each method trains exactly the parameters it promises, and nothing else moves."""

from __future__ import annotations

import re

import pytest
import torch
from omegaconf import OmegaConf

from bigft.config.schema import MethodConfig, ModelConfig
from bigft.errors import ConfigError
from bigft.methods import apply_method, unsupported_reason
from bigft.methods.params import (
    count_parameters,
    count_quantized,
    describe_trainable,
    load_trainable_state_dict,
    trainable_state_dict,
)
from bigft.models import load_model, load_tokenizer

CAUSAL, SEQ_CLS = "causal_lm", "sequence_classification"
NUM_LABELS = 3


def cfgs(path, method, **method_overrides):
    model_cfg = OmegaConf.structured(ModelConfig(name="tiny", path=str(path)))
    if method == "qlora":
        # fp32 compute keeps the CPU test exact enough; the quantized base is the point here.
        method_overrides.setdefault("compute_dtype", "fp32")
    return model_cfg, OmegaConf.structured(MethodConfig(name=method, r=4, **method_overrides))


def build(path, method, head=CAUSAL, **method_overrides):
    model_cfg, method_cfg = cfgs(path, method, **method_overrides)
    tok = load_tokenizer(model_cfg)
    labels = NUM_LABELS if head == SEQ_CLS else None
    model = load_model(model_cfg, method_cfg, head, labels, tok)
    return apply_method(model, method_cfg, head)


def batch(head):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 300, (2, 10), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # padding, so the attention mask is exercised
    return ids, mask


def loss_of(model, head):
    ids, mask = batch(head)
    logits = model(input_ids=ids, attention_mask=mask).logits
    if head == CAUSAL:
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1)
        )
    return torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2]))


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def train_steps(model, head, steps=2):
    """Two AdamW steps without weight decay: LoRA's B starts at zero, so A only moves in step 2."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = loss_of(model, head)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def changed_names(model, before):
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


LAST_BLOCK = r"model\.layers\.1\."
LORA = r"\.lora_(A|B)\."
CASES = {
    "full": (CAUSAL, {}, r".*"),
    "freeze0": (CAUSAL, {"train_last_n_blocks": 0}, r"lm_head\.weight$"),
    "freeze1": (CAUSAL, {"train_last_n_blocks": 1}, rf"lm_head\.weight$|^{LAST_BLOCK}"),
    "lora": (CAUSAL, {}, LORA),
    "dora": (CAUSAL, {"use_dora": True}, (LORA, r"\.lora_magnitude_vector\.")),
    "rslora": (CAUSAL, {"use_rslora": True}, LORA),
    "qlora": (CAUSAL, {}, LORA),
    "prefix": (CAUSAL, {"num_virtual_tokens": 4}, r"^prompt_encoder\."),
    "freeze0-cls": (SEQ_CLS, {}, r"^score\.weight$"),
    "freeze1-cls": (SEQ_CLS, {"train_last_n_blocks": 1}, rf"^score\.weight$|^{LAST_BLOCK}"),
    "lora-cls": (SEQ_CLS, {}, (LORA, r"score\.modules_to_save\.default\.weight$")),
    # The output layer and embeddings trained in full beside the adapters.
    "lora-head": (
        CAUSAL,
        {"modules_to_save": ["lm_head", "embed_tokens"]},
        (LORA, *(rf"{m}\.modules_to_save\.default\.weight$" for m in ("lm_head", "embed_tokens"))),
    ),
}


def test_lora_modules_to_save_trains_a_copy_of_the_head_the_reference_keeps_the_original(
    tiny_llama_dir,
):
    model = build(tiny_llama_dir, "lora", modules_to_save=["lm_head"])
    full = {n for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n}
    assert full == {"base_model.model.lm_head.modules_to_save.default.weight"}
    ids, mask = batch(CAUSAL)

    def logits():
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits

    model.eval()
    base = logits()
    model.train()
    train_steps(model, CAUSAL)
    model.eval()
    tuned = logits()
    assert not torch.allclose(tuned, base)
    with model.disable_adapter():  # what task=dpo's reference pass sees
        torch.testing.assert_close(logits(), base)
    model = model.merge_and_unload()  # bigft-export: the trained head replaces the original
    torch.testing.assert_close(logits(), tuned, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_method_trains_exactly_its_parameters(tiny_llama_dir, case):
    head, overrides, patterns = CASES[case]
    method = re.sub(r"\d|-cls|-head|^dora|^rslora", "", case) or "lora"
    model = build(tiny_llama_dir, method, head, **overrides)
    model.train()
    names = [n for n, _ in model.named_parameters()]
    patterns = (patterns,) if isinstance(patterns, str) else patterns
    # Each kind of parameter a case names must exist: a switch the method ignored (no DoRA
    # magnitudes, no trained head copy) would otherwise leave plain LoRA passing for it.
    unmatched = [p for p in patterns if not any(re.search(p, n) for n in names)]
    assert not unmatched, f"no parameter matches {unmatched}"
    expected = {n for n in names if any(re.search(p, n) for p in patterns)}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected

    before = snapshot(model)
    losses = train_steps(model, head)
    assert changed_names(model, before) == expected
    assert losses[1] != losses[0]


def test_qlora_leaves_the_4bit_base_untouched(tiny_llama_dir):
    model = build(tiny_llama_dir, "qlora")
    # Train mode, as in training: an inference forward on CPU repacks 4-bit weights in place.
    model.train()
    packed = {n: p for n, p in model.named_parameters() if type(p).__name__ == "Params4bit"}
    assert len(packed) == 14  # 7 linears × 2 blocks
    before = {n: (p.data.clone(), p.quant_state.absmax.clone()) for n, p in packed.items()}
    train_steps(model, CAUSAL)
    for name, (data, absmax) in before.items():
        assert torch.equal(packed[name].data, data), name
        assert torch.equal(packed[name].quant_state.absmax, absmax), name


def test_tied_head_trains_the_shared_embedding(tmp_path, tiny_tokenizer, caplog):
    from bigft.models.toy import build_tiny_llama

    path = build_tiny_llama(tmp_path / "tied", tiny_tokenizer, tie_word_embeddings=True)
    with caplog.at_level("WARNING"):
        model = build(path, "freeze")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert "tied" in caplog.text
    before = snapshot(model)
    train_steps(model, CAUSAL)
    assert changed_names(model, before) == {"model.embed_tokens.weight"}


def test_too_many_blocks_is_a_config_error(tiny_llama_dir):
    with pytest.raises(ConfigError, match="only 2 blocks"):
        build(tiny_llama_dir, "freeze", train_last_n_blocks=3)


def tiny_shape(model):
    c = model.config if not hasattr(model, "get_base_model") else model.get_base_model().config
    return c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers


def test_lora_counts_match_a_hand_computation(tiny_llama_dir):
    model = build(tiny_llama_dir, "lora")
    vocab, h, inter, layers = tiny_shape(model)
    kv = 32  # 2 key/value heads × head_dim 16
    # q, o: h→h; k, v: h→kv; gate, up: h→inter; down: inter→h. A LoRA pair adds r·(in + out).
    linears = [(h, h), (h, kv), (h, kv), (h, h), (h, inter), (h, inter), (inter, h)]
    base_per_block = sum(i * o for i, o in linears) + 2 * h  # + two RMSNorms
    base = 2 * vocab * h + layers * base_per_block + h  # embed + head + blocks + final norm
    lora = layers * sum(4 * (i + o) for i, o in linears)  # r = 4
    assert (vocab, h, inter, layers) == (300, 64, 128, 2)
    assert lora == 8192
    assert count_parameters(model) == (lora, base + lora)
    assert describe_trainable(model) == f"trainable 8.2K / {(base + lora) / 1e3:.1f}K (6.8%)"


def test_qlora_counts_real_weights_not_packed_bytes(tiny_llama_dir):
    qlora, lora = build(tiny_llama_dir, "qlora"), build(tiny_llama_dir, "lora")
    assert count_parameters(qlora) == count_parameters(lora)
    # Every block's linear layers are 4-bit (the head and embeddings stay in float).
    _, h, inter, layers = tiny_shape(lora)
    quantized = layers * (2 * h * h + 2 * h * 32 + 3 * h * inter)
    assert count_quantized(qlora) == {4: quantized} and count_quantized(lora) == {}
    # The line says which base it counts: the same total as LoRA's, part of it in 4 bits.
    expected = f"{describe_trainable(lora)}; frozen base weights {quantized / 1e3:.1f}K in 4-bit"
    assert describe_trainable(qlora) == expected


def test_trainable_state_round_trips_and_is_strict(tiny_llama_dir):
    model = build(tiny_llama_dir, "lora")
    train_steps(model, CAUSAL)
    state = trainable_state_dict(model)
    assert state and all(".lora_" in n for n in state)
    assert all(t.device.type == "cpu" for t in state.values())

    fresh = build(tiny_llama_dir, "lora")
    load_trainable_state_dict(fresh, state)
    assert all(torch.equal(p, state[n]) for n, p in fresh.named_parameters() if n in state)

    extra = {**state, "not.a.param": torch.zeros(1)}
    with pytest.raises(ConfigError, match=r"unexpected not\.a\.param"):
        load_trainable_state_dict(fresh, extra)
    missing = dict(list(state.items())[1:])
    with pytest.raises(ConfigError, match=re.escape(f"missing {next(iter(state))}")):
        load_trainable_state_dict(fresh, missing)


def test_unsupported_combinations_are_explained(tiny_llama_dir):
    model_cfg, prefix = cfgs(tiny_llama_dir, "prefix")
    assert unsupported_reason(prefix, CAUSAL, model_cfg) is None
    assert "classification" in unsupported_reason(prefix, SEQ_CLS, model_cfg)
    model_cfg.gradient_checkpointing = True
    assert "gradient checkpointing" in unsupported_reason(prefix, CAUSAL, model_cfg)
    for name in ("full", "freeze", "lora", "qlora"):
        assert unsupported_reason(cfgs(tiny_llama_dir, name)[1], SEQ_CLS, model_cfg) is None
    with pytest.raises(ConfigError, match="classification"):
        build(tiny_llama_dir, "prefix", SEQ_CLS)


def test_qlora_without_bitsandbytes_is_explained(tiny_llama_dir, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    model_cfg, qlora = cfgs(tiny_llama_dir, "qlora")
    assert "bitsandbytes" in unsupported_reason(qlora, CAUSAL, model_cfg)


def test_qlora_with_gradient_checkpointing_trains(tiny_llama_dir):
    model_cfg, method_cfg = cfgs(tiny_llama_dir, "qlora")
    model_cfg.gradient_checkpointing = True
    model = load_model(model_cfg, method_cfg, CAUSAL, None, load_tokenizer(model_cfg))
    model = apply_method(model, method_cfg, CAUSAL)
    assert model.get_base_model().is_activation_checkpointing
    model.train()
    before = snapshot(model)
    train_steps(model, CAUSAL)
    assert changed_names(model, before) == {
        n for n, _ in model.named_parameters() if re.search(LORA, n)
    }


def test_all_linear_cannot_be_mixed_with_names(tiny_llama_dir):
    with pytest.raises(ConfigError, match="all-linear"):
        build(tiny_llama_dir, "lora", target_modules=["all-linear", "q_proj"])


def test_named_target_modules(tiny_llama_dir):
    model = build(tiny_llama_dir, "lora", target_modules=["q_proj", "v_proj"])
    names = {
        n.split(".lora_")[0].rsplit(".", 1)[1]
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    assert names == {"q_proj", "v_proj"}


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_adapter_dtype_narrows_adapters_and_for_qlora_embeddings_and_head(tiny_llama_dir, method):
    model = build(tiny_llama_dir, method, adapter_dtype="bf16")
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in dtypes if re.search(LORA, n)}
    assert {dtypes[n] for n in trainable} == {torch.bfloat16}
    # QLoRA as the paper's code ran it: 16-bit embeddings and head, fp32 norms.
    narrowed = torch.bfloat16 if method == "qlora" else torch.float32
    assert dtypes["base_model.model.model.embed_tokens.weight"] == narrowed
    assert dtypes["base_model.model.lm_head.weight"] == narrowed
    assert {d for n, d in dtypes.items() if "norm" in n} == {torch.float32}


def test_adapters_stay_fp32_by_default(tiny_llama_dir):
    model = build(tiny_llama_dir, "qlora")
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}


def test_bf16_qlora_adapters_train_exactly_the_lora_weights(tiny_llama_dir):
    model = build(tiny_llama_dir, "qlora", adapter_dtype="bf16", compute_dtype="bf16")
    model.train()
    before = snapshot(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as trainer.precision=bf16-mixed
        losses = train_steps(model, CAUSAL)
    assert changed_names(model, before) == {
        n for n, _ in model.named_parameters() if re.search(LORA, n)
    }
    assert all(torch.isfinite(torch.tensor(loss)) for loss in losses)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.bfloat16}
