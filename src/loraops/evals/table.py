"""The human view of an EvalReport: domain gain and forgetting side by side in one rich table."""

from __future__ import annotations

from rich.table import Table

from loraops.evals.classify import ClassificationScores
from loraops.evals.run import EvalReport

_NAMES = {"f1": "token F1", "field_accuracy": "JSON field accuracy", "macro_f1": "macro-F1"}  # primary -> row


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _delta(base: float | None, adapted: float | None, digits: int = 3) -> str:
    return "-" if base is None or adapted is None else f"{adapted - base:+.{digits}f}"


def summary_table(report: EvalReport) -> Table:
    table = Table("", "metric", "base", "adapted", "Δ",
                  title=f"{report.adapter} on {report.base['name']}", title_justify="left")
    b, a = report.domain_base, report.domain_adapted
    if isinstance(a, ClassificationScores):
        table.add_row("domain", "examples (base: untrained head)", str(b.examples), str(a.examples), "")
        for name, x, y in [("accuracy", b.accuracy, a.accuracy), ("macro-F1 *", b.macro_f1, a.macro_f1)]:
            table.add_row("", name, _num(x), _num(y), _delta(x, y))
        for i, label in enumerate(a.labels):  # rows: true label; columns: predicted, in label order
            table.add_row("", f"confusion {label} -> {'/'.join(a.labels)}", " ".join(map(str, b.confusion[i])),
                          " ".join(map(str, a.confusion[i])), "")
        table.add_section()
    elif b is not None and a is not None:
        table.add_row("domain", "examples", str(b.examples), str(a.examples), "")
        rows = [("exact match", b.exact_match, a.exact_match), ("token F1", b.f1, a.f1)]
        if a.field_accuracy is not None:
            rows += [("JSON field accuracy", b.field_accuracy, a.field_accuracy),
                     ("hallucinated fields", b.hallucination_rate, a.hallucination_rate)]
        for name, x, y in rows:
            star = " *" if name == _NAMES[a.primary] else ""
            table.add_row("", name + star, _num(x), _num(y), _delta(x, y))
        if a.field_accuracy is not None:
            table.add_row("", "JSON parse failures", str(b.parse_failures), str(a.parse_failures),
                          f"{a.parse_failures - b.parse_failures:+d}")
        table.add_section()
    g = report.general
    kind = "masked-LM perplexity" if g.measure == "masked-lm" else "perplexity"
    table.add_row("general", f"{kind} ({g.tokens} tokens)", _num(g.ppl_base), _num(g.ppl_adapted),
                  _delta(g.ppl_base, g.ppl_adapted))
    if g.qa_total:
        table.add_row("", f"questions ({g.qa_kept}/{g.qa_total} kept)", _num(g.qa_acc_base), _num(g.qa_acc_adapted),
                      _delta(g.qa_acc_base, g.qa_acc_adapted))
    table.add_row("", "KL(base ‖ adapted)", "", _num(g.kl_mean, 4), "")
    f = report.forgetting
    gain = report.domain_gain
    gain_text = "-" if gain is None else f"{gain:+.3f}"
    table.caption = (f"domain gain ({report.primary_metric}, *) {gain_text}   "
                     f"forgetting {f.score:.3f} = max(0, ppl {f.ppl_term:+.3f}, questions "
                     f"{'-' if f.qa_term is None else f'{f.qa_term:+.3f}'})")
    return table
