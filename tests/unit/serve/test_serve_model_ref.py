"""Model ids parsed once: whole-string matches, canonical versions and weights, labels and routing keys."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loraops.serve.errors import BadRequestError
from loraops.serve.model_ref import ModelRef, Part


@pytest.mark.parametrize("text", ["name\n", "name@1\n", "a:0.5+b:0.5\n", "\nname", "na me", "name@", "@1",
                                  "name@1234567890", "a" * 65, "a:0.5\n+b:1", "a:1+b:1\n"])
def test_a_trailing_newline_or_any_stray_character_is_refused(text):
    with pytest.raises(BadRequestError) as e:
        ModelRef.parse(text)
    assert e.value.param == "model"


@pytest.mark.parametrize("text,canonical", [("name@01", "name@1"), ("name@001", "name@1"), ("name@0", "name@0"),
                                            ("a:0.70+b@02:-.5", "a:0.7+b@2:-0.5"), ("a:1.+b:-0", "a:1+b:0"),
                                            ("a:0.000001+b:4.000", "a:0.000001+b:4")])
def test_versions_and_weights_are_canonical(text, canonical):
    ref = ModelRef.parse(text)
    assert ref.id == str(ref) == canonical and ModelRef.parse(canonical) == ref


def test_parts_label_and_routing_key():
    ref = ModelRef.parse("zeta@03:0.7+alpha:-1")
    assert ref.parts == (Part("zeta", 3, 0.7), Part("alpha", None, -1.0)) and ref.is_composition
    assert ref.adapters == ("alpha", "zeta@3")
    assert ref.label == ref.routing_key == "alpha+zeta@3" == ModelRef.parse("alpha:2+zeta@3:0.1").routing_key
    single = ModelRef.parse("inv@007")
    assert not single.is_composition and single.label == single.routing_key == "inv@7"


def test_single_refuses_compositions_and_of_keeps_parsed_values():
    with pytest.raises(BadRequestError):
        ModelRef.parse("a:0.5+b:0.5", single=True)
    with pytest.raises(BadRequestError) as e:
        ModelRef.parse(7, param="name")
    assert e.value.param == "name"
    ref = ModelRef.parse("a")
    assert ModelRef.of(ref) is ref and ModelRef.of("a") == ref


ALMOST = (r"[a-c]{1,3}(@0{0,2}[0-9]{1,2})?(:-?[0-9]{0,2}\.?[0-9]{0,3})?"          # near-misses of the grammar
          r"(\+[a-c]{1,2}(@[0-9])?:-?[0-9]?\.?[0-9]{0,13}){0,4}\n?")


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.text(max_size=40), st.from_regex(ALMOST, fullmatch=True)))
def test_any_string_parses_or_is_a_400_and_canonical_forms_are_fixed_points(text):
    try:
        ref = ModelRef.parse(text)
    except BadRequestError:
        return
    assert ModelRef.parse(ref.id) == ref and ModelRef.parse(ref.id).id == ref.id
