"""General-text replay: plain prose mixed into a task's training data to limit forgetting.

A single-task adapter trained only on, say, invoice → JSON pairs drifts on everything else (the
evaluation's forgetting score measures how far). Mixing in a little general text, trained with an
ordinary language-model loss, anchors the adapter to the base's behaviour on plain text — the
"replay" remedy for catastrophic forgetting.

Source: the docstrings of CPython's own standard-library modules, read from the source files with
`ast` (nothing is imported or executed), so it is offline, licence-clean (PSF) and the same for a
given Python. It is deliberately a different source from the evaluation's general corpus
(`pydoc_data.topics`, the language reference), and any paragraph that also appears there is
dropped: replay must not train on the text that forgetting is measured on.
"""

from __future__ import annotations

import ast
import random
import re
import sysconfig
from functools import lru_cache
from pathlib import Path


def _prose(paragraph: str, min_chars: int) -> str | None:
    """One docstring paragraph as a line of prose, or None for code, tables, lists and short text."""
    lines = paragraph.splitlines()
    if any(line.lstrip().startswith((">>>", "...", "-", "*", ":", "|", "+")) for line in lines):
        return None
    text = " ".join(paragraph.split())
    if len(text) < min_chars or "::" in text or "=" in text:
        return None
    letters = sum(c.isalpha() or c.isspace() for c in text)
    return text if letters / len(text) > 0.9 else None


@lru_cache(maxsize=4)
def _stdlib_paragraphs(min_chars: int) -> tuple[str, ...]:
    """Every prose paragraph of the stdlib's module, class and function docstrings, sorted."""
    from loraops.evals.general import corpus_passages

    root = Path(sysconfig.get_paths()["stdlib"])
    held_out = set(corpus_passages(count=10**6, min_chars=1))   # the eval's whole corpus, not only its sample
    found = set()
    for path in sorted(root.glob("*.py")):                       # top-level modules: plenty, and quick
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef))]
        for node in nodes:
            doc = ast.get_docstring(node)
            for para in re.split(r"\n\s*\n", doc or ""):
                text = _prose(para, min_chars)
                if text is not None and text not in held_out:
                    found.add(text)
    return tuple(sorted(found))


def replay_records(count: int, seed: int = 0, min_chars: int = 200) -> list[dict]:
    """`count` {"text": paragraph} records of general prose, a seeded sample (fewer if the corpus is smaller)."""
    if count <= 0:
        return []
    paragraphs = list(_stdlib_paragraphs(min_chars))
    random.Random(seed).shuffle(paragraphs)
    return [{"text": p} for p in paragraphs[:count]]
