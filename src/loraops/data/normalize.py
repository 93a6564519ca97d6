"""Unicode and whitespace normalisation of one string.

NFKC folds compatibility forms (full-width letters, ligatures, non-breaking spaces) into their plain
equivalents, so that dedup and filters compare what a reader sees. Runs of spaces inside a line are kept:
they carry meaning in code and tables.
"""

from __future__ import annotations

import re
import unicodedata

_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")  # zero-width chars, BOM, soft hyphen
_ODD_SPACE = re.compile(r"[^\S\n\t ]")  # any other whitespace: \r, \v, \f, unicode spaces NFKC keeps
_TRAILING = re.compile(r"[ \t]+\n")
_BLANK_RUN = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE.sub("", text)
    text = _ODD_SPACE.sub(" ", text)
    text = _TRAILING.sub("\n", text)
    text = _BLANK_RUN.sub("\n\n", text)
    return text.strip()
