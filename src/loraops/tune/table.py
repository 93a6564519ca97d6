"""The study's progress table: one row per trial, narrow enough for an 80-column terminal."""

from __future__ import annotations

from rich import box
from rich.table import Table

from loraops.tune.score import Baseline

_SHORT = {"qv": "qv", "attention": "attn", "mlp": "mlp", "all-linear": "all"}
_STATE_STYLE = {"complete": "green", "pruned": "yellow", "failed": "red", "running": "cyan", "waiting": "dim"}


def _num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def trials_table(rows, baseline: Baseline, max_forgetting: float) -> Table:
    """rows: `study.TrialRow`s. score = domain − max(0, forgetting − max_forgetting); the best complete
    trial is marked with *; v is its registry version; tgt: attn = attention, all = all-linear."""
    done = [r for r in rows if r.state == "complete" and r.scores is not None]
    best = max(done, key=lambda r: r.scores.score).number if done else None
    table = Table(title=f"recipe search (domain: {baseline.metric}, base {baseline.domain:.2f}; "
                        f"forgetting bound {max_forgetting:.2f})", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for name, justify in (("#", "right"), ("r", "right"), ("tgt", "left"), ("lr", "right"), ("steps", "right"),
                          ("replay", "right"), ("state", "left"), ("domain", "right"), ("forget", "right"),
                          ("score", "right"), ("v", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    for r in rows:
        p, s = r.params, r.scores
        state = r.state if r.state != "pruned" else f"pruned@{r.step}"
        mark = "*" if r.number == best else ""
        table.add_row(f"{r.number}{mark}", str(p.get("rank", "-")), _SHORT.get(p.get("targets"), "-"),
                      f"{p['lr']:.1e}".replace("e-0", "e-") if "lr" in p else "-", str(p.get("steps", "-")),
                      _num(p.get("replay")), f"[{_STATE_STYLE.get(r.state, '')}]{state}[/]",
                      _num(s.domain if s else None), _num(s.forgetting if s else None),
                      _num(s.score if s else None), str(r.version) if r.version is not None else "-")
    return table
