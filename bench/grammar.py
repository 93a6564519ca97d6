"""Per-token cost of constrained decoding vs one decode step of the base, in the same run.

Measures llguidance (what loraops uses) and, if installed, xgrammar, on the default base's
tokenizer, walking a fixed JSON answer token by token (mask + advance), and one greedy decode
step of the model with a KV cache at batch 1. "llguidance, budget" is what the server runs per
constrained token (`RowConstraint.choose` with max_tokens 128: the mask plus the check that the
JSON can still close within the tokens left). Also prints the fewest tokens each schema needs
(`RowConstraint.min_tokens`: below it a constrained answer cannot parse), for json_object, this
schema and the demo's invoice schema.

    .venv/bin/python bench/grammar.py [--base gemma-3-270m]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

SCHEMA = {"type": "object", "properties": {"vendor": {"type": "string"}, "invoice_number": {"type": "string"},
                                           "total": {"type": "number"},
                                           "currency": {"enum": ["EUR", "USD", "GBP", "CHF"]},
                                           "date": {"type": ["string", "null"]}},
          "required": ["vendor", "invoice_number", "total", "currency", "date"], "additionalProperties": False}
ANSWER = json.dumps({"vendor": "Acme GmbH", "invoice_number": "INV-2024-0042", "total": 1234.5,
                     "currency": "EUR", "date": "2024-03-01"})


def per_token_ms(step, ids, repeats=20) -> float:
    t = time.perf_counter()
    for _ in range(repeats):
        step(ids)
    return (time.perf_counter() - t) / (repeats * len(ids)) * 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="gemma-3-270m")
    args = p.parse_args()
    from loraops.models import load_base
    from loraops.serve.grammar import RowConstraint, compile_grammar

    base = load_base(args.base)
    tok, vocab = base.tokenizer, base.model.config.vocab_size
    ids = tok(ANSWER, add_special_tokens=False)["input_ids"]
    grammar = compile_grammar(SCHEMA)
    t = time.perf_counter()
    RowConstraint(grammar, tok, vocab)  # first one builds the tokenizer view (once per server)
    setup_s = time.perf_counter() - t

    def llg(ids):
        row, logits = RowConstraint(grammar, tok, vocab), torch.zeros(vocab)
        for i in ids:
            row.mask(logits)
            row.advance(i)

    def llg_budget(ids, max_tokens=128):
        row, logits = RowConstraint(grammar, tok, vocab), torch.zeros(vocab)
        for k, i in enumerate(ids):
            logits.zero_()
            logits[i] = 1.0                                   # the walked answer is the model's choice
            row.advance(row.choose(logits, lambda x: int(torch.argmax(x)), max_tokens - k))

    results = {"llguidance": per_token_ms(llg, ids), "llguidance, budget": per_token_ms(llg_budget, ids)}
    from loraops.demo.tasks import invoice_json_schema
    minimum = {name: RowConstraint(compile_grammar(schema), tok, vocab).min_tokens
               for name, schema in (("json_object", {"type": "object"}), ("this schema", SCHEMA),
                                    ("demo invoice schema", invoice_json_schema()))}
    try:
        import xgrammar as xgr

        compiled = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab)) \
            .compile_json_schema(json.dumps(SCHEMA))

        def xg(ids):
            m, mask, logits = xgr.GrammarMatcher(compiled), xgr.allocate_token_bitmask(1, vocab), torch.zeros(1, vocab)
            for i in ids:
                m.fill_next_token_bitmask(mask)
                xgr.apply_token_bitmask_inplace(logits, mask)
                m.accept_token(i)
        results["xgrammar"] = per_token_ms(xg, ids)
    except ImportError:
        pass

    enc = tok("Extract the invoice fields as JSON:", return_tensors="pt")
    with torch.no_grad():
        out = base.model(**enc, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        t = time.perf_counter()
        for _ in range(10):
            out = base.model(input_ids=nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        decode_ms = (time.perf_counter() - t) / 10 * 1e3
    print(f"# bench/grammar.py {time.strftime('%Y-%m-%d')} {platform.machine()} torch {torch.__version__} "
          f"base {args.base} vocab {vocab}")
    print(f"decode step (batch 1, KV cache): {decode_ms:.1f} ms; llguidance tokenizer setup {setup_s:.1f} s (once)")
    for name, ms in results.items():
        print(f"{name:20} {ms:.3f} ms/token = {ms / decode_ms:.2%} of a decode step")
    print("fewest tokens a constrained answer needs (min_tokens): "
          + ", ".join(f"{name} {n}" for name, n in minimum.items()))


if __name__ == "__main__":
    main()
