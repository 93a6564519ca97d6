import json

import pytest
import torch

from tiny import tiny_gemma3, tiny_llama, tiny_tokenizer
from loraops.data.tokenize import IGNORE, pack, shared_prompt_prefix
from loraops.errors import DataFormatError, TrainDataError
from loraops.train import TrainConfig
from loraops.train.batches import (attention_mask_for, block_causal_mask, collate, encode_all, epoch_rows,
                                   load_dataset)
from loraops.train.loop import lm_loss
from train_data import write_records

# Lengths longer than tiny Gemma 3's sliding window (16) exercise its sliding layers too.
LENGTHS = (5, 23, 9, 14)


def examples():
    g = torch.Generator().manual_seed(0)
    out = []
    for n in LENGTHS:
        ids = torch.randint(3, 300, (n,), generator=g).tolist()
        out.append((ids, [IGNORE] * (n // 2) + ids[n // 2:]))
    return out


@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma3])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_row_gives_the_logits_and_loss_of_its_examples_run_separately(build, attn):
    model = build()
    model.config._attn_implementation = attn
    cfg = TrainConfig(base="b", data="d", out="o", loss_chunk=8)
    exs = examples()
    rows = pack(exs, 64)
    assert len(rows) == 1
    # a second, shorter row makes the first example's row carry padding
    packed = collate(rows + pack(exs[:1], 64), pad_id=0)
    with torch.no_grad():
        mask = attention_mask_for(model.config, packed.seq_ids, torch.float32)
        logits = model(input_ids=packed.input_ids, attention_mask=mask, position_ids=packed.position_ids).logits
        packed_loss = lm_loss(model, collate(rows, 0), cfg)
        offset, separate_loss = 0, 0.0
        for ids, labels in exs:
            alone = model(input_ids=torch.tensor([ids])).logits[0]
            torch.testing.assert_close(logits[0, offset:offset + len(ids)], alone, rtol=1e-5, atol=1e-5)
            separate_loss += float(lm_loss(model, collate(pack([(ids, labels)], 64), 0), cfg))
            offset += len(ids)
        torch.testing.assert_close(logits[1, :LENGTHS[0]], logits[0, :LENGTHS[0]], rtol=1e-5, atol=1e-5)
    assert float(packed_loss) == pytest.approx(separate_loss, rel=1e-5)


def test_mask_blocks_other_examples_the_future_and_beyond_the_window():
    seq = torch.tensor([[0, 0, 0, 1, 1, -1]])
    allowed = block_causal_mask(seq, torch.float32)[0, 0] == 0
    expected = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                             [0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(allowed, expected)
    windowed = block_causal_mask(seq, torch.float32, sliding_window=2)[0, 0] == 0
    assert not windowed[2, 0] and windowed[2, 1]


def test_epoch_order_is_seeded_and_differs_between_epochs():
    exs = [([1, i + 3, 4], [IGNORE, i + 3, 4]) for i in range(30)]
    first = [r.input_ids for r in epoch_rows(exs, 9, seed=0, epoch=0)]
    assert first == [r.input_ids for r in epoch_rows(exs, 9, seed=0, epoch=0)]
    assert first != [r.input_ids for r in epoch_rows(exs, 9, seed=0, epoch=1)]
    assert sorted(sum(first, [])) == sorted(sum((e[0] for e in exs), []))


def test_prompt_tokens_carry_no_loss_and_text_records_carry_all():
    tok = tiny_tokenizer()
    (ids, labels), = encode_all(tok, [{"prompt": "total due", "completion": "99 EUR"}], 64)
    n_prompt = len(tok("total due", add_special_tokens=False)["input_ids"]) + 1  # + BOS
    assert labels[:n_prompt] == [IGNORE] * n_prompt and IGNORE not in labels[n_prompt:]
    (ids, labels), = encode_all(tok, [{"text": "total due 99 EUR"}], 64)
    assert IGNORE not in labels[1:]


def test_a_single_file_is_split_deterministically(tmp_path):
    path = write_records(tmp_path / "d.jsonl", n=40)
    a, b = load_dataset(path, 0.1, seed=3), load_dataset(path, 0.1, seed=3)
    assert (a.train, a.val, a.digest) == (b.train, b.val, b.digest)
    assert len(a.val) == 4 and len(a.train) == 36
    assert not any(r in a.train for r in a.val)


def test_a_curated_dir_brings_its_val_split_and_report_digest(tmp_path):
    write_records(tmp_path / "train.jsonl", n=10)
    write_records(tmp_path / "val.jsonl", n=3, seed=1)
    (tmp_path / "report.json").write_text(json.dumps({"output_sha256": "ab" * 32}))
    data = load_dataset(tmp_path)
    assert (len(data.train), len(data.val), data.digest) == (10, 3, "ab" * 32)


def test_missing_empty_or_malformed_data_is_refused(tmp_path):
    with pytest.raises(TrainDataError):
        load_dataset(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(TrainDataError):
        load_dataset(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x", "completion": "y"}\n{"question": "x"}\n')
    with pytest.raises(DataFormatError, match="line 2"):
        load_dataset(tmp_path / "bad.jsonl")
    with pytest.raises(TrainDataError, match="train.jsonl"):
        load_dataset(tmp_path)


def test_training_loss_equals_the_models_own_logits_loss_with_final_softcapping():
    model = tiny_gemma3()
    model.config.final_logit_softcapping = 2.0  # small, so the cap changes the logits a lot
    cfg = TrainConfig(base="b", data="d", out="o", loss_chunk=5)
    batch = collate(pack(examples(), 64), pad_id=0)
    with torch.no_grad():
        mask = attention_mask_for(model.config, batch.seq_ids, torch.float32)
        logits = model(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids).logits
        assert logits.abs().max() <= 2.0
        reference = torch.nn.functional.cross_entropy(logits[0, :-1], batch.labels[0, 1:], reduction="sum")
        assert float(lm_loss(model, batch, cfg)) == pytest.approx(float(reference), rel=1e-5)


def _prefixed_examples(prefix_len: int = 10):
    """Examples that share a prompt prefix (each then its own prompt and completion), plus a text one."""
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(3, 300, (prefix_len,), generator=g).tolist()
    out = []
    for prompt, completion in ((3, 4), (12, 9), (1, 2), (20, 6)):  # some reach past the sliding window (16)
        rest = torch.randint(3, 300, (prompt + completion,), generator=g).tolist()
        ids = prefix + rest
        out.append((ids, [IGNORE] * (prefix_len + prompt) + rest[prompt:]))
    text = torch.randint(3, 300, (7,), generator=g).tolist()
    return prefix, out[:2] + [(text, [IGNORE, *text[1:]])] + out[2:]


def test_the_shared_prompt_prefix_is_what_every_prompt_starts_with_short_of_the_first_label():
    prefix, exs = _prefixed_examples()
    assert shared_prompt_prefix(exs) == prefix  # the text example does not count
    assert shared_prompt_prefix(exs, min_len=11) == []
    cut = [(ids, [IGNORE] * 5 + ids[5:]) for ids, _ in exs if len(ids) > 10]  # labels from token 5
    assert shared_prompt_prefix(cut, min_len=1) == prefix[:4]


@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma3])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_row_with_a_shared_prefix_gives_the_loss_and_gradients_of_whole_examples(build, attn):
    from loraops.lora import LoRAConfig, inject

    model = build()
    model.config._attn_implementation = attn
    inject(model, LoRAConfig(r=4, alpha=8, target_modules="all-linear"))
    with torch.no_grad():  # B != 0, so A's gradients are not trivially zero
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    cfg = TrainConfig(base="b", data="d", out="o", loss_chunk=8)
    prefix, exs = _prefixed_examples()
    shared, whole = pack(exs, 256, prefix), pack(exs, 256)
    assert len(shared) == len(whole) == 1
    assert len(shared[0].input_ids) == len(whole[0].input_ids) - 3 * len(prefix)  # 4 sharers, 1 prefix

    def loss_and_grads(rows):
        model.zero_grad()
        loss = lm_loss(model, collate(rows, 0), cfg)
        loss.backward()
        return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    (loss_s, grads_s), (loss_w, grads_w) = loss_and_grads(shared), loss_and_grads(whole)
    assert loss_s == pytest.approx(loss_w, rel=1e-5)
    for name in grads_w:
        torch.testing.assert_close(grads_s[name], grads_w[name], rtol=1e-4, atol=1e-6)
