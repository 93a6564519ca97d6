"""An adapter trained on chat answers ends its turn right after its JSON: the chat template's
end-of-turn token is in the labels (not text split into pieces, not followed by a learned EOS) and
in the stop set of evaluation and of the server, so nothing is generated after the closing brace."""

import json
import sys
from pathlib import Path

import openai
import pytest

from loraops.data.formats import end_of_turn_id, parse_line, to_output
from loraops.evals.generate import generate
from loraops.lora import remove
from loraops.models import load_base
from loraops.train import TrainConfig, train
from loraops.train.batches import load_dataset
from tiny import save_tiny

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "serve"))
from harness import Server  # noqa: E402

ANSWER = '{"ok": 1}'


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(tiny base dir, adapter dir, val prompts): 30 steps on chat records whose answer is ANSWER."""
    d = tmp_path_factory.mktemp("stop")
    base_dir = save_tiny(d / "tiny", "llama")
    base = load_base(str(base_dir))
    rendered = [to_output(parse_line(json.dumps({"messages": [
        {"role": "user", "content": f"Route ticket {i}: my card was declined"},
        {"role": "assistant", "content": ANSWER}]}).encode(), i + 1), base.tokenizer) for i in range(48)]
    (d / "data").mkdir()
    (d / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rendered[:40]))
    (d / "data" / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rendered[40:]))
    cfg = TrainConfig(base=str(base_dir), data=str(d / "data"), out=str(d / "run"), rank=8, alpha=16,
                      targets="all-linear", max_steps=30, batch_size=2, seq_len=128, lr=1e-2, warmup_steps=2,
                      progress=False)
    result = train(base, load_dataset(d / "data"), cfg)
    prompts = [r["prompt"] for r in rendered[40:]]
    outputs = generate(base.model, base.tokenizer, prompts, max_new_tokens=16)
    ids = base.tokenizer(prompts[0], add_special_tokens=False, return_tensors="pt")
    raw = base.model.generate(**ids, max_new_tokens=16, do_sample=False)[0, ids["input_ids"].shape[1]:].tolist()
    remove(base.model)
    return {"base": base_dir, "adapter": result.adapter_dir, "outputs": outputs, "raw": raw,
            "tokenizer": base.tokenizer, "stops": base.model.generation_config.eos_token_id}


def test_the_base_stops_at_its_chat_templates_end_of_turn(trained):
    eot = end_of_turn_id(trained["tokenizer"])
    assert eot == trained["tokenizer"].convert_tokens_to_ids("<end_of_turn>")
    assert eot in trained["stops"] and trained["tokenizer"].eos_token_id in trained["stops"]


def test_evaluation_output_ends_at_the_closing_brace(trained):
    assert trained["outputs"] == [ANSWER] * len(trained["outputs"])
    # the token right after the closing brace is the end of turn, and generation stopped there
    tok = trained["tokenizer"]
    text = tok.decode(trained["raw"])
    assert text.endswith("}<end_of_turn>") and trained["raw"][-1] == end_of_turn_id(tok)


def test_the_servers_answer_ends_at_the_closing_brace(trained, tmp_path):
    tenants = tmp_path / "tenants.toml"
    tenants.write_text('[tenants.t]\napi_keys = ["sk-t-0123456789"]\nadapters = ["ok"]\n')
    server = Server(["--base", str(trained["base"]), "--tenants", str(tenants),
                     "--adapter", f"ok={trained['adapter']}"], tmp_path / "server.log")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-t-0123456789", max_retries=0, timeout=30)
        answer = client.chat.completions.create(
            model="ok", messages=[{"role": "user", "content": "Route ticket 41: my card was declined"}],
            max_tokens=32, temperature=0)
    finally:
        server.stop()
    n_answer = len(trained["tokenizer"](ANSWER, add_special_tokens=False)["input_ids"])
    assert answer.choices[0].message.content == ANSWER and answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens <= n_answer + 1  # the answer, then only the end of turn
