"""Rollouts on the tiny Llama: reproducible sampling, EOS and masks, padding, modes, adapters."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from bigft.models.toy import build_tiny_llama
from bigft.rl.losses import token_logprobs
from bigft.rl.rollout import (
    generate_rollout,
    generation_model,
    response_logits,
    response_values,
    rollout_inputs,
    rollout_seeds,
    sample_tokens,
)

TEXTS = [
    "Reverse the word cat.",
    "The quick brown fox jumps over the lazy dog. Numbers:",
    "Positive reviews say",
    "A reward model scores responses; the better one",
]


@pytest.fixture(scope="module")
def model(tiny_llama_dir):
    return LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer):
    return [tiny_tokenizer(t)["input_ids"] for t in TEXTS]


def rollout(model, prompts, tok, **kw):
    opts = {"max_new_tokens": 8, "eos_ids": [tok.eos_token_id], "pad_id": tok.pad_token_id}
    return generate_rollout(model, prompts, **(opts | kw))


def test_same_seeds_same_rollout_other_seeds_other_rollout(model, prompts, tiny_tokenizer):
    seeds = rollout_seeds(7, step=3, indices=range(4))
    a = rollout(model, prompts, tiny_tokenizer, temperature=1.0, seeds=seeds)
    b = rollout(model, prompts, tiny_tokenizer, temperature=1.0, seeds=seeds)
    c = rollout(
        model, prompts, tiny_tokenizer, temperature=1.0, seeds=rollout_seeds(7, 4, range(4))
    )
    assert torch.equal(a.response_ids, b.response_ids)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_seeded_rows_do_not_depend_on_their_batch(model, prompts, tiny_tokenizer):
    # What 2 ranks each sampling half of the prompts get (other padding widths, other batch)
    # is what one process sampling all of them gets.
    seeds = rollout_seeds(0, 0, range(4))
    whole = rollout(model, prompts, tiny_tokenizer, temperature=1.0, top_p=0.9, seeds=seeds)
    for part in ([0, 2], [1, 3]):
        half = rollout(
            model,
            [prompts[i] for i in part],
            tiny_tokenizer,
            temperature=1.0,
            top_p=0.9,
            seeds=[seeds[i] for i in part],
        )
        width = half.response_ids.shape[1]
        assert torch.equal(half.response_ids, whole.response_ids[part, :width])


def test_a_generator_reproduces_from_its_saved_state_and_the_global_rng_is_untouched(
    model, prompts, tiny_tokenizer
):
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    global_state = torch.get_rng_state()
    a = rollout(model, prompts, tiny_tokenizer, generator=generator)
    assert torch.equal(torch.get_rng_state(), global_state)
    generator.set_state(state)
    b = rollout(model, prompts, tiny_tokenizer, generator=generator)
    assert torch.equal(a.response_ids, b.response_ids)


def test_left_padding_gives_each_prompt_its_unpadded_greedy_response(
    model, prompts, tiny_tokenizer
):
    batch = rollout(model, prompts, tiny_tokenizer, temperature=0.0)
    assert batch.prompt_mask.sum(-1).tolist() == [len(p) for p in prompts]
    for i, prompt in enumerate(prompts):
        alone = rollout(model, [prompt], tiny_tokenizer, temperature=0.0)
        n = alone.response_ids.shape[1]
        assert torch.equal(alone.response_ids[0], batch.response_ids[i, :n])
        # And the same as transformers' own greedy generate.
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)
        assert alone.response_ids[0].tolist() == ref[0, len(prompt) :].tolist()


def unpadded_next_logits(model, prompt, response):
    """Reference: the next-token logits of prompt + response, one row, no padding, no cache."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([[*prompt, *response]])).logits[0, -1]


def test_cached_left_padded_decoding_sees_what_a_full_unpadded_forward_sees(
    model, prompts, tiny_tokenizer
):
    seen = []
    handle = model.lm_head.register_forward_hook(lambda m, i, logits: seen.append(logits[:, -1]))
    try:
        out = rollout(model, prompts, tiny_tokenizer, temperature=1.0, seeds=[1, 2, 3, 4])
    finally:
        handle.remove()
    assert len(seen) == out.response_ids.shape[1]
    for i, prompt in enumerate(prompts):
        response = out.response_ids[i].tolist()
        for t in range(int(out.response_mask[i].sum())):
            expected = unpadded_next_logits(model, prompt, response[:t])
            torch.testing.assert_close(seen[t][i], expected, atol=1e-4, rtol=1e-4)


