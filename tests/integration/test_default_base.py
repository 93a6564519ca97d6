"""The real default base: Gemma 3 270M from the PyPI GGUF package (slow: converts once, ~1 min)."""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from cli import run_cli
from loraops.models import DEFAULT_BASE, load_base, resolve_base

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma():
    return load_base(DEFAULT_BASE, progress=True)


def test_default_base_loads_and_generates(gemma):
    tok = gemma.tokenizer
    assert gemma.model.config.model_type == "gemma3_text" and gemma.model.config.vocab_size == 262144
    prompt = tok.apply_chat_template([{"role": "user", "content": "Name a colour."}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt.endswith("<start_of_turn>model\n")
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = gemma.model.generate(**ids, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert out.shape[1] > ids["input_ids"].shape[1] and text.strip()


def test_second_resolve_is_cached(gemma):
    info = resolve_base(DEFAULT_BASE)
    assert info.fingerprint == gemma.info.fingerprint and info.fingerprint.startswith("sha256:")


def test_peft_adapter_on_gemma_merges_and_loads_in_transformers(gemma, tmp_path):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(gemma.info.path)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False, task_type="CAUSAL_LM"))
    peft_model.save_pretrained(tmp_path / "adapter")
    result = run_cli("merge", "--base", DEFAULT_BASE, "--adapter", tmp_path / "adapter", "--out", tmp_path / "merged",
                     timeout=600)
    assert result.returncode == 0, result.stderr
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(gemma.info.path),
                                          tmp_path / "adapter").eval()
    ids = gemma.tokenizer("Invoice from Acme GmbH, total 12.50 EUR.", return_tensors="pt")
    with torch.no_grad():
        diff = (merged(**ids).logits - reference(**ids).logits).abs().max().item()
    assert diff <= 1e-3
