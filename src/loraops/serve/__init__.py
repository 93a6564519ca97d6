"""Multi-tenant serving: one base model, many LoRA adapters in one batch, OpenAI-compatible HTTP.

engine.py (continuous batching: scheduler.py -> runner.py -> postprocess.py, catalog.py for
adapters, model_ref.py for model ids, events.py for what requests receive; encoder.py with
saved_modules.py instead for classification on an encoder base) over lora_kernels.py /
layers.py / slots.py (multi-adapter LoRA), kv.py (paged KV cache + attention), head.py, gemm.py,
sampling.py, speculate.py; api.py (HTTP) with tenancy.py, limits.py, metrics.py, protocol.py;
server.py builds it all for `loraops serve`; config.py holds the options. Names are imported
lazily so that `loraops serve --help` does not load torch.
"""

from importlib import import_module

_EXPORTS = {"Engine": "engine", "EngineConfig": "config", "ServeOptions": "config", "check_options": "config",
            "SamplingParams": "sampling", "ModelRef": "model_ref",
            "lora_reference": "lora_kernels", "lora_sgmv": "lora_kernels", "lora_padded": "lora_kernels",
            "build": "server", "run": "server"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'loraops.serve' has no attribute {name!r}")
    return getattr(import_module(f"loraops.serve.{_EXPORTS[name]}"), name)
