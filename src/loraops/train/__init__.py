"""Training: `run(TrainConfig) -> TrainResult` trains a LoRA adapter on a frozen base.

config.py the validated options; batches.py data → packed rows → tensors + block-causal mask;
loss.py chunked LM-head cross-entropy; checkpoint.py atomic save/resume; distributed.py torchrun
data parallelism; metrics.py metrics.jsonl + progress bar; loop.py the loop itself.
"""

from loraops.train.config import TrainConfig
from loraops.train.loop import TrainResult, checkpoint_adapters, run, train
from loraops.train.loss import chunked_cross_entropy

__all__ = ["TrainConfig", "TrainResult", "checkpoint_adapters", "chunked_cross_entropy", "run", "train"]
