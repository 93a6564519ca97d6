"""metrics.jsonl (one JSON object per line: a step, a skipped step, or a val loss) and the progress bar."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class MetricsLog:
    """Appends records to OUT/metrics.jsonl and keeps them in memory (they go into checkpoints, so a
    resumed run rewrites the file to exactly what it had at its checkpoint)."""

    def __init__(self, path: str | Path, records: list[dict] | None = None, enabled: bool = True):
        self.path, self.records, self.enabled = Path(path), list(records or []), enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def log(self, record: dict) -> None:
        self.records.append(record)
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())

    def last(self, key: str):
        """The newest value of `key` among records of steps that were not skipped."""
        return next((r[key] for r in reversed(self.records) if key in r and not r.get("skipped")), None)


def progress_bar(enabled: bool) -> Progress:
    """Step bar with loss, tokens/s and ETA (on stderr, so stdout stays clean for scripts)."""
    return Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled)
