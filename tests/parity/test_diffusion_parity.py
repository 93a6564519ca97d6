"""Stable-Diffusion adapters cross between PEFT, diffusers, kohya files and loraops with identical outputs.

The model is a tiny random UNet2DConditionModel + CLIP text encoder (tests/tiny.py); LoRA goes on
attention linears and on 3x3 and 1x1 convs (kohya's "LoCon" targets)."""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from loraops.lora import LoRAConfig, apply_adapter, extract, inject, merge_state_dict, read_adapter, save_adapter
from loraops.lora.diffusers_format import read_diffusers, rooted, save_diffusers
from loraops.lora.kohya import from_kohya, save_kohya, to_kohya
from tiny import tiny_clip_text, tiny_components, tiny_tokenizer, tiny_unet, tiny_vae, unet_inputs

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1", "conv2", "conv_shortcut"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
TOL = 1e-5


def _outputs(components) -> dict[str, torch.Tensor]:
    ids = torch.tensor([[1, 40, 41, 42, 2, 0], [1, 50, 51, 2, 0, 0]])
    with torch.no_grad():
        return {"unet": components["unet"](**unet_inputs()).sample,
                "text_encoder": components["text_encoder"](ids).last_hidden_state}


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _ours(use_dora: bool = False, seed: int = 7):
    """Our adapter on unet + text encoder, with non-trivial B (and DoRA magnitudes)."""
    components = tiny_components()
    cfg = LoRAConfig(r=4, alpha=8, target_modules=UNET_TARGETS + TE_TARGETS, init="random", use_dora=use_dora,
                     task_type=None)
    torch.manual_seed(seed)
    inject(components, cfg)
    with torch.no_grad():
        for name, p in components.named_parameters():
            if "magnitude" in name:
                p.mul_(1 + 0.1 * torch.randn_like(p))
    return components.eval(), extract(components, cfg)


@pytest.mark.parametrize("use_dora", [False, True])
def test_peft_unet_lora_loads_with_same_output(use_dora, tmp_path):
    torch.manual_seed(123)
    peft_unet = get_peft_model(tiny_unet(), LoraConfig(r=4, lora_alpha=8, target_modules=UNET_TARGETS,
                                                       init_lora_weights=False, use_dora=use_dora))
    with torch.no_grad():
        for name, p in peft_unet.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1 + 0.1 * torch.randn_like(p))
    peft_unet.eval().save_pretrained(tmp_path / "peft")
    ours = tiny_components()
    apply_adapter(ours, rooted(read_adapter(tmp_path / "peft")))  # PEFT's paths are the UNet's own
    with torch.no_grad():
        expected = peft_unet(**unet_inputs()).sample
        got = ours["unet"](**unet_inputs()).sample
    assert (got - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("use_dora", [False, True])
def test_loraops_adapter_loads_in_peft_with_same_output(use_dora, tmp_path):
    ours, adapter = _ours(use_dora)
    save_adapter(adapter, tmp_path / "ours")
    theirs = PeftModel.from_pretrained(tiny_components(), tmp_path / "ours").eval()
    assert _max_diff(_outputs(ours), _outputs(theirs.base_model.model)) <= TOL


def _pipeline():
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(vae=tiny_vae(), text_encoder=tiny_clip_text(), tokenizer=tiny_tokenizer(),
                                   unet=tiny_unet(), scheduler=DDPMScheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def test_loraops_adapter_loads_in_diffusers_with_same_output(tmp_path):
    ours, adapter = _ours()
    save_diffusers(adapter, tmp_path / "diffusers")
    pipe = _pipeline()
    pipe.load_lora_weights(tmp_path / "diffusers")
    theirs = torch.nn.ModuleDict({"unet": pipe.unet, "text_encoder": pipe.text_encoder})
    assert _max_diff(_outputs(ours), _outputs(theirs)) <= TOL


def test_diffusers_saved_lora_loads_with_same_output(tmp_path):
    from diffusers import StableDiffusionPipeline
    from peft import inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    pipe = _pipeline()
    torch.manual_seed(5)
    unet_cfg = LoraConfig(r=4, lora_alpha=2, target_modules=UNET_TARGETS, init_lora_weights=False)
    te_cfg = LoraConfig(r=2, lora_alpha=6, target_modules=TE_TARGETS, init_lora_weights=False)
    pipe.unet.add_adapter(unet_cfg)
    # transformers' text_encoder.add_adapter wants PEFT >= 0.22; this is what it calls
    inject_adapter_in_model(te_cfg, pipe.text_encoder)
    StableDiffusionPipeline.save_lora_weights(
        tmp_path / "d", unet_lora_layers=get_peft_model_state_dict(pipe.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
        unet_lora_adapter_metadata=unet_cfg.to_dict(), text_encoder_lora_adapter_metadata=te_cfg.to_dict())
    ours = tiny_components()
    paths = {p for p, _ in ours.named_modules()}
    apply_adapter(ours, read_diffusers(tmp_path / "d" / "pytorch_lora_weights.safetensors", paths))
    theirs = torch.nn.ModuleDict({"unet": pipe.unet, "text_encoder": pipe.text_encoder}).eval()
    assert _max_diff(_outputs(ours), _outputs(theirs)) <= TOL


def test_kohya_file_converts_both_ways_losslessly():
    _, adapter = _ours()
    paths = {p for p, _ in tiny_components().named_modules()}
    sd, _ = to_kohya(adapter)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in sd
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in sd
    assert sd["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].shape == (4, 8, 3, 3)
    back = from_kohya(sd, paths)
    assert back.modules.keys() == adapter.modules.keys()
    for path, m in adapter.modules.items():
        b = back.modules[path]
        assert torch.equal(b.A, m.A) and torch.equal(b.B, m.B) and b.kernel_size == m.kernel_size
        assert b.scale == m.scale
    again, _ = to_kohya(back)
    assert again.keys() == sd.keys() and all(torch.equal(again[k], sd[k]) for k in sd)


def test_kohya_file_loads_in_diffusers_with_same_output(tmp_path):
    """diffusers' own kohya converter reads our file into the same model: the key mapping is the community's."""
    ours, adapter = _ours()
    save_kohya(adapter, tmp_path / "lora.safetensors")
    pipe = _pipeline()
    pipe.load_lora_weights(tmp_path / "lora.safetensors")
    theirs = torch.nn.ModuleDict({"unet": pipe.unet, "text_encoder": pipe.text_encoder})
    assert _max_diff(_outputs(ours), _outputs(theirs)) <= TOL


@pytest.mark.parametrize("use_dora", [False, True])
def test_merge_into_the_unet_equals_the_unmerged_forward(use_dora):
    ours, adapter = _ours(use_dora)
    merged = tiny_components()
    merged.load_state_dict(merge_state_dict(merged.state_dict(), adapter))
    assert _max_diff(_outputs(ours), _outputs(merged)) <= TOL
    assert _max_diff(_outputs(ours), _outputs(tiny_components())) > 0.05  # the adapter does change them
