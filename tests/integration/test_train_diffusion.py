"""`loraops train --task diffusion` on a tiny SD pipeline and a DreamBooth-style folder of six images."""

import json

import pytest
import torch

from loraops.errors import TrainDataError
from loraops.lora import apply_adapter, read_adapter
from loraops.models.diffusion import load_diffusion_base
from loraops.train import TrainConfig, run
from loraops.train.diffusion import DiffusionTask, load_image_captions
from tiny import save_image_captions, save_tiny_sd


def _config(root, **kw):
    return TrainConfig(**{"base": str(root / "sd"), "data": str(root / "images"), "out": str(root / "run"),
                          "task": "diffusion", "targets": "to_q,to_k,to_v,to_out.0,conv1,conv2", "resolution": 16,
                          "rank": 4, "alpha": 4, "max_steps": 30, "batch_size": 6, "lr": 1e-2, "warmup_steps": 2,
                          "val_fraction": 0.0, "progress": False, **kw})


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dreambooth")
    save_tiny_sd(root / "sd")
    save_image_captions(root / "images")
    return root


def test_training_lowers_the_denoising_loss_on_its_images(root):
    cfg = _config(root)
    result = run(cfg)
    log = [json.loads(x) for x in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in log if "images" in r]) == 30
    adapter = read_adapter(result.adapter_dir)
    assert adapter.meta["prediction_type"] == "epsilon" and adapter.meta["base_name"] == "sd"
    assert any(m.kernel_size == (3, 3) and m.B.abs().sum() > 0 for m in adapter.modules.values())
    # the same fixed noise and timesteps per image (validation mode), base vs adapted
    base = load_diffusion_base(cfg.base, for_training=True)
    task = DiffusionTask(base, load_image_captions(cfg.data, 0.0), cfg)
    items = task.plan.rows(0)
    with torch.no_grad():
        before = float(task.loss(base.model.eval(), items)[0])
        apply_adapter(base.model, adapter)
        after = float(task.loss(base.model.eval(), items)[0])
    assert after < 0.9 * before


def test_images_without_captions_are_refused(tmp_path):
    folder = save_image_captions(tmp_path / "imgs", n=2)
    (folder / "img1.txt").unlink()
    with pytest.raises(TrainDataError, match="img1.png has no caption"):
        load_image_captions(folder)
