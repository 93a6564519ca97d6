"""Domain tasks: the user's validation data (val.jsonl), generated greedily by base and adapted model.

val.jsonl lines are what `loraops data curate` writes ({"prompt", "completion"}); chat lines
({"messages"}) are rendered with the base's chat template as curation renders them. {"text"}
lines have no prompt to answer and are skipped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from loraops.errors import DataFormatError, EvalDataError

VAL_FILE = "val.jsonl"


@dataclass(frozen=True)
class Example:
    prompt: str
    reference: str  # the completion with template tokens (<end_of_turn>, <eos>) removed


def data_file(data: str | Path) -> Path:
    """DIR (holding val.jsonl, as `data curate` writes it) or a .jsonl file -> the file."""
    path = Path(data).expanduser()
    if path.is_dir():
        if not (path / VAL_FILE).is_file():
            raise EvalDataError(f"{path} has no {VAL_FILE} (pass the directory `loraops data curate --out` wrote, "
                                f"or a .jsonl file)")
        return path / VAL_FILE
    if not path.is_file():
        raise EvalDataError(f"evaluation data {str(path)!r} does not exist")
    return path


def _strip_specials(text: str, tokenizer: Any) -> str:
    for token in sorted(getattr(tokenizer, "all_special_tokens", []), key=len, reverse=True):
        text = text.replace(token, "")
    return text.strip()


def load_examples(data: str | Path, tokenizer: Any, max_examples: int | None = None,
                  split: tuple[float, int] | None = None) -> list[Example]:
    """The first `max_examples` prompt/completion examples of the file (file order is the curated,
    seeded order, so the subset is deterministic).

    `split=(val_fraction, seed)` applies to a single .jsonl file the trainer also trained on: then
    only the records the trainer held out for validation are used (its own split function), never
    the ones it learned from."""
    path = data_file(data)
    if split is not None and Path(data).expanduser().is_file():
        from loraops.train.batches import load_dataset

        records = [r for r in load_dataset(path, *split).val if "text" not in r]
        outputs = [{"prompt": r["prompt"], "completion": r["completion"]} for r in records[:max_examples]]
    else:
        outputs = list(_read_outputs(path, tokenizer, max_examples))
    if not outputs:
        raise EvalDataError(f"{path} has no prompt/completion or chat examples to evaluate"
                            + (" in the trainer's validation split" if split is not None else ""))
    return [Example(o["prompt"], _strip_specials(o["completion"], tokenizer)) for o in outputs]


def _read_outputs(path: Path, tokenizer: Any, max_examples: int | None) -> Iterator[dict[str, str]]:
    from loraops.data.formats import parse_line, to_output

    count = 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = parse_line(raw, number)
            except DataFormatError as e:
                raise DataFormatError(e.line, e.reason, str(path)) from None
            if record.kind in ("text", "label"):
                continue
            yield to_output(record, tokenizer)
            count += 1
            if max_examples is not None and count >= max_examples:
                return


def trainer_split(data: str | Path, meta: dict) -> tuple[float, int] | None:
    """(val_fraction, seed) when `data` is the single .jsonl file the adapter was trained on (its
    loraops.json says so), else None."""
    hp = meta.get("hyperparameters") or {}
    trained_on, path = hp.get("data"), Path(data).expanduser()
    if not trained_on or not path.is_file() or "val_fraction" not in hp:
        return None
    if Path(trained_on).expanduser().resolve() != path.resolve():
        return None
    return float(hp["val_fraction"]), int(hp.get("seed", 0))


def examples_digest(examples: list[Example]) -> str:
    blob = json.dumps([[e.prompt, e.reference] for e in examples], ensure_ascii=False).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def auto_max_new_tokens(examples: list[Example], tokenizer: Any, cap: int = 256) -> int:
    """Room for the longest reference plus slack for EOS and small detours, at most `cap`."""
    longest = max(len(tokenizer(e.reference, add_special_tokens=False)["input_ids"]) for e in examples)
    return min(cap, longest + 8)
