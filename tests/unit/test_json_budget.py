"""Bounding JSON schemas to max_tokens: the longest answer the grammar accepts must fit, so no cut is possible."""

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployments.model.json_budget import SchemaBudgetError, fit_schema, longest_json_chars

FLAT = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "score": {"type": "number"},
        "ok": {"type": "boolean"},
        "nothing": {"type": "null"},
    },
    "required": ["name", "age"],
}
NESTED = {
    "type": "object",
    "properties": {
        "customer": {
            "type": "object",
            "properties": {"id": {"type": "string", "maxLength": 12}, "email": {"type": "string"}},
        },
        "order": {"type": "object", "properties": {"total": {"type": "number", "minimum": 0, "maximum": 10000}}},
    },
}
ARRAYS = {
    "type": "object",
    "properties": {
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "matrix": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
        "pair": {"type": "array", "prefixItems": [{"type": "boolean"}, {"type": "null"}]},
    },
}
NUMBERS = {
    "type": "object",
    "properties": {
        "i": {"type": "integer"},
        "n": {"type": "number"},
        "low": {"type": "integer", "maximum": -5},
        "pct": {"type": "number", "minimum": 0, "maximum": 100},
    },
}
ENUMS = {
    "type": "object",
    "properties": {
        "intent": {"enum": ["refund", "order_status", "technical_issue", "other"]},
        "version": {"const": 2},
        "mode": {"type": "string", "enum": ["a", "bb"]},
    },
}
ANY_OF = {
    "type": "object",
    "properties": {
        "value": {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
        "maybe": {"type": ["string", "null"]},
        "choice": {"oneOf": [{"type": "boolean"}, {"type": "array", "items": {"type": "string"}}]},
    },
}
REFS = {
    "$defs": {
        "Address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}},
        "Person": {"type": "object", "properties": {"name": {"type": "string"}, "home": {"$ref": "#/$defs/Address"}}},
    },
    "type": "object",
    "properties": {
        "buyer": {"$ref": "#/$defs/Person"},
        "seller": {"$ref": "#/$defs/Person"},
        "ship_to": {"allOf": [{"$ref": "#/definitions/Address"}]},
    },
    "definitions": {"Address": {"type": "object", "properties": {"line": {"type": "string"}}}},
}
RECURSIVE = {
    "$defs": {
        "Node": {"type": "object", "properties": {"value": {"type": "integer"}, "next": {"$ref": "#/$defs/Node"}}}
    },
    "$ref": "#/$defs/Node",
}
SCHEMAS = {"flat": FLAT, "nested": NESTED, "arrays": ARRAYS, "numbers": NUMBERS, "enums": ENUMS, "anyOf": ANY_OF}
SCHEMAS["refs"] = REFS


@pytest.mark.parametrize("name", SCHEMAS)
@pytest.mark.parametrize("max_tokens", [150, 256, 1000, 4096])
def test_longest_answer_of_a_fitted_schema_fits(name, max_tokens):
    fitted = fit_schema(SCHEMAS[name], max_tokens)
    longest = longest_json_chars(fitted)
    assert longest is not None
    assert longest <= max_tokens
    assert "$ref" not in json.dumps(fitted)


@pytest.mark.parametrize("name", sorted(set(SCHEMAS) - {"enums"}))
def test_unbounded_parts_make_the_schema_unbounded_until_fitted(name):
    assert longest_json_chars(SCHEMAS[name]) is None


def test_a_large_budget_uses_most_of_itself():
    fitted = fit_schema(FLAT, 1000)
    assert longest_json_chars(fitted) > 900
    assert fitted["properties"]["age"] == {"type": "integer", "minimum": 0, "maximum": 999999999}
    assert fitted["properties"]["score"] == {"type": "number", "minimum": -999999999, "maximum": 999999999}
    assert fitted["additionalProperties"] is False


def test_a_tight_budget_gets_fewer_digits_but_keeps_given_bounds():
    fitted = fit_schema(NUMBERS, 60)
    props = fitted["properties"]
    assert props["i"]["maximum"] < 999999999
    assert props["low"]["maximum"] == -5
    assert props["low"]["minimum"] <= -5
    assert (props["pct"]["minimum"], props["pct"]["maximum"]) == (0, 100)
    assert longest_json_chars(fitted) <= 60


def test_enums_and_consts_are_bounded_as_they_are():
    assert longest_json_chars(ENUMS) == len('{"intent": "technical_issue", "version": 2, "mode": "bb"}')


def test_counts_separators_quotes_and_literals_exactly():
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "string", "maxLength": 3},
            "b": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
            "c": {"enum": [0.1, "é", None]},
        },
    }
    # {"a": "xxx", "b": [false, false], "c": 0.10000000000000001}
    assert longest_json_chars(schema) == len('{"a": "xxx", "b": [false, false], "c": 0.10000000000000001}')


