"""loraops: serve many customers' LoRA adapters from one base model."""

__version__ = "0.1.0"
