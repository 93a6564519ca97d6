"""Diffusion training (DreamBooth-style LoRA): a folder of images with captions, the standard
denoising loss.

Data: DIR with images (.png, .jpg, .jpeg, .webp) and their captions, either `NAME.txt` beside
`NAME.png` or a `metadata.jsonl` of {"file_name", "text"} lines (the HF imagefolder layout). For
DreamBooth, caption every image with the instance prompt ("a photo of sks dog").

Per image, once: resized (shorter side) and center-cropped to `resolution`, scaled to [-1, 1] and
encoded by the frozen VAE; the latent distribution's mean and std are kept, so each step draws
latents = mean + std · ε as `latent_dist.sample()` would, without running the VAE again.

Per step (torch's RNG seeded per step by the loop, so a resumed run draws the same noise):
    t ~ U{0, ..., T-1},  ε ~ N(0, I),  x_t = scheduler.add_noise(latents, ε, t)
    loss = ‖UNet(x_t, t, text_encoder(caption)) − target‖² averaged over the latent, per image
target = ε for an ε-prediction scheduler (SD 1.x), or the velocity for v-prediction (SD 2.x).
Validation uses noise and timesteps fixed per image, so val losses of different steps compare.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from loraops.errors import ConfigError, TrainDataError
from loraops.train.config import TrainConfig
from loraops.train.task import EpochPlan, shuffled

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class ImageCaptions:
    train: list[tuple[Path, str]]
    val: list[tuple[Path, str]]
    digest: str  # sha256 over every image's and caption's bytes


def load_image_captions(folder: str | Path, val_fraction: float = 0.05, seed: int = 0) -> ImageCaptions:
    d = Path(folder)
    if not d.is_dir():
        raise TrainDataError(f"diffusion data {str(d)!r} is not a folder of images and captions")
    captions = {}
    if (d / "metadata.jsonl").is_file():
        for line in (d / "metadata.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                captions[rec["file_name"]] = rec["text"]
    pairs = []
    for image in sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        text = captions.get(image.name)
        if text is None and image.with_suffix(".txt").is_file():
            text = image.with_suffix(".txt").read_text(encoding="utf-8").strip()
        if not text:
            raise TrainDataError(f"{image} has no caption ({image.stem}.txt or a metadata.jsonl line)")
        pairs.append((image, text))
    if not pairs:
        raise TrainDataError(f"{d} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(val_fraction * len(pairs))) if val_fraction > 0 and len(pairs) >= 2 else 0
    h = hashlib.sha256()
    for image, text in pairs:
        h.update(hashlib.sha256(image.read_bytes()).digest() + text.encode())
    return ImageCaptions([pairs[i] for i in sorted(order[n_val:])], [pairs[i] for i in sorted(order[:n_val])],
                         h.hexdigest())


def pixels(image: Path, resolution: int) -> torch.Tensor:
    """-> [3, resolution, resolution] in [-1, 1]: shorter side resized, then center-cropped."""
    import numpy as np
    from PIL import Image

    img = Image.open(image).convert("RGB")
    scale = resolution / min(img.size)
    img = img.resize((max(resolution, round(img.width * scale)), max(resolution, round(img.height * scale))),
                     Image.BICUBIC)
    left, top = (img.width - resolution) // 2, (img.height - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


@dataclass
class Item:
    index: int
    mean: torch.Tensor    # [C, h, w] latent mean (VAE scaling applied)
    std: torch.Tensor     # [C, h, w]
    input_ids: torch.Tensor  # [tokens] the caption


class DiffusionTask:
    """task.py's interface for diffusion: items are encoded images with their captions."""

    unit = "images"

    def __init__(self, base, data: ImageCaptions, cfg: TrainConfig):
        if "text_encoder_2" in base.model:
            raise ConfigError("diffusion training supports SD 1.x/2.x pipelines; SDXL's UNet needs pooled text "
                              "embeddings and time ids this trainer does not compute")
        self.cfg, self.base = cfg, base
        self.scheduler = base.noise_scheduler
        self.prediction = self.scheduler.config.prediction_type
        train, self.val_items = self._encode(data.train, 0), self._encode(data.val, len(data.train))
        self.plan = EpochPlan(lambda epoch: shuffled(train, cfg.seed, epoch), cfg.batch_size * cfg.grad_accum,
                              cfg.epochs, cfg.max_steps)

    @torch.no_grad()
    def _encode(self, pairs: list[tuple[Path, str]], first: int) -> list[Item]:
        vae, tokenizer = self.base.vae, self.base.tokenizer
        scale = vae.config.scaling_factor
        te = self.base.model["text_encoder"]
        max_len = min(getattr(tokenizer, "model_max_length", 77) or 77, 77, te.config.max_position_embeddings)
        items = []
        for i, (image, caption) in enumerate(pairs):
            x = pixels(image, self.cfg.resolution)[None].to(vae.device, vae.dtype)
            dist = vae.encode(x).latent_dist
            ids = tokenizer(caption, padding="max_length", truncation=True, max_length=max_len,
                            return_tensors="pt")["input_ids"][0]
            items.append(Item(first + i, dist.mean[0] * scale, dist.std[0] * scale, ids))
        return items

    def lora_config(self):
        from dataclasses import replace

        return replace(self.cfg.lora_config(), task_type=None)

    def prepare(self, model) -> None:
        pass

    def weight(self, items: list[Item]) -> int:
        return len(items)

    def loss(self, model, items: list[Item]) -> tuple[torch.Tensor, int]:
        unet, te = model["unet"], model["text_encoder"]
        device = unet.device
        mean = torch.stack([it.mean for it in items]).to(device)   # [B, C, h, w]
        std = torch.stack([it.std for it in items]).to(device)
        if model.training:  # the loop seeded torch's RNG for this step
            draw = torch.randn(2, *mean.shape, device=device)
            t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(items),), device=device)
        else:  # validation: noise and timestep fixed per image
            draws = []
            for it in items:
                g = torch.Generator().manual_seed(it.index)
                draws.append((torch.randn(2, *mean.shape[1:], generator=g),
                              torch.randint(0, self.scheduler.config.num_train_timesteps, (1,), generator=g)))
            draw = torch.stack([d for d, _ in draws], 1).to(device)
            t = torch.cat([s for _, s in draws]).to(device)
        latents = mean + std * draw[0]
        noise = draw[1]
        noisy = self.scheduler.add_noise(latents, noise, t)
        hidden = te(torch.stack([it.input_ids for it in items]).to(device))[0]
        pred = unet(noisy.to(unet.dtype), t, hidden.to(unet.dtype)).sample.float()
        target = noise if self.prediction == "epsilon" else self.scheduler.get_velocity(latents, noise, t)
        per_image = F.mse_loss(pred, target.float(), reduction="none").flatten(1).mean(1)  # [B]
        return per_image.sum(), len(items)

    def step_record(self, items) -> dict:
        return {}

    def meta(self) -> dict:
        return {"resolution": self.cfg.resolution, "prediction_type": self.prediction,
                "noise_scheduler": type(self.scheduler).__name__}
