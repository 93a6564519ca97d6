"""`train --quantize int8`: LoRA in fp32 over a frozen int8 base, giving an ordinary fp32-base adapter."""

import json
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import loraops
from loraops.errors import ConfigError
from loraops.lora import LoRALinear, apply_adapter, read_adapter
from loraops.models import load_base
from loraops.models.quantize import Int8Linear
from loraops.train import TrainConfig, run


def config(base, data, out, **kw) -> TrainConfig:
    opts = dict(base=str(base), data=str(data), out=str(out), rank=4, max_steps=10, batch_size=4, seq_len=64,
                lr=1e-2, warmup_steps=2, save_every=100, eval_every=100, targets="q_proj,v_proj",
                quantize="int8", progress=False)
    return TrainConfig(**{**opts, **kw})


def losses(out) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_int8_input_grad_matches_the_fp32_reference_with_the_dequantized_weight():
    torch.manual_seed(0)
    q = Int8Linear(nn.Linear(64, 48))
    x = torch.randn(3, 5, 64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    g = torch.randn(3, 5, 48)
    q(x).backward(g)
    F.linear(x_ref, q.dequantize_weight(), q.bias).backward(g)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)


def test_weight_only_int8_is_the_fp32_linear_with_the_dequantized_weight():
    torch.manual_seed(0)
    q = Int8Linear(nn.Linear(64, 48), weight_only=True)
    x = torch.randn(3, 5, 64)
    assert torch.allclose(q(x), F.linear(x, q.dequantize_weight(), q.bias), atol=1e-5)


def test_lora_grads_flow_through_a_later_int8_layer_as_through_its_fp32_twin():
    # LoRA -> int8 layer: the LoRA grads need dL/dx of the int8 layer, which must be the fp32 one's.
    torch.manual_seed(0)
    first, second = Int8Linear(nn.Linear(32, 32)), Int8Linear(nn.Linear(32, 16))
    twin = nn.Linear(32, 16).requires_grad_(False)
    with torch.no_grad():
        twin.weight.copy_(second.dequantize_weight())
        twin.bias.copy_(second.bias)
    lora = LoRALinear(first, r=4, scale=2.0, init="random")
    x, g = torch.randn(6, 32), torch.randn(6, 16)
    second(lora(x)).backward(g)
    got = (lora.lora_A.grad.clone(), lora.lora_B.grad.clone())
    lora.zero_grad()
    twin(lora(x)).backward(g)
    assert torch.allclose(got[0], lora.lora_A.grad, atol=1e-5) and torch.allclose(got[1], lora.lora_B.grad, atol=1e-5)


def test_int8_training_lowers_the_loss_and_gives_an_fp32_base_adapter(tiny_base, data_file, tmp_path):
    result = run(config(tiny_base, data_file, tmp_path / "run"))
    curve = losses(tmp_path / "run")
    assert len(curve) == 10 and curve[-1] < curve[0]

    adapter = read_adapter(result.adapter_dir)
    assert adapter.meta["hyperparameters"]["quantize"] == "int8"
    assert adapter.meta["base_fingerprint"] == loraops.models.resolve_base(str(tiny_base)).fingerprint
    tensors = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert tensors and all(t.dtype == torch.float32 for t in tensors.values())
    # every LoRA trained, also layer 0's, whose gradient comes back through layer 1's int8 linears
    assert all(m.B.abs().sum() > 0 for m in adapter.modules.values())

    base = load_base(str(tiny_base))
    ids = torch.tensor([[1, 50, 60, 70, 80]])
    with torch.no_grad():
        plain = base.model(ids).logits
        apply_adapter(base.model, adapter)
        adapted = base.model(ids).logits
    assert not any(isinstance(m, Int8Linear) for m in base.model.modules())
    assert not torch.allclose(plain, adapted, atol=1e-4)


def test_resume_refuses_to_mix_int8_and_fp32(tiny_base, data_file, tmp_path):
    run(config(tiny_base, data_file, tmp_path / "run", max_steps=3, save_every=2))
    with pytest.raises(ConfigError, match="quantize"):
        run(config(tiny_base, data_file, tmp_path / "run", max_steps=3, save_every=2, quantize=None, resume=True))


def test_unknown_quantize_value_is_refused():
    with pytest.raises(ConfigError, match="quantize must be one of int8"):
        config("b", "d", "o", quantize="int4")


def test_bad_quantize_option_is_a_one_line_cli_error(tmp_path, monkeypatch, capsys):
    # in-process (like tests/integration/test_train_cli.py): a subprocess would spend seconds importing torch
    from loraops.cli import main

    monkeypatch.setattr(sys, "argv", ["loraops", "train", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                                      "--quantize", "nf4"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code != 0 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error:") and "quantize" in err and "'nf4'" in err, err