def test_training_forward_log_probs_equal_unpadded_ones(model, prompts, tiny_tokenizer):
    out = rollout(model, prompts, tiny_tokenizer, temperature=1.0, seeds=[5, 6, 7, 8])
    logp = token_logprobs(response_logits(model, out), out.response_ids)
    for i, prompt in enumerate(prompts):
        response = out.response_ids[i].tolist()
        for t in range(int(out.response_mask[i].sum())):
            ref = torch.log_softmax(unpadded_next_logits(model, prompt, response[:t]), -1)
            torch.testing.assert_close(logp[i, t], ref[response[t]], atol=1e-4, rtol=1e-4)


class EOSAt:
    """Forward hook on lm_head: greedy decoding emits EOS in row r at step `steps[r]` (never
    for rows not listed), so masks can be checked exactly."""

    def __init__(self, eos: int, steps: dict[int, int]) -> None:
        self.eos, self.steps, self.calls = eos, steps, 0

    def __call__(self, module, inputs, logits):
        logits = logits.clone()
        logits[:, -1, self.eos] = -1e9
        for row, step in self.steps.items():
            if self.calls == step:
                logits[row, -1, self.eos] = 1e9
        self.calls += 1
        return logits


def test_eos_masks_and_padding_after_it(model, prompts, tiny_tokenizer):
    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    handle = model.lm_head.register_forward_hook(EOSAt(eos, {0: 2, 2: 0, 3: 5}))
    try:
        out = rollout(model, prompts, tiny_tokenizer, temperature=0.0, max_new_tokens=6)
    finally:
        handle.remove()
    # Row 0 emits EOS as its 3rd token, row 2 as its 1st, row 3 as its 6th (the last allowed);
    # row 1 never does and is cut off by max_new_tokens.
    assert out.response_mask.tolist() == [
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1],
    ]
    assert out.ended_with_eos.tolist() == [True, False, True, True]
    assert out.response_ids[0, 2] == eos and out.response_ids[2, 0] == eos
    assert out.response_ids[3, 5] == eos and eos not in out.response_ids[1].tolist()
    assert (out.response_ids[0, 3:] == pad).all() and (out.response_ids[2, 1:] == pad).all()
    assert out.generated_tokens == 16 and out.tokens_per_second > 0


