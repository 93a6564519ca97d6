"""`curate`: raw JSONL → DIR/train.jsonl, DIR/val.jsonl, DIR/report.json, in one streaming pass.

Per line: parse → normalise → redact PII → render → quality rules → exact dedup → near dedup → split.
PII goes before dedup so records that differ only in an e-mail address count as duplicates, and so
report examples never show the PII. Input is read line by line and kept records are written as they
come; only dedup state grows with the input (see dedup.py for the bytes per record).

Labelled records ({"text", "label"}, for classification) are split stratified instead: per label,
the `val_fraction` of its records with the lowest split hash (at least one of a label with two or
more records) go to val, so every label is in both files in proportion. That needs each label's
count, so these records are held until the end of the input (their output lines, in memory); the
report counts them per label and split. The text is deduplicated, not the label: a text seen
again with another label is dropped as an exact duplicate (the first label wins).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from loraops.data.dedup import ExactDedup, NearDedup
from loraops.data.filters import QualityOptions, failed_rule
from loraops.data.formats import Record, parse_line, to_output
from loraops.data.normalize import normalize_text
from loraops.data.pii import redact
from loraops.data.report import CurateReport, preview
from loraops.data.split import is_val, split_key
from loraops.errors import ConfigError, DataFormatError

OUTPUT_FILES = ("train.jsonl", "val.jsonl")


@dataclass(frozen=True)
class CurateOptions:
    normalize: bool = True
    pii: bool = True
    filter_quality: bool = True
    quality: QualityOptions = field(default_factory=QualityOptions)
    exact_dedup: bool = True
    near_dedup: bool = True
    near_dup_threshold: float = 0.85
    val_fraction: float = 0.1
    seed: int = 0
    strict: bool = False  # the first malformed line is an error instead of a skipped, counted line

    def __post_init__(self) -> None:
        if not 0 < self.near_dup_threshold <= 1:
            raise ConfigError(f"near_dup_threshold must be in (0, 1], got {self.near_dup_threshold}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


class _HashingFile:
    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha256 = f, hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.f.write(data)
        self.sha256.update(data)


@contextmanager
def _atomic_outputs(out_dir: Path, names: tuple[str, ...]) -> Iterator[dict[str, _HashingFile]]:
    """Write each named file to a temp file in `out_dir`; only on success do they replace the real ones,
    so a failed run leaves neither partial files nor temps behind, nor directories it created."""
    created = [d for d in (out_dir, *out_dir.parents) if not d.exists()]
    out_dir.mkdir(parents=True, exist_ok=True)
    temps = {name: out_dir / f".{name}.tmp-{os.getpid()}" for name in names}
    handles = {name: tmp.open("wb") for name, tmp in temps.items()}
    ok = False
    try:
        yield {name: _HashingFile(f) for name, f in handles.items()}
        for name, f in handles.items():
            f.close()
            os.replace(temps[name], out_dir / name)
        ok = True
    finally:
        for name, f in handles.items():
            f.close()
            temps[name].unlink(missing_ok=True)
        if not ok:
            for d in created:  # innermost first
                try:
                    d.rmdir()
                except OSError:
                    break


def _drop_reason(record: Record, options: CurateOptions, exact: ExactDedup | None,
                 near: NearDedup | None) -> tuple[str, dict[str, Any]] | None:
    """(rule, detail for the report) if `record` is dropped, else None. Dedup runs after the quality
    rules so that records they reject never enter the dedup indexes."""
    if options.filter_quality and (rule := failed_rule(record, options.quality)):
        return rule, {}
    if exact is not None and exact.is_duplicate(record):
        return "exact_duplicate", {}
    if near is not None and (of := near.find(record)) is not None:
        return "near_duplicate", {"duplicate_of_line": of}
    return None


def curate(in_path: str | os.PathLike, out_dir: str | os.PathLike, options: CurateOptions = CurateOptions(),
           tokenizer: Any = None) -> CurateReport:
    """Curate a JSONL file into `out_dir`. `tokenizer` (with a chat template) is needed for chat records."""
    in_path, out_dir = Path(in_path), Path(out_dir)
    if not in_path.is_file():
        raise ConfigError(f"{in_path}: no such file")
    report = CurateReport(input=str(in_path), options=asdict(options))
    exact = ExactDedup() if options.exact_dedup else None
    near = NearDedup(options.near_dup_threshold) if options.near_dedup else None
    input_sha256 = hashlib.sha256()
    labelled: dict[str, list[tuple[int, bytes]]] = {}  # label -> (line number, output line), held for the split
    with in_path.open("rb") as src, _atomic_outputs(out_dir, (*OUTPUT_FILES, "report.json")) as out:
        for line_no, raw in enumerate(src, start=1):
            input_sha256.update(raw)
            if not raw.strip():
                continue
            report.lines_in += 1
            pii: Counter[str] = Counter()
            try:
                record = _clean(parse_line(raw, line_no), options, pii)
                # Rendered before the rules so that a line the chat template refuses counts as malformed
                # and never enters the dedup indexes.
                line = (json.dumps(to_output(record, tokenizer), ensure_ascii=False) + "\n").encode()
            except DataFormatError as e:
                if options.strict:
                    raise DataFormatError(e.line, e.reason, source=str(in_path)) from None
                report.drop("malformed", line_no, reason=e.reason)
                continue
            if dropped := _drop_reason(record, options, exact, near):
                rule, detail = dropped
                report.drop(rule, line_no, completion=preview(record.completion), **detail)
                continue
            report.kept += 1
            report.formats[record.kind] += 1
            report.pii.update(pii)
            if record.kind == "label":
                labelled.setdefault(str(record.label), []).append((line_no, line))
            elif is_val(line, options.val_fraction, options.seed):
                out["val.jsonl"].write(line)
                report.val += 1
            else:
                out["train.jsonl"].write(line)
                report.train += 1
        _write_stratified(labelled, options, out, report)
        report.input_sha256 = input_sha256.hexdigest()
        report.files = {name: out[name].sha256.hexdigest() for name in OUTPUT_FILES}
        manifest = "".join(f"{name} {digest}\n" for name, digest in report.files.items())
        report.output_sha256 = hashlib.sha256(manifest.encode()).hexdigest()
        out["report.json"].write(json.dumps(report.to_dict(), indent=2, ensure_ascii=False).encode() + b"\n")
    return report


def _write_stratified(labelled: dict[str, list[tuple[int, bytes]]], options: CurateOptions,
                      out: dict[str, _HashingFile], report: CurateReport) -> None:
    """Per label, the lowest-hash round(val_fraction · n) records (≥ 1 when n ≥ 2) to val; all in input order."""
    sides = {}
    for label, rows in labelled.items():
        n_val = round(options.val_fraction * len(rows))
        if options.val_fraction > 0 and len(rows) >= 2:
            n_val = max(1, n_val)
        ranked = sorted(rows, key=lambda r: split_key(r[1], options.seed))
        sides.update({line_no: (label, i < n_val) for i, (line_no, _) in enumerate(ranked)})
    for line_no, line in sorted(row for rows in labelled.values() for row in rows):
        label, val = sides[line_no]
        side = "val" if val else "train"
        out[f"{side}.jsonl"].write(line)
        setattr(report, side, getattr(report, side) + 1)
        report.labels.setdefault(side, Counter())[label] += 1


def _clean(record: Record, options: CurateOptions, pii_found: Counter[str]) -> Record:
    """Normalise, then redact PII (counting what was replaced into `pii_found`)."""
    if options.normalize:
        record = record.map(normalize_text)
    if options.pii:
        def scrub(text: str) -> str:
            redacted, found = redact(text)
            pii_found.update(found)
            return redacted
        record = record.map(scrub)
    return record
