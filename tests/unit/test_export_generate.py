"""Final outputs reload without bigft; merged adapters equal unmerged ones; generation runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from bigft.config.schema import MethodConfig, ModelConfig, TaskConfig
from bigft.errors import ConfigError, DataError
from bigft.export import export_merged
from bigft.generate import GenerateConfig, generate, read_prompts, read_requests
from bigft.methods import apply_method
from bigft.models import load_model, load_tokenizer
from bigft.models.decode import _forward_loop
from bigft.outputs import OUTPUT_FILE, load_output, save_final

CAUSAL, SEQ_CLS = "causal_lm", "sequence_classification"
IDS = torch.tensor([[5, 17, 42, 99, 7, 250, 3, 12], [9, 8, 7, 6, 5, 4, 0, 0]])
MASK = (IDS != 0).long()


def trained(path, method, head=CAUSAL, **overrides):
    """A model after `apply_method`, with adapters perturbed so that they change the outputs."""
    model_cfg = OmegaConf.structured(ModelConfig(name="tiny", path=str(path)))
    if method == "qlora":
        overrides.setdefault("compute_dtype", "fp32")
    method_cfg = OmegaConf.structured(MethodConfig(name=method, r=4, dropout=0.0, **overrides))
    tok = load_tokenizer(model_cfg)
    model = load_model(model_cfg, method_cfg, head, 3 if head == SEQ_CLS else None, tok)
    model = apply_method(model, method_cfg, head)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            # LoRA's B starts at zero (a no-op adapter); a merge test must be able to fail.
            if param.requires_grad and (".lora_B." in name or method in ("full", "freeze")):
                param.add_(0.05 * torch.randn(param.shape, generator=gen))
    return model.eval(), tok


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).logits


def save(model, tok, run_dir, method, base):
    return save_final(model, tok, run_dir / "model", method=method, base_path=str(base))


def test_lora_output_reloads_with_plain_peft(tmp_path, tiny_llama_dir):
    model, tok = trained(tiny_llama_dir, "lora")
    out = save(model, tok, tmp_path, "lora", tiny_llama_dir)
    assert out == tmp_path / "model"
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()
    meta = json.loads((out / OUTPUT_FILE).read_text())
    assert meta["kind"] == "adapter" and meta["method"] == "lora" and meta["head"] == CAUSAL
    assert meta["base"] == str(tiny_llama_dir.resolve())

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    base_logits = logits(base)
    reloaded = PeftModel.from_pretrained(base, out).eval()  # injects the adapter into `base`
    assert torch.equal(logits(reloaded), logits(model))
    assert not torch.allclose(base_logits, logits(model))  # the adapter does something


def test_freeze_output_is_a_plain_hf_model(tmp_path, tiny_llama_dir):
    model, tok = trained(tiny_llama_dir, "freeze", train_last_n_blocks=1)
    out = save(model, tok, tmp_path, "freeze", tiny_llama_dir)
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / OUTPUT_FILE).read_text())["kind"] == "model"
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.equal(logits(reloaded), logits(model))


def test_classifier_adapter_saves_its_new_head(tmp_path, tiny_llama_dir):
    model, tok = trained(tiny_llama_dir, "lora", SEQ_CLS)
    out = save(model, tok, tmp_path, "lora", tiny_llama_dir)
    meta = json.loads((out / OUTPUT_FILE).read_text())
    assert meta["head"] == SEQ_CLS and meta["num_labels"] == 3
    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_llama_dir, num_labels=3, pad_token_id=tok.pad_token_id
    )
    reloaded = PeftModel.from_pretrained(base, out).eval()
    assert torch.equal(logits(reloaded), logits(model))
    bigft_loaded, _ = load_output(out)
    assert torch.equal(logits(bigft_loaded), logits(model))


def test_prefix_output_reloads(tmp_path, tiny_llama_dir):
    model, tok = trained(tiny_llama_dir, "prefix", num_virtual_tokens=4)
    out = save(model, tok, tmp_path, "prefix", tiny_llama_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    reloaded = PeftModel.from_pretrained(base, out).eval()
    assert torch.equal(logits(reloaded), logits(model))


def test_save_replaces_an_existing_output_atomically(tmp_path, tiny_llama_dir):
    model, tok = trained(tiny_llama_dir, "lora")
    save(model, tok, tmp_path, "lora", tiny_llama_dir)
    (tmp_path / "model" / "stale.txt").write_text("from an older save")
    save(model, tok, tmp_path, "lora", tiny_llama_dir)
    assert not (tmp_path / "model" / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or old dirs left


def test_merged_lora_equals_the_adapter(tmp_path, tiny_llama_dir):
    model, tok = trained(tiny_llama_dir, "lora", use_rslora=True)
    save(model, tok, tmp_path, "lora", tiny_llama_dir)
    out = export_merged(tmp_path, tmp_path / "merged", "fp32")
    assert out == tmp_path / "merged"
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(merged).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(logits(merged), logits(model), atol=1e-5, rtol=0)


@pytest.mark.parametrize("bits", [4, 8])
def test_merged_qlora_equals_the_adapter_on_the_quantized_base(tmp_path, tiny_llama_dir, bits):
    model, tok = trained(tiny_llama_dir, "qlora", bits=bits)
    save(model, tok, tmp_path, "qlora", tiny_llama_dir)
    meta = json.loads((tmp_path / "model" / OUTPUT_FILE).read_text())
    assert meta["quantization"][f"load_in_{bits}bit"] is True
    out = export_merged(tmp_path, tmp_path / "merged", "fp32")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    # bitsandbytes' standard 4-bit forward (the one training runs) dequantizes exactly as the
    # merge does; on AVX512-BF16 CPUs its inference-only kernel (eval + no grad) rounds a little.
    model.train()  # dropout is 0: train mode only selects the standard kernel
    expected = logits(model)
    torch.testing.assert_close(logits(merged), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(merged), logits(model.eval()), atol=2e-2, rtol=0)
    if bits == 8:
        return
    # Merging into the original (never quantized) weights instead would be visibly off.
    naive = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    naive = PeftModel.from_pretrained(naive, tmp_path / "model")
    assert (logits(naive.merge_and_unload()) - expected).abs().max() > 1e-2


def test_prefix_and_full_outputs_cannot_be_merged(tmp_path, tiny_llama_dir):
    model, tok = trained(tiny_llama_dir, "prefix", num_virtual_tokens=4)
    save(model, tok, tmp_path / "p", "prefix", tiny_llama_dir)
    with pytest.raises(ConfigError, match="cannot be merged"):
        export_merged(tmp_path / "p", tmp_path / "p" / "merged")
    model, tok = trained(tiny_llama_dir, "full")
    save(model, tok, tmp_path / "f", "full", tiny_llama_dir)
    with pytest.raises(ConfigError, match="nothing to merge"):
        export_merged(tmp_path / "f", tmp_path / "f" / "merged")
    with pytest.raises(ConfigError, match=r"no model/bigft_output\.json"):
        export_merged(tmp_path, tmp_path / "merged")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_llama_dir):
    run = tmp_path_factory.mktemp("lora_run")
    model, tok = trained(tiny_llama_dir, "lora")
    save(model, tok, run, "lora", tiny_llama_dir)
    return run


def test_generate_returns_completions(lora_run):
    out = generate(lora_run, ["The quick brown", "Numbers:"], max_new_tokens=6)
    assert len(out) == 2 and all(isinstance(text, str) and text for text in out)
    assert generate(lora_run, ["The quick brown"], max_new_tokens=6) == out[:1]  # greedy
    sampled = generate(lora_run, ["The quick brown"], max_new_tokens=6, temperature=1.0, seed=3)
    assert isinstance(sampled[0], str)


def test_generate_from_merged_matches_the_adapter(lora_run):
    with pytest.raises(ConfigError, match="bigft-export"):
        generate(lora_run, ["x"], merged=True)
    export_merged(lora_run, lora_run / "merged", "fp32")
    prompts = ["The quick brown", "Instruction: reverse"]
    assert generate(lora_run, prompts, merged=True, max_new_tokens=8) == generate(
        lora_run, prompts, max_new_tokens=8
    )


def test_forward_loop_decodes_like_generate(lora_run):
    """The cache-free loop bigft uses for prefix models agrees with model.generate."""
    model, tok = load_output(lora_run / "model")
    ids = tok("The quick brown", return_tensors="pt")["input_ids"]
    looped = _forward_loop(model, ids, 8, None, temperature=0.0, top_p=1.0)
    generated = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False, eos_token_id=None)
    assert torch.equal(looped, generated[0, ids.shape[1] :])


def test_generate_keeps_the_prefix(tmp_path, tiny_llama_dir):
    model, tok = trained(tiny_llama_dir, "prefix", num_virtual_tokens=4)
    save(model, tok, tmp_path, "prefix", tiny_llama_dir)
    ids = tok("The quick brown", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model(input_ids=ids).logits[0, -1].argmax()
    first = generate(tmp_path, ["The quick brown"], max_new_tokens=1)[0]
    assert first == tok.decode([int(expected)], skip_special_tokens=True)


def test_read_prompts(tmp_path):
    assert read_prompts("hi", None) == ["hi"]
    text = tmp_path / "p.txt"
    text.write_text("one\n\ntwo\n")
    assert read_prompts(None, str(text)) == ["one", "two"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    assert read_prompts(None, str(jsonl)) == ["a", "b"]
    jsonl.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(DataError, match=r"p\.jsonl:2"):
        read_prompts(None, str(jsonl))
    with pytest.raises(ConfigError, match="exactly one"):
        read_prompts("hi", str(text))


def run_cli(module, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_cli_errors_are_one_line_and_exit_2(tmp_path):
    proc = run_cli("bigft.export", f"run={tmp_path / 'none'}")
    assert proc.returncode == 2, proc.stderr
    assert "bigft: error: run=" in proc.stderr and "Traceback" not in proc.stderr


def test_generate_cli_prints_completions(lora_run):
    proc = run_cli("bigft.generate", f"run={lora_run}", "prompt=The quick", "max_new_tokens=4")
    assert proc.returncode == 0, proc.stderr
    assert "### prompt\nThe quick\n### completion\n" in proc.stdout


def _with_task(run, **task):
    """A run directory's config.yaml, as training writes it (only the task matters here)."""
    (run / "config.yaml").write_text(OmegaConf.to_yaml({"task": {"name": "sft", **task}}))
    return run


