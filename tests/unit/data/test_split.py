import json

from loraops.data.split import is_val

LINES = [json.dumps({"text": f"record {i}"}).encode() for i in range(5000)]


def test_split_is_deterministic_and_order_free():
    first = {line for line in LINES if is_val(line, 0.1, seed=0)}
    again = {line for line in reversed(LINES) if is_val(line, 0.1, seed=0)}
    assert first == again


def test_val_share_is_close_to_the_fraction():
    share = sum(is_val(line, 0.2, seed=0) for line in LINES) / len(LINES)
    assert 0.18 < share < 0.22


def test_seed_changes_the_split():
    assert [is_val(x, 0.5, seed=0) for x in LINES] != [is_val(x, 0.5, seed=1) for x in LINES]


def test_zero_fraction_puts_everything_in_train():
    assert not any(is_val(line, 0.0) for line in LINES)
