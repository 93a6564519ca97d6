"""Diffusion adapters through the CLI on a tiny SD pipeline directory: convert (kohya <-> loraops),
merge into a pipeline, compose (conv weights flattened), registry push/promote/rollback."""

import pytest
import torch

from cli import assert_one_line_error, run_cli
from loraops.lora import LoRAConfig, apply_adapter, extract, inject, merge_state_dict, read_adapter, save_adapter
from loraops.lora.kohya import save_kohya
from loraops.models.diffusion import load_components, probe_outputs
from loraops.models.fingerprint import fingerprint_dir, fingerprint_module
from tiny import save_tiny_sd, tiny_tokenizer

TARGETS = ["to_q", "to_v", "conv1", "conv2", "q_proj"]


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return save_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd")


def _adapter(sd_dir, seed: int, rank: int = 2):
    components = load_components(sd_dir)
    cfg = LoRAConfig(r=rank, alpha=rank, target_modules=TARGETS, init="random", task_type=None)
    torch.manual_seed(seed)
    inject(components, cfg)
    return extract(components, cfg, meta={"base_fingerprint": fingerprint_dir(sd_dir), "base_name": "tiny-sd"})


def _outputs_with(sd_dir, *adapters):
    components = load_components(sd_dir)
    state = components.state_dict()
    for a in adapters:
        state = merge_state_dict(state, a)
    components.load_state_dict(state)
    return probe_outputs(components, tiny_tokenizer())


def _diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_pipeline_fingerprint_is_over_the_components_and_matches_memory(sd_dir):
    assert fingerprint_dir(sd_dir) == fingerprint_module(load_components(sd_dir))


def test_kohya_file_converts_to_an_adapter_and_back(sd_dir, tmp_path):
    adapter = _adapter(sd_dir, seed=1)
    adapter.meta = {}  # a file from elsewhere: no binding
    save_kohya(adapter, tmp_path / "civitai.safetensors")
    r = run_cli("convert", tmp_path / "civitai.safetensors", "--base", sd_dir, "--out", tmp_path / "ours")
    assert r.returncode == 0, r.stderr
    ours = read_adapter(tmp_path / "ours")
    assert ours.base_fingerprint == fingerprint_dir(sd_dir)  # bound on import
    for path, m in adapter.modules.items():
        assert torch.equal(ours.modules[path].A, m.A) and torch.equal(ours.modules[path].B, m.B)
    from safetensors.torch import load_file

    from loraops.lora.convert import write
    from loraops.models.diffusion import import_adapter

    write(import_adapter(tmp_path / "ours", str(sd_dir)), tmp_path / "back.safetensors", "kohya")

    first, back = load_file(tmp_path / "civitai.safetensors"), load_file(tmp_path / "back.safetensors")
    assert first.keys() == back.keys() and all(torch.equal(first[k], back[k]) for k in first)


def test_pickle_lora_is_a_one_line_error(sd_dir, tmp_path):
    (tmp_path / "lora.ckpt").write_bytes(b"\x80\x04")
    assert_one_line_error(run_cli("convert", tmp_path / "lora.ckpt", "--base", sd_dir, "--out", tmp_path / "o"),
                          "pickle")


def test_merge_writes_a_pipeline_equal_to_the_adapter(sd_dir, tmp_path):
    adapter = _adapter(sd_dir, seed=2)
    save_adapter(adapter, tmp_path / "a")
    r = run_cli("merge", "--base", sd_dir, "--adapter", tmp_path / "a", "--out", tmp_path / "merged")
    assert r.returncode == 0, r.stderr
    merged = tmp_path / "merged"
    assert (merged / "vae").is_dir() and (merged / "scheduler").is_dir() and (merged / "model_index.json").exists()
    got = probe_outputs(load_components(merged), tiny_tokenizer())
    assert _diff(got, _outputs_with(sd_dir, adapter)) <= 1e-5
    assert _diff(got, _outputs_with(sd_dir)) > 1e-3


def test_compose_blends_conv_adapters(sd_dir, tmp_path):
    a, b = _adapter(sd_dir, seed=3), _adapter(sd_dir, seed=4)
    save_adapter(a, tmp_path / "a")
    save_adapter(b, tmp_path / "b")
    r = run_cli("compose", "--adapter", f"{tmp_path / 'a'}:0.5", "--adapter", f"{tmp_path / 'b'}:0.5",
                "--method", "cat", "--out", tmp_path / "cat")
    assert r.returncode == 0, r.stderr
    cat = read_adapter(tmp_path / "cat")
    conv = next(p for p in cat.modules if p.endswith("conv1"))
    assert cat.modules[conv].kernel_size == (3, 3) and cat.modules[conv].r == 4
    half = lambda x: extract_scaled(x, 0.5)  # noqa: E731
    assert _diff(_outputs_with(sd_dir, cat), _outputs_with(sd_dir, half(a), half(b))) <= 1e-5
    from loraops.lora.compose import compose

    for method in ("svd", "ties", "dare"):
        result = compose([a, b], [0.5, 0.5], method, rank=2)
        components = load_components(sd_dir)
        apply_adapter(components, result.adapter)  # fits the base: conv kernels folded back
        assert result.adapter.modules[conv].kernel_size == (3, 3) and 0 <= result.discarded_energy < 1


def extract_scaled(adapter, weight):
    from dataclasses import replace

    return replace(adapter, modules={p: replace(m, scale=m.scale * weight) for p, m in adapter.modules.items()})


def test_registry_push_promote_and_rollback(sd_dir, tmp_path):
    from loraops.errors import ConfigError
    from loraops.evals import PromotionGate
    from loraops.registry import Registry

    for seed in (5, 6):
        save_adapter(_adapter(sd_dir, seed=seed), tmp_path / f"v{seed}")
    with Registry() as reg:
        v1 = reg.push(tmp_path / "v5", "style", register_base=True)
        reg.push(tmp_path / "v6", "style")
        assert v1.base_fingerprint == fingerprint_dir(sd_dir)
        with pytest.raises(ConfigError, match="no stored evaluation"):  # no diffusion eval yet: the gate cannot pass
            reg.promote("style", 1, gate=PromotionGate())
        for version in (1, 2):
            reg.promote("style", version, reason="visual review", force=True, gate=lambda *_: (False, "no eval"))
        assert reg.rollback("style").version == 1
        assert reg.resolve("style@production").version == 1
        assert [e.action for e in reg.show("style").history][-1] == "rollback"
