"""train -> eval: an adapter from `loraops.train.run` is evaluated on what its trainer held out."""

import json

import pytest

from loraops.evals import EvalConfig, evaluate
from tiny import save_tiny


def test_an_adapter_trained_on_one_file_is_evaluated_only_on_the_records_its_trainer_held_out(tmp_path):
    torch = pytest.importorskip("torch")
    from loraops.train import TrainConfig, run
    from loraops.train.batches import load_dataset

    base = save_tiny(tmp_path / "base", "llama")
    data = tmp_path / "all.jsonl"
    records = [{"prompt": f"Order: {i % 9 + 1} pears.\nJSON:", "completion": json.dumps({"qty": i % 9 + 1})}
               for i in range(20)]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared 2-core machine: one thread is faster
    try:
        result = run(TrainConfig(base=str(base), data=str(data), out=str(tmp_path / "run"), max_steps=2,
                                 seq_len=64, batch_size=4, val_fraction=0.2, seed=5, progress=False))
        report = evaluate(str(base), result.adapter_dir,
                          EvalConfig(data=data, general_passages=2, questions_per_kind=1, max_new_tokens=4))
    finally:
        torch.set_num_threads(threads)
    held_out = load_dataset(data, 0.2, 5).val
    assert report.comparable["examples"] == len(held_out) == 4
    assert report.samples[0]["prompt"] == held_out[0]["prompt"]
