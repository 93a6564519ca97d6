"""The curation report: what came in, what was kept, what each rule dropped and why (report.json), and
its summary as a rich table for the terminal."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any

from rich.table import Table

MAX_EXAMPLES = 3  # per rule: enough to see what a rule catches, small enough to read
PREVIEW_CHARS = 200


@dataclass
class CurateReport:
    input: str
    input_sha256: str = ""
    output_sha256: str = ""  # sha256 of "train.jsonl <sha256>\nval.jsonl <sha256>\n": the dataset's identity
    files: dict[str, str] = field(default_factory=dict)  # output file name -> sha256 of its bytes
    lines_in: int = 0  # non-blank input lines
    kept: int = 0
    train: int = 0
    val: int = 0
    formats: Counter[str] = field(default_factory=Counter)  # kept records per input kind
    dropped: Counter[str] = field(default_factory=Counter)  # per rule, "malformed" included
    pii: Counter[str] = field(default_factory=Counter)      # placeholders written, per PII type
    labels: dict[str, Counter[str]] = field(default_factory=dict)  # classification: split -> label -> records
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def drop(self, rule: str, line: int, **detail: Any) -> None:
        self.dropped[rule] += 1
        shown = self.examples.setdefault(rule, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append({"line": line, **detail})

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["labels"] = {side: dict(sorted(c.items())) for side, c in sorted(self.labels.items())}
        return {k: dict(sorted(v.items())) if isinstance(v, Counter) else v for k, v in values.items()}


def preview(text: str) -> str:
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"


def summary_table(report: CurateReport) -> Table:
    table = Table(title=f"curated {report.input}", show_header=True)
    table.add_column("step")
    table.add_column("records", justify="right")
    table.add_row("lines in", str(report.lines_in))
    for rule, n in sorted(report.dropped.items()):
        table.add_row(f"dropped: {rule}", str(n), style="yellow")
    for kind, n in sorted(report.pii.items()):
        table.add_row(f"redacted: {kind}", str(n), style="cyan")
    table.add_row("kept", f"{report.kept} (train {report.train}, val {report.val})", style="green")
    for side, counts in sorted(report.labels.items()):
        table.add_row(f"labels in {side}", ", ".join(f"{k}: {n}" for k, n in sorted(counts.items())))
    table.add_row("dataset sha256", report.output_sha256[:16])
    return table
