"""Small deterministic prompt/completion (or text) JSONL files for training tests."""

import json
import random
from pathlib import Path

WORDS = ("invoice total vendor date amount EUR USD acme route ticket billing high priority "
         "please help the order number is shipped refund").split()


def write_records(path: Path, n: int = 48, seed: int = 0, text: bool = False) -> Path:
    r = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            prompt = " ".join(r.choice(WORDS) for _ in range(r.randint(3, 20)))
            completion = " ".join(r.choice(WORDS) for _ in range(r.randint(2, 10)))
            rec = {"text": prompt + " " + completion} if text else {"prompt": prompt, "completion": completion}
            f.write(json.dumps(rec) + "\n")
    return path
