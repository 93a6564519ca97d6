"""Data: curate raw JSONL (formats, normalise, PII, quality, dedup, split, report); tokenize for training."""

from loraops.data.curate import CurateOptions, curate
from loraops.data.filters import QualityOptions
from loraops.data.formats import Message, Record
from loraops.data.report import CurateReport
from loraops.data.tokenize import IGNORE, PackedRow, encode_example, pack

__all__ = ["CurateOptions", "CurateReport", "IGNORE", "Message", "PackedRow", "QualityOptions", "Record",
           "curate", "encode_example", "pack"]
