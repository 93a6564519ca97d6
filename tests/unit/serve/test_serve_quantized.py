"""`serve --quantize int8`: the engine on an int8 base equals the plain path (int8 base + fp32 LoRA
injected + HF generate), request by request. (The int8 layers pick their kernel by the number of
tokens in a call — bf16 activations for decode-sized calls, fp32 for prefill-sized ones — so inside
a mixed batch a row's numerics can depend on its neighbours; requests run one at a time here to
compare exactly.)"""

import torch
from lora_factory import save_random_adapters
from test_serve_engine import Collector, prompts
from tiny import tiny_llama, tiny_tokenizer

from loraops.lora import apply_adapter, read_adapter
from loraops.models import BaseInfo, LoadedBase
from loraops.models.quantize import quantize_for_inference_
from loraops.serve.engine import Engine, EngineConfig
from loraops.serve.sampling import SamplingParams


def test_int8_engine_matches_int8_reference(tmp_path):
    paths = save_random_adapters(tiny_llama(0), tmp_path, 3)
    model = tiny_llama(0)
    quantize_for_inference_(model, tiny_tokenizer())
    engine = Engine(LoadedBase(model, tiny_tokenizer(), BaseInfo("tiny", tmp_path, "0" * 64)),
                    EngineConfig(max_slots=4, max_rank=16, max_kv_tokens=2048))
    for name, path in paths.items():
        engine.add_adapter(name, path)
    engine.start()
    try:
        for model_id, prompt in zip(["ad0", "ad1", "tiny", "ad2"], prompts(4)):
            got = Collector()
            engine.submit("t", model_id, prompt, SamplingParams(12, temperature=0.0), got)
            assert got.finished.wait(60) and got.error is None
            ref = tiny_llama(0)
            quantize_for_inference_(ref, tiny_tokenizer())
            if model_id in paths:
                apply_adapter(ref, read_adapter(paths[model_id]))
            want = ref.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                max_new_tokens=12, do_sample=False)[0, len(prompt):].tolist()
            assert got.tokens == want, model_id
    finally:
        engine.stop()
