"""Curation streams: memory grows with the dedup state (bytes per kept record), not with the input size."""

import json
import random
import subprocess
import sys

MEASURE = """
import json, sys
import datasketch  # near-dedup imports it on first use: its code is not per-record state
from loraops.data import CurateOptions, curate

def kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

before = kib("VmRSS")
report = curate(sys.argv[1], sys.argv[2], CurateOptions(**json.loads(sys.argv[3])))
print(json.dumps({"growth": (kib("VmHWM") - before) * 1024, "kept": report.kept}))
"""


def peak_growth(tmp_path, lines, options: dict) -> tuple[int, int]:
    """Run curate in a fresh process; -> (peak RSS growth in bytes, records kept)."""
    path = tmp_path / "in.jsonl"
    with path.open("w") as f:
        f.writelines(lines)
    command = [sys.executable, "-c", MEASURE, str(path), str(tmp_path / "out"), json.dumps(options)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    measured = json.loads(result.stdout)
    return measured["growth"], measured["kept"]


def test_a_large_file_is_streamed_not_loaded(tmp_path):
    n, padding = 200_000, "x" * 1000
    lines = (json.dumps({"prompt": f"record {i}", "completion": padding}) + "\n" for i in range(n))
    growth, kept = peak_growth(tmp_path, lines, {"near_dedup": False, "pii": False, "normalize": False,
                                                 "filter_quality": False})
    input_bytes = (tmp_path / "in.jsonl").stat().st_size
    assert kept == n
    assert growth < 250 * n  # the exact-dedup set: ~110 bytes per record, plus allocator slack
    assert growth < input_bytes / 5


def test_near_dedup_memory_stays_within_its_per_record_budget(tmp_path):
    n = 10_000
    rng = random.Random(0)
    texts = (" ".join(f"w{rng.randrange(100_000)}" for _ in range(30)) for _ in range(n))
    lines = (json.dumps({"text": text}) + "\n" for text in texts)
    growth, kept = peak_growth(tmp_path, lines, {})
    assert kept == n
    assert growth < 4096 * n  # dedup.py documents ~3 KB per kept record
