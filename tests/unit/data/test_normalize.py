from loraops.data.normalize import normalize_text


def test_nfkc_folds_full_width_letters_and_ligatures():
    assert normalize_text("ＡＢＣ ﬁle") == "ABC file"


def test_zero_width_characters_are_removed():
    assert normalize_text("in\u200bvoice\ufeff") == "invoice"


def test_line_endings_trailing_spaces_and_blank_runs_are_normalised():
    assert normalize_text("  a  \r\nb\r\r\r\n\n\nc\u00a0d \n") == "a\nb\n\nc d"


def test_indentation_inside_lines_is_kept():
    code = "def f():\n    return 1"
    assert normalize_text(code) == code
