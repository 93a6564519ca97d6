"""Composing registry versions by reference records the lineage when the result is pushed."""

from cli import run_cli
from loraops.lora import LoRAConfig, extract, inject, save_adapter
from loraops.models import fingerprint_module
from loraops.registry import Registry
from tiny import tiny_llama


def test_composed_registry_versions_are_linked_as_parents(tmp_path):
    fp = fingerprint_module(tiny_llama())
    with Registry() as reg:
        reg.register_base(fp, "tiny")
        for i, name in enumerate(["a", "b"]):
            model = tiny_llama()
            cfg = LoRAConfig(r=2, target_modules=["q_proj"], init="random")
            inject(model, cfg)
            reg.push(save_adapter(extract(model, cfg, meta={"base_fingerprint": fp}), tmp_path / name), name)
    result = run_cli("compose", "--adapter", "a@1:0.7", "--adapter", "b:0.3", "--method", "cat",
                     "--out", tmp_path / "blend")
    assert result.returncode == 0, result.stderr
    with Registry() as reg:
        version = reg.push(tmp_path / "blend", "blend")
        # "b" had no version in the ref: the registry resolved it (latest) and the lineage names it.
        assert [(p.name, p.version, p.weight) for p in version.parents] == [("a", 1, 0.7), ("b", 1, 0.3)]
