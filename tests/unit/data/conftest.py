import json
from pathlib import Path

import pytest


@pytest.fixture
def write_jsonl(tmp_path):
    """Write lines (dicts become JSON, str/bytes go in as they are) to a .jsonl file; return its path."""
    def write(lines, name: str = "in.jsonl") -> Path:
        path = tmp_path / name
        with path.open("wb") as f:
            for line in lines:
                if isinstance(line, dict):
                    line = json.dumps(line)
                f.write((line.encode() if isinstance(line, str) else line) + b"\n")
        return path
    return write


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
