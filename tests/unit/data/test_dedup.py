import hashlib

from loraops.data.dedup import ExactDedup, NearDedup, record_key
from loraops.data.formats import Message, Record

TEXT = ("Please route this ticket to billing: my invoice INV-2024-001 shows a total of 1,234.56 EUR "
        "but the contract says 1,034.56 EUR, so I was charged twice for the same support plan this month. "
        "I have attached the contract and both bank statements; my customer number is 88213 and the account "
        "is registered to our Berlin office. Could you please refund the difference or send a corrected "
        "invoice before the end of the quarter, since our accounting team closes the books on the thirtieth.")


def text(line: int, body: str) -> Record:
    return Record("text", line, completion=body)


def test_records_equal_in_content_share_a_key_whatever_their_line():
    assert record_key(text(1, "a")) == record_key(text(9, "a"))
    assert len(record_key(text(1, "a"))) == 16


def test_the_kind_and_roles_are_part_of_the_key():
    assert record_key(text(1, "a")) != record_key(Record("completion", 1, completion="a"))
    chat = Record("chat", 1, completion="a", history=(Message("user", "q"),))
    as_system = Record("chat", 1, completion="a", history=(Message("system", "q"),))
    assert record_key(chat) != record_key(as_system)


def test_exact_duplicate_is_found_after_first_sighting():
    dedup = ExactDedup()
    assert not dedup.is_duplicate(text(1, "a"))
    assert dedup.is_duplicate(text(2, "a"))
    assert not dedup.is_duplicate(text(3, "b"))


def test_one_word_changed_in_a_long_text_is_a_near_duplicate_of_the_kept_line():
    dedup = NearDedup(0.85)
    assert dedup.find(text(1, TEXT)) is None
    assert dedup.find(text(5, TEXT.replace("twice", "again"))) == 1


def test_different_texts_are_not_near_duplicates():
    dedup = NearDedup(0.85)
    assert dedup.find(text(1, TEXT)) is None
    assert dedup.find(text(2, " ".join(reversed(TEXT.split())))) is None


def test_a_lower_threshold_catches_looser_copies():
    half = " ".join(TEXT.split()[:60]) + " and then something else entirely happened to the account yesterday"
    strict, loose = NearDedup(0.95), NearDedup(0.3)
    for dedup in (strict, loose):
        dedup.find(text(1, TEXT))
    assert strict.find(text(2, half)) is None
    assert loose.find(text(2, half)) == 1


def test_near_dedup_signatures_are_the_same_in_every_process():
    # Pinned: Python's hash() is salted per process, so a signature built on it would not match this.
    signature = NearDedup()._minhash(text(1, "the same words give the same signature")).hashvalues
    assert hashlib.sha256(signature.tobytes()).hexdigest() == (
        "320ce0f017c35e3cfebec652cbdcaed8b7f70302b437297c83aa53f801ac72d1")
