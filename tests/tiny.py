"""Tiny random models and a tiny tokenizer built from configs: no downloads, fast, deterministic."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel,
                          Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM,
                          PreTrainedTokenizerFast)

VOCAB = 384
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Invoice number INV-2024-001, total 1,234.56 EUR.",
    "Hello, how can I help you today? Please route this ticket to billing with high priority.",
    '{"vendor": "Acme GmbH", "date": "2024-03-01", "total": 99.5, "currency": "USD"}',
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"()[]{}-_/@#$%&*+=<>",
]
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on a few lines; encodes any text. Vocab size ≤ VOCAB."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>",
                                   additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def tiny_gemma3(seed: int = 0) -> Gemma3ForCausalLM:
    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                           max_position_embeddings=256, sliding_window=16,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return Gemma3ForCausalLM(cfg).eval()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                     bos_token_id=1, eos_token_id=2)
    return GPT2LMHeadModel(cfg).eval()


def tiny_bert_cls(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=256, num_labels=3)
    return BertForSequenceClassification(cfg).eval()


BUILDERS = {"llama": tiny_llama, "gemma3": tiny_gemma3, "gpt2": tiny_gpt2, "bert": tiny_bert_cls}


def input_ids(batch: int = 2, length: int = 12, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def save_tiny(path, arch: str = "llama", seed: int = 0):
    """An HF model directory (safetensors + tokenizer) that `--base DIR` accepts."""
    model = BUILDERS[arch](seed)
    model.save_pretrained(path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(path)
    return path


# ---- diffusion: a tiny Stable-Diffusion-style pipeline (UNet, CLIP text encoder, VAE, scheduler) ----

def tiny_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4).eval()


def tiny_clip_text(seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=32, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2)
    return CLIPTextModel(cfg).eval()


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=4, sample_size=16).eval()


def tiny_components(seed: int = 0):
    """What an SD adapter changes, as loraops holds it: {"unet", "text_encoder"} in one module."""
    return torch.nn.ModuleDict({"unet": tiny_unet(seed), "text_encoder": tiny_clip_text(seed)})


def unet_inputs(batch: int = 2, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"sample": torch.randn(batch, 4, 8, 8, generator=g), "timestep": torch.tensor([3, 500])[:batch],
            "encoder_hidden_states": torch.randn(batch, 6, 16, generator=g)}


def save_tiny_sd(path, seed: int = 0):
    """A diffusers pipeline directory (model_index.json, unet/, text_encoder/, tokenizer/, vae/,
    scheduler/) of tiny random models, laid out like runwayml/stable-diffusion-v1-5."""
    import json
    from pathlib import Path

    from diffusers import DDPMScheduler

    path = Path(path)
    tiny_unet(seed).save_pretrained(path / "unet", safe_serialization=True)
    tiny_clip_text(seed).save_pretrained(path / "text_encoder", safe_serialization=True)
    tiny_vae(seed).save_pretrained(path / "vae", safe_serialization=True)
    tiny_tokenizer().save_pretrained(path / "tokenizer")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                  beta_end=0.012).save_pretrained(path / "scheduler")
    (path / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "DDPMScheduler"]}, indent=2))
    return path


# ---- encoders: a tiny BERT checkpoint as a pretrained one ships (masked-LM head, no classifier) ----

def tiny_encoder_tokenizer() -> PreTrainedTokenizerFast:
    tok = tiny_tokenizer()
    tok.add_special_tokens({"mask_token": "<mask>"})
    return tok


def save_tiny_encoder(path, seed: int = 0):
    """A BertForMaskedLM directory (safetensors + tokenizer with a mask token), like bert-base-uncased:
    loading it for classification initialises the pooler and the classifier."""
    from transformers import BertForMaskedLM

    tok = tiny_encoder_tokenizer()
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    BertForMaskedLM(cfg).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def sentiment_records(n: int = 48, seed: int = 0) -> list[dict]:
    """{"text", "label"} lines a tiny encoder can learn: the label is which word set the text uses."""
    import random

    rng = random.Random(seed)
    words = {"pos": ["great", "good", "happy", "love"], "neg": ["bad", "awful", "sad", "hate"],
             "neutral": ["table", "invoice", "number", "today"]}
    out = []
    for i in range(n):
        label = ["pos", "neg", "neutral"][i % 3]
        out.append({"text": " ".join(rng.choice(words[label]) for _ in range(4)) + f" {i}", "label": label})
    return out


def save_image_captions(path, n: int = 6, size: int = 16, seed: int = 0):
    """A DreamBooth-style folder: n small images (a coloured square on noise) and NAME.txt captions."""
    import numpy as np
    from pathlib import Path
    from PIL import Image

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = rng.integers(0, 64, (size + 4, size, 3), dtype=np.uint8)  # not square: exercises the crop
        img[4:12, 4:12] = (200, 40 + 20 * i, 40)
        Image.fromarray(img).save(path / f"img{i}.png")
        (path / f"img{i}.txt").write_text("a photo of sks square")
    return path
