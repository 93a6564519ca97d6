"""`loraops merge` end to end: a PEFT-made adapter merged by the CLI loads in plain transformers."""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from cli import assert_one_line_error, run_cli
from loraops.lora import LoRAConfig, extract, inject, save_adapter
from tiny import BUILDERS, input_ids, save_tiny


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("base") / "tiny-llama")


def _peft_adapter(arch, out, **kw):
    torch.manual_seed(5)
    cfg = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **kw)
    model = get_peft_model(BUILDERS[arch](), cfg)
    model.save_pretrained(out)
    return out


def test_peft_adapter_merges_into_a_plain_transformers_model(base_dir, tmp_path):
    adapter = _peft_adapter("llama", tmp_path / "peft", target_modules="all-linear", task_type="CAUSAL_LM")
    result = run_cli("merge", "--base", base_dir, "--adapter", adapter, "--out", tmp_path / "merged")
    assert result.returncode == 0, result.stderr
    assert "max |logits merged - unmerged|" in result.stdout
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    reference = PeftModel.from_pretrained(BUILDERS["llama"](), adapter).eval()
    ids = input_ids()
    with torch.no_grad():
        assert (merged(input_ids=ids).logits - reference(input_ids=ids).logits).abs().max() <= 1e-5
    assert json.loads((tmp_path / "merged" / "loraops.json").read_text())["max_abs_logit_diff"] <= 1e-3


def test_dora_seq_cls_adapter_merges(tmp_path):
    base = save_tiny(tmp_path / "bert", "bert")
    adapter = _peft_adapter("bert", tmp_path / "peft", target_modules=["query", "value"], use_dora=True,
                            task_type="SEQ_CLS")
    result = run_cli("merge", "--base", base, "--adapter", adapter, "--out", tmp_path / "merged")
    assert result.returncode == 0, result.stderr
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    reference = PeftModel.from_pretrained(BUILDERS["bert"](), adapter).eval()
    ids = input_ids()
    with torch.no_grad():
        assert (merged(input_ids=ids).logits - reference(input_ids=ids).logits).abs().max() <= 1e-5


def _our_adapter(out, meta):
    model = BUILDERS["llama"]()
    cfg = LoRAConfig(r=2, target_modules=["q_proj"], init="random")
    inject(model, cfg)
    return save_adapter(extract(model, cfg, meta=meta), out)


def test_wrong_base_is_a_one_line_error_and_writes_nothing(base_dir, tmp_path):
    adapter = _our_adapter(tmp_path / "a", {"base_fingerprint": "sha256:feedfacefeedface", "base_name": "gemma"})
    result = run_cli("merge", "--base", base_dir, "--adapter", adapter, "--out", tmp_path / "merged")
    assert_one_line_error(result, "gemma (feedfacefeed)", "--force")
    assert not (tmp_path / "merged").exists()
    forced = run_cli("merge", "--base", base_dir, "--adapter", adapter, "--out", tmp_path / "merged", "--force")
    assert forced.returncode == 0, forced.stderr


@pytest.mark.parametrize("case", ["missing_adapter", "missing_base", "corrupt_weights", "pickle"])
def test_bad_input_is_a_one_line_error(case, base_dir, tmp_path):
    adapter = _our_adapter(tmp_path / "a", {})
    base = base_dir
    if case == "missing_adapter":
        adapter = tmp_path / "nope"
    elif case == "missing_base":
        base = tmp_path / "no-base"
    elif case == "corrupt_weights":
        (adapter / "adapter_model.safetensors").write_bytes(b"\xff" * 64)
    elif case == "pickle":
        (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    result = run_cli("merge", "--base", base, "--adapter", adapter, "--out", tmp_path / "merged")
    assert_one_line_error(result)
    assert not (tmp_path / "merged").exists()


def test_unwritable_output_is_a_one_line_error(base_dir, tmp_path):
    adapter = _our_adapter(tmp_path / "a", {})
    (tmp_path / "file").write_text("not a directory")
    result = run_cli("merge", "--base", base_dir, "--adapter", adapter, "--out", tmp_path / "file" / "merged")
    assert_one_line_error(result)