def test_instruction_is_formatted_with_the_runs_own_template(lora_run):
    run = _with_task(lora_run, prompt_template="Q: {instruction}\nA:")
    shown = []
    out = generate(run, [{"instruction": "reverse the word cat"}], max_new_tokens=6, shown=shown)
    assert shown == ["Q: reverse the word cat\nA:"]
    assert out == generate(run, ["Q: reverse the word cat\nA:"], max_new_tokens=6)
    shown.clear()
    generate(run, [{"instruction": "reverse", "input": "cat"}], max_new_tokens=1, shown=shown)
    default = TaskConfig().prompt_template_with_input  # the run's config left it at the default
    assert shown == [default.format(instruction="reverse", input="cat")]


def test_messages_are_formatted_as_the_run_formatted_chats(lora_run):
    run = _with_task(lora_run)
    shown = []
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    generate(run, [{"messages": chat}], max_new_tokens=1, shown=shown)
    # The tiny tokenizer has no chat template: bigft's plain chat format, up to the answer.
    assert shown == ["<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"]
    with pytest.raises(DataError, match="ends with an assistant turn"):
        generate(run, [{"messages": [*chat, {"role": "assistant", "content": "x"}]}])


def test_formatting_needs_the_runs_sft_config(tmp_path, lora_run):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model").symlink_to(lora_run / "model")
    with pytest.raises(ConfigError, match=r"has no config\.yaml"):
        generate(bare, [{"instruction": "x"}])
    (bare / "config.yaml").write_text("task:\n  name: lm\n")
    with pytest.raises(ConfigError, match="trained with task=lm"):
        generate(bare, [{"instruction": "x"}])
    assert generate(bare, ["raw text needs no config"], max_new_tokens=1)
    # An RL (or dpo) run formats its prompts as sft does: its own template, as it trained.
    (bare / "config.yaml").write_text(
        "task:\n  name: grpo\n  prompt_template: 'Q: {instruction} A:'\n"
    )
    shown = []
    generate(bare, [{"instruction": "x"}], max_new_tokens=1, shown=shown)
    assert shown == ["Q: x A:"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({}, "give exactly one of"),
        ({"prompt": "a", "instruction": "b"}, "(got prompt and instruction)"),
        ({"prompt": "a", "input": "b"}, 'input="..." goes with instruction'),
    ],
)
def test_exactly_one_request_kind(overrides, message):
    cfg = OmegaConf.merge(OmegaConf.structured(GenerateConfig(run="r")), overrides)
    with pytest.raises(ConfigError) as err:
        read_requests(cfg)
    assert message in str(err.value)


def test_generate_cli_formats_an_instruction_and_messages(lora_run):
    run = _with_task(lora_run)
    proc = run_cli("bigft.generate", f"run={run}", "instruction=Name a fruit.", "max_new_tokens=2")
    assert proc.returncode == 0, proc.stderr
    assert "### prompt\n### Instruction:\nName a fruit.\n\n### Response:\n\n### completion\n" in (
        proc.stdout
    )
    chat = 'messages=[{role: user, content: "Name a fruit, please."}]'
    proc = run_cli("bigft.generate", f"run={run}", chat, "max_new_tokens=2")
    assert proc.returncode == 0, proc.stderr
    assert "<|user|>\nName a fruit, please.\n<|assistant|>\n" in proc.stdout
