"""LoRA math and format: the layer, target injection, PEFT files, merge."""

from loraops.lora.adapter import Adapter, ModuleLoRA
from loraops.lora.config import LoRAConfig
from loraops.lora.inject import apply_adapter, extract, inject, lora_modules, remove, select_targets, trainable_parameters
from loraops.lora.layer import LoRALinear
from loraops.lora.merge import merge_state_dict, unmerge_state_dict
from loraops.lora.peft_format import read_adapter, save_adapter

__all__ = [
    "Adapter", "ModuleLoRA", "LoRAConfig", "LoRALinear",
    "apply_adapter", "extract", "inject", "lora_modules", "remove", "select_targets", "trainable_parameters",
    "merge_state_dict", "unmerge_state_dict", "read_adapter", "save_adapter",
]
