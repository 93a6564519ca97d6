"""The demo's whole orchestration on a tiny base: data -> curate -> train -> eval -> registry ->
server -> openai client. (`make demo` runs the same code on Gemma 3 270M.)"""

import json

from loraops.demo.run import TENANTS, DemoOptions, run
from loraops.registry import Registry
from tiny import tiny_llama, tiny_tokenizer


def test_demo_runs_end_to_end_on_a_tiny_base(tmp_path, capsys):
    base = tmp_path / "tiny-base"
    model = tiny_llama()
    model.config.max_position_embeddings = 1024  # demo e-mails are longer than the tiny default; RoPE has no table
    model.save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    workdir = tmp_path / "demo"
    run(DemoOptions(workdir=workdir, base=str(base), steps=3, batch_size=2, seq_len=256, eval_examples=4,
                    port=0, serve=False))  # the gate on, as `make demo` runs it
    out = capsys.readouterr().out
    assert "Before (base) and after (adapter)" in out and "demo finished" in out
    assert max(map(len, out.splitlines())) <= 80  # the tables fit a newcomer's 80-column terminal
    for t in TENANTS:
        assert json.loads((workdir / "data" / t.task / "report.json").read_text())["kept"] > 0
    with Registry(home=workdir / "home") as registry:
        production = registry.production_versions()
        assert set(production) == {t.adapter for t in TENANTS}
        assert all(registry.resolve(t.adapter).eval_results for t in TENANTS)
        # 3 steps on a random model gain nothing: the gate refuses, and the demo overrides it on the record
        forced = {e.target: e for e in registry.audit() if e.action == "force-promote"}
    assert set(forced) == {f"{t.adapter}@1" for t in TENANTS}
    assert all(e.details["gate"]["ok"] is False and e.reason for e in forced.values())
    assert out.count("gate refused") == len(TENANTS)
    results = json.loads((workdir / "results.json").read_text())
    assert set(results["tenants"]) == {t.adapter for t in TENANTS}
    for scores in results["tenants"].values():
        assert {"domain_base", "domain_adapted", "domain_constrained", "forgetting", "recipe"} <= set(scores)
        assert scores["domain_adapted"]["examples"] == scores["domain_constrained"]["examples"] == 4
    assert results["seconds"]["total"] > 0 and "train acme-invoices" in results["seconds"]