def test_numbers_count_sign_digits_and_six_fraction_digits():
    assert longest_json_chars({"type": "number", "minimum": -1000, "maximum": 10}) == len("-1000.000000")
    assert longest_json_chars({"type": "integer", "minimum": -5, "maximum": 120}) == 3
    assert longest_json_chars({"type": "integer", "minimum": 0}) is None


def test_shortest_answer_too_long_raises_with_the_tokens_it_needs():
    schema = {
        "type": "object",
        "properties": {f"field_{i}": {"type": "integer"} for i in range(10)},
        "required": [f"field_{i}" for i in range(10)],
    }
    with pytest.raises(SchemaBudgetError, match=r"max_tokens 5 is too small") as caught:
        fit_schema(schema, 5)
    needed = int(str(caught.value).rsplit(" ", 1)[-1])
    assert needed > 5
    assert longest_json_chars(fit_schema(schema, needed)) <= needed
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("schema", "keyword", "value"),
    [
        ({"type": "string", "maxLength": 5}, "maxLength", 5),
        ({"type": "string", "minLength": 4}, "maxLength", None),
        ({"type": "array", "items": {"type": "null"}, "maxItems": 3}, "maxItems", 3),
        ({"type": "integer", "minimum": 10, "maximum": 20}, "minimum", 10),
        ({"type": "integer", "minimum": 10, "maximum": 20}, "maximum", 20),
        ({"type": "number", "minimum": -3.5}, "minimum", -3.5),
    ],
)
def test_given_bounds_are_never_loosened(schema, keyword, value):
    for max_tokens in (20, 100, 5000):
        fitted = fit_schema(schema, max_tokens)
        if keyword == "maxLength" and value is None:
            assert fitted["maxLength"] >= 4
        elif keyword in ("maxLength", "maxItems", "maximum"):
            assert fitted[keyword] <= value
        else:
            assert fitted[keyword] >= value


def test_given_bound_is_kept_while_added_bounds_can_absorb_the_budget():
    schema = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 50}, "b": {"type": "string"}}}
    fitted = fit_schema(schema, 100)
    assert fitted["properties"]["a"]["maxLength"] == 50
    assert longest_json_chars(fitted) <= 100
    squeezed = fit_schema(schema, 40)
    assert squeezed["properties"]["a"]["maxLength"] < 50
    assert longest_json_chars(squeezed) <= 40


def test_floors_min_length_and_min_items_are_respected():
    schema = {
        "type": "object",
        "properties": {
            "s": {"type": "string", "minLength": 3},
            "xs": {"type": "array", "items": {"type": "boolean"}, "minItems": 2},
        },
    }
    assert longest_json_chars(fit_schema(schema, 34)) == len('{"s": "abc", "xs": [false, false]}')
    fitted = fit_schema(schema, 50)
    assert fitted["properties"]["s"]["maxLength"] >= 3
    assert fitted["properties"]["xs"]["maxItems"] >= 2
    assert longest_json_chars(fitted) <= 50
    with pytest.raises(SchemaBudgetError, match="at least 34"):
        fit_schema(schema, 33)


def test_recursive_schema_is_returned_unchanged_and_unbounded():
    fitted = fit_schema(RECURSIVE, 100)
    assert fitted == RECURSIVE
    assert fitted is not RECURSIVE
    assert longest_json_chars(RECURSIVE) is None


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "[a-z]+"},
        {"type": "string", "format": "email"},
        {"type": "object"},
        {"type": "object", "properties": {"a": {"type": "null"}}, "additionalProperties": {"type": "integer"}},
        {"type": "array"},
        {},
        {"$ref": "other.json#/x"},
    ],
)
def test_what_cannot_be_bounded_comes_back_unchanged(schema):
    assert fit_schema(schema, 100) == schema
    assert longest_json_chars(schema) is None


def test_top_level_ref_is_inlined_and_definitions_dropped():
    schema = {"$defs": {"A": {"type": "object", "properties": {"x": {"type": "string"}}}}, "$ref": "#/$defs/A"}
    fitted = fit_schema(schema, 50)
    assert set(fitted) == {"type", "properties", "additionalProperties"}
    assert longest_json_chars(fitted) <= 50


@pytest.mark.parametrize("name", SCHEMAS)
def test_fitted_schemas_compile_in_xgrammar(name):
    assert _grammar(fit_schema(SCHEMAS[name], 500)) is not None


def test_fixed_width_formats_are_bounded():
    assert longest_json_chars({"type": "string", "format": "date"}) == len('"2024-01-01"')


