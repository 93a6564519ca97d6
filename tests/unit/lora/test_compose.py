"""Composition is checked against the plain sum of ΔW and loop-based reference implementations."""

import pytest
import torch

from loraops.errors import AdapterMismatchError, ConfigError
from loraops.lora import LoRAConfig, apply_adapter, extract, inject
from loraops.lora.compose import compose, dare, factorize, ties
from loraops.lora.merge import lora_delta
from tiny import input_ids, tiny_llama


def _adapter(seed, r=4, targets=("q_proj", "v_proj"), fp="sha256:base"):
    torch.manual_seed(seed)
    model = tiny_llama()
    cfg = LoRAConfig(r=r, alpha=2 * r, target_modules=list(targets), init="random")
    inject(model, cfg)
    return extract(model, cfg, meta={"base_fingerprint": fp})


def _delta(adapter, path):
    m = adapter.modules[path]
    return lora_delta(m.A, m.B, m.scale)


@pytest.mark.parametrize("method", ["cat", "linear"])
def test_exact_methods_reproduce_weighted_sum(method):
    a, b = _adapter(1, r=4), _adapter(2, r=2)
    out = compose([a, b], [0.7, 0.3], method).adapter
    for path in a.modules:
        expected = 0.7 * _delta(a, path) + 0.3 * _delta(b, path)
        assert torch.allclose(_delta(out, path), expected, atol=1e-6), path


def test_cat_has_concatenated_rank():
    out = compose([_adapter(1, r=4), _adapter(2, r=2)], [1, 1], "cat").adapter
    assert all(m.r == 6 for m in out.modules.values())


def test_svd_error_equals_discarded_singular_values():
    a, b = _adapter(1), _adapter(2)
    result = compose([a, b], [1.0, 1.0], "svd", rank=3)
    err, energy = 0.0, 0.0
    for path in a.modules:
        full = _delta(a, path) + _delta(b, path)
        err += ((full - _delta(result.adapter, path)) ** 2).sum().item()
        energy += (torch.linalg.svdvals(full.double()) ** 2).sum().item()
    assert result.discarded_energy == pytest.approx(err / energy, rel=1e-4)
    assert 0 < result.discarded_energy < 1


def test_factorize_at_full_rank_is_exact():
    torch.manual_seed(0)
    d = torch.randn(6, 3) @ torch.randn(3, 5)
    A, B, lost, _ = factorize(d, None)
    assert A.shape[0] == 3 and lost == pytest.approx(0, abs=1e-8)
    assert torch.allclose(B @ A, d, atol=1e-5)


def _ties_reference(deltas, weights, density):
    n = len(deltas)
    trimmed = []
    for d, w in zip(deltas, weights):
        flat = d.reshape(-1)
        k = int(density * flat.numel())
        keep = set(flat.abs().argsort(descending=True)[:k].tolist())
        trimmed.append([w * flat[i].item() if i in keep else 0.0 for i in range(flat.numel())])
    out = []
    for i in range(len(trimmed[0])):
        vals = [trimmed[t][i] for t in range(n)]
        sign = 1.0 if sum(vals) >= 0 else -1.0
        agree = [v for v in vals if v != 0 and (v > 0) == (sign > 0)]
        out.append(sum(agree) / max(len(agree), 1))
    return torch.tensor(out).view_as(deltas[0])


def test_ties_matches_reference():
    torch.manual_seed(0)
    deltas = [torch.randn(5, 7) for _ in range(3)]
    assert torch.allclose(ties(deltas, [1.0, 0.5, 2.0], 0.4), _ties_reference(deltas, [1.0, 0.5, 2.0], 0.4),
                          atol=1e-6)


def test_dare_matches_reference_and_is_seeded():
    torch.manual_seed(0)
    deltas = [torch.randn(5, 7) for _ in range(2)]
    got = dare(deltas, [0.6, 0.4], 0.5, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    expected = torch.zeros(5, 7)
    for d, w in zip(deltas, [0.6, 0.4]):
        mask = torch.rand(d.shape, generator=g) < 0.5
        for i in range(5):
            for j in range(7):
                expected[i, j] += w * d[i, j] * mask[i, j] / 0.5
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.equal(got, dare(deltas, [0.6, 0.4], 0.5, torch.Generator().manual_seed(3)))


def test_composed_adapter_loads_and_records_lineage():
    out = compose([_adapter(1), _adapter(2)], [0.5, 0.5], "ties", density=0.3, parent_refs=["a@1", "b@2"]).adapter
    assert [p["ref"] for p in out.meta["parents"]] == ["a@1", "b@2"]
    assert out.meta["base_fingerprint"] == "sha256:base"
    model = tiny_llama()
    apply_adapter(model, out)
    assert torch.isfinite(model(input_ids=input_ids()).logits).all()


def test_different_bases_are_refused():
    with pytest.raises(AdapterMismatchError, match="different bases"):
        compose([_adapter(1), _adapter(2, fp="sha256:other")], [1, 1], "linear")


def test_different_targets_are_refused():
    with pytest.raises(AdapterMismatchError, match="different modules"):
        compose([_adapter(1), _adapter(2, targets=("q_proj",))], [1, 1], "linear")


@pytest.mark.parametrize("kw", [{"method": "mean"}, {"method": "svd", "rank": 0}, {"method": "dare", "density": 0}])
def test_bad_options_are_refused(kw):
    with pytest.raises(ConfigError):
        compose([_adapter(1), _adapter(2)], [1, 1], **kw)


def test_compose_cli_writes_a_peft_loadable_adapter(tmp_path):
    from peft import PeftModel

    from cli import assert_one_line_error, run_cli
    from loraops.lora import save_adapter
    a, b = save_adapter(_adapter(1), tmp_path / "a"), save_adapter(_adapter(2), tmp_path / "b")
    result = run_cli("compose", "--adapter", f"{a}:0.7", "--adapter", f"{b}:0.3", "--method", "svd", "--rank", "2",
                     "--out", tmp_path / "c")
    assert result.returncode == 0, result.stderr
    assert "discarded energy" in result.stdout
    peft_model = PeftModel.from_pretrained(tiny_llama(), tmp_path / "c").eval()
    ours = tiny_llama()
    from loraops.lora import read_adapter
    apply_adapter(ours, read_adapter(tmp_path / "c"))
    ids = input_ids()
    with torch.no_grad():
        assert (peft_model(input_ids=ids).logits - ours(input_ids=ids).logits).abs().max() <= 1e-5
    bad = run_cli("compose", "--adapter", a, "--adapter", b, "--method", "average", "--out", tmp_path / "d")
    assert_one_line_error(bad, "unknown compose method")
    assert not (tmp_path / "d").exists()