def test_decoding_stops_once_every_row_has_ended(model, prompts, tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    handle = model.lm_head.register_forward_hook(EOSAt(eos, {0: 1, 1: 3, 2: 0, 3: 2}))
    try:
        out = rollout(model, prompts, tiny_tokenizer, temperature=0.0, max_new_tokens=50)
    finally:
        handle.remove()
    assert out.response_ids.shape[1] == 4 and out.ended_with_eos.all()
    assert out.response_mask.sum(-1).tolist() == [2, 4, 1, 3]


def test_sampling_runs_without_dropout_and_restores_training_mode(tiny_tokenizer, tmp_path):
    path = build_tiny_llama(tmp_path, tiny_tokenizer, attention_dropout=0.5)
    model = LlamaForCausalLM.from_pretrained(path)
    ids = [tiny_tokenizer(t)["input_ids"] for t in TEXTS]
    expected = rollout(model.eval(), ids, tiny_tokenizer, temperature=0.0)
    model.train()
    torch.manual_seed(0)  # dropout, if it ran, would draw from here
    got = rollout(model, ids, tiny_tokenizer, temperature=0.0)
    assert torch.equal(got.response_ids, expected.response_ids)
    assert model.training and all(m.training for m in model.modules())


def test_peft_rollouts_with_adapters_on_and_off(tiny_llama_dir, prompts, tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    base = LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()
    base_out = rollout(base, prompts, tiny_tokenizer, temperature=0.0)
    policy = get_peft_model(
        LlamaForCausalLM.from_pretrained(tiny_llama_dir),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj", "o_proj"]),
    )
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 1.0)
    tuned = rollout(policy, prompts, tiny_tokenizer, temperature=0.0)
    with policy.disable_adapter():
        reference = rollout(policy, prompts, tiny_tokenizer, temperature=0.0)
    assert torch.equal(reference.response_ids, base_out.response_ids)
    assert not torch.equal(tuned.response_ids, base_out.response_ids)


def test_training_forward_scores_exactly_the_sampled_tokens(model, prompts, tiny_tokenizer):
    out = rollout(model, prompts, tiny_tokenizer, temperature=0.0)
    logits = response_logits(model, out)
    assert logits.shape[:2] == out.response_ids.shape
    # Greedy: the token generated at each step is the argmax of the training forward's logits
    # there, left padding and all.
    mask = out.response_mask.bool()
    assert torch.equal(logits.argmax(-1)[mask], out.response_ids[mask])
    logp = token_logprobs(logits, out.response_ids)
    assert torch.isfinite(logp[mask]).all() and (logp[mask] <= 0).all()


def test_inverse_cdf_sampling_by_hand():
    # Probabilities 0.5, 0.3, 0.2 (logits are their logs): CDF 0.5, 0.8, 1.0.
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log().repeat(4, 1)
    u = torch.tensor([0.1, 0.55, 0.85, 0.999])
    assert sample_tokens(logits, u, 1.0, 1.0).tolist() == [0, 1, 2, 2]
    # top_p 0.7 keeps {0, 1} (0.5 < 0.7 ≤ 0.8), renormalised to 0.625, 0.375: CDF 0.625, 1.0.
    assert sample_tokens(logits, u, 1.0, 0.7).tolist() == [0, 0, 1, 1]
    assert sample_tokens(logits, u, 0.0, 1.0).tolist() == [0, 0, 0, 0]


def test_rollout_seeds_are_distinct_and_stable():
    seeds = rollout_seeds(1, 0, range(1000)) + rollout_seeds(1, 1, range(1000))
    assert len(set(seeds)) == 2000 and all(0 <= s < 2**63 for s in seeds)
    assert rollout_seeds(1, 0, [5]) == rollout_seeds(1, 0, [5])


def test_qlora_rollouts_run_on_the_4bit_base(tiny_llama_dir, prompts, tiny_tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig

    from bigft.models.load import keep_4bit_layout_stable

    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    base = LlamaForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=quant)
    keep_4bit_layout_stable(base)
    policy = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    out = rollout(policy, prompts, tiny_tokenizer, temperature=0.0, max_new_tokens=6)
    for i, prompt in enumerate(prompts):
        ref = policy.generate(input_ids=torch.tensor([prompt]), max_new_tokens=6, do_sample=False)
        n = int(out.response_mask[i].sum())
        assert out.response_ids[i, :n].tolist() == ref[0, len(prompt) :].tolist()[:n]


def test_values_are_read_where_the_logits_of_each_response_token_are(
    model, prompts, tiny_tokenizer, tiny_llama_dir
):
    from transformers import AutoConfig, LlamaForTokenClassification

    out = rollout(model, prompts, tiny_tokenizer, temperature=0.0, max_new_tokens=5)
    width, start = out.response_ids.shape[1], out.prompt_ids.shape[1] - 1
    config = AutoConfig.from_pretrained(tiny_llama_dir, num_labels=1)
    critic = LlamaForTokenClassification(config).eval()
    with torch.no_grad():
        full_values = critic(**rollout_inputs(out)).logits[..., 0]
        full_logits = model(**rollout_inputs(out)).logits
        # Position prompt_len - 1 + t holds the state before response token t.
        torch.testing.assert_close(
            response_values(critic, out), full_values[:, start : start + width]
        )
        torch.testing.assert_close(
            response_logits(model, out), full_logits[:, start : start + width]
        )


def test_generation_model_unwraps_and_only_zero3_needs_ranks_in_step(model):
    from types import SimpleNamespace

    class Wrapper(torch.nn.Module):  # what DDP looks like from here: the model as .module
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    for holder in (model, Wrapper(model), SimpleNamespace(module=model, engine=None)):
        with generation_model(holder) as gen:
            assert gen.module is model and not gen.stop_together
