"""General-text replay: a held-out-safe corpus, mixed into the training set only."""

import json

import pytest

from loraops.data.replay import replay_records
from loraops.errors import ConfigError
from loraops.evals.general import corpus_passages
from loraops.train import TrainConfig, run


def test_replay_records_are_prose_deterministic_and_never_the_eval_corpus():
    first, again, other = replay_records(40, seed=0), replay_records(40, seed=0), replay_records(40, seed=1)
    assert len(first) == 40 and first == again and first != other
    assert all(set(r) == {"text"} and len(r["text"]) >= 200 and "\n" not in r["text"] for r in first)
    held_out = set(corpus_passages(count=10**6, min_chars=1))        # forgetting is measured on these
    assert not held_out & {r["text"] for r in replay_records(10**6)}
    assert replay_records(0) == []


def test_replay_must_be_a_non_negative_count(tmp_path):
    with pytest.raises(ConfigError, match="replay"):
        TrainConfig(base="b", data="d", out=str(tmp_path), replay=-1)


def test_replay_adds_training_tokens_but_not_validation(tiny_base, data_file, tmp_path):
    def one_epoch(replay: int, out):
        run(TrainConfig(base=str(tiny_base), data=str(data_file), out=str(out), rank=4, epochs=1, batch_size=4,
                        seq_len=64, lr=1e-2, warmup_steps=0, targets="q_proj,v_proj", replay=replay,
                        progress=False))
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        tokens = [r["tokens"] for r in lines if "loss" in r][-1]     # cumulative
        return tokens, [r["val_loss"] for r in lines if "val_loss" in r]

    plain_tokens, plain_val = one_epoch(0, tmp_path / "plain")
    replay_tokens, _ = one_epoch(16, tmp_path / "replay")
    assert replay_tokens > plain_tokens
    meta = json.loads((tmp_path / "replay" / "adapter" / "loraops.json").read_text())
    assert meta["hyperparameters"]["replay"] == 16
    assert plain_val                                                   # validation ran on the task's own data