def test_input_is_not_mutated_and_output_is_deterministic():
    before = copy.deepcopy(REFS)
    assert fit_schema(REFS, 300) == fit_schema(REFS, 300)
    assert before == REFS


@settings(max_examples=200, deadline=None)
@given(max_tokens=st.integers(min_value=1, max_value=6000), name=st.sampled_from(sorted(SCHEMAS)))
def test_property_fitted_schema_fits_any_budget(max_tokens, name):
    try:
        fitted = fit_schema(SCHEMAS[name], max_tokens)
    except SchemaBudgetError:
        return
    assert longest_json_chars(fitted) <= max_tokens


def _schemas() -> st.SearchStrategy[dict]:
    small = st.integers(min_value=0, max_value=30)
    leaves = st.one_of(
        st.builds(lambda n: {"type": "string", "maxLength": n}, small),
        st.just({"type": "string"}),
        st.builds(lambda n: {"type": "string", "minLength": n}, st.integers(0, 5)),
        st.builds(lambda lo: {"type": "integer", "minimum": lo}, st.integers(-1000, 1000)),
        st.just({"type": "number"}),
        st.just({"type": "boolean"}),
        st.builds(lambda xs: {"enum": xs}, st.lists(st.text(max_size=8) | st.integers(), min_size=1, max_size=3)),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.builds(lambda i: {"type": "array", "items": i}, inner),
            st.builds(lambda i, n: {"type": "array", "items": i, "maxItems": n}, inner, small),
            st.builds(
                lambda ps: {"type": "object", "properties": ps},
                st.dictionaries(st.text("abcxyz", min_size=1, max_size=4), inner, max_size=4),
            ),
            st.builds(lambda bs: {"anyOf": bs}, st.lists(inner, min_size=1, max_size=3)),
        ),
        max_leaves=8,
    )


@settings(max_examples=300, deadline=None)
@given(schema=_schemas(), max_tokens=st.integers(min_value=1, max_value=3000))
def test_property_generated_schemas_fit_or_say_what_they_need(schema, max_tokens):
    try:
        fitted = fit_schema(schema, max_tokens)
    except SchemaBudgetError as error:
        needed = int(str(error).rsplit(" ", 1)[-1])
        assert needed > max_tokens
        assert longest_json_chars(fit_schema(schema, needed)) <= needed
        return
    assert longest_json_chars(fitted) <= max_tokens


# --- the bound is real: xgrammar itself accepts the longest answer and nothing longer ------------------------------


def _grammar(schema):
    xgrammar = pytest.importorskip("xgrammar")
    return xgrammar.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False)


def _accepts(schema, text):
    pytest.importorskip("xgrammar")
    from xgrammar.testing import _is_grammar_accept_string

    return _is_grammar_accept_string(_grammar(schema), text)


def test_xgrammar_accepts_exactly_up_to_the_computed_string_bound():
    fitted = fit_schema({"type": "string"}, 20)
    longest = longest_json_chars(fitted)
    assert longest == 20
    assert _accepts(fitted, '"' + "a" * (longest - 2) + '"')
    assert not _accepts(fitted, '"' + "a" * (longest - 1) + '"')


def _longest_text(schema) -> str:
    """The longest answer for the bounded subset used below, written the way xgrammar separates it."""
    if "enum" in schema:
        return max((json.dumps(v) for v in schema["enum"]), key=len)
    kind = schema["type"]
    if kind == "string":
        return '"' + "x" * schema["maxLength"] + '"'
    if kind in ("integer", "number"):
        bound = max(schema["minimum"], schema["maximum"], key=lambda b: len(str(b)))
        return str(bound) if kind == "integer" else f"{bound:.6f}"
    if kind == "array":
        return "[" + ", ".join([_longest_text(schema["items"])] * schema["maxItems"]) + "]"
    if kind == "boolean":
        return "false"
    parts = [f"{json.dumps(k)}: {_longest_text(v)}" for k, v in schema["properties"].items()]
    return "{" + ", ".join(parts) + "}"


@pytest.mark.parametrize("max_tokens", [120, 400])
def test_xgrammar_accepts_the_longest_answer_of_a_fitted_schema(max_tokens):
    schema = {
        "type": "object",
        "properties": {
            "intent": {"enum": ["refund", "order_status"]},
            "count": {"type": "integer"},
            "amount": {"type": "number"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "urgent": {"type": "boolean"},
        },
        "required": ["intent", "count", "amount", "tags", "urgent"],
    }
    fitted = fit_schema(schema, max_tokens)
    text = _longest_text(fitted)
    assert len(text) == longest_json_chars(fitted) <= max_tokens
    assert _accepts(fitted, text)
    first_tag = text.index('"tags": ["') + len('"tags": ["')
    assert not _accepts(fitted, text[:first_tag] + "x" + text[first_tag:])
