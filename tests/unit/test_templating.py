"""Templates and when-conditions: parsing at load time, rendering against a run scope, and safe failure."""

import pytest

from cluster.conditions import Condition, ConditionError
from cluster.templating import Ref, Template, TemplateError, render_structure

SCOPE = {
    "input": {"message": "where is A1001?", "tags": ["a", "b"]},
    "steps": {
        "classify": {"output": "refund", "error": None, "model": "smol", "status": "ok", "escalated": False},
        "extract": {"output": {"order_id": "A1001", "n": 3}, "error": None, "status": "ok"},
        "skipped": {"output": None, "error": None, "status": "skipped"},
    },
}


def test_template_renders_inputs_and_step_outputs():
    template = Template.parse(
        "msg={{ input.message }} intent={{steps.classify.output}} id={{ steps.extract.output.order_id }}"
    )
    assert template.render(SCOPE) == "msg=where is A1001? intent=refund id=A1001"
    assert [str(r) for r in template.refs()] == [
        "input.message",
        "steps.classify.output",
        "steps.extract.output.order_id",
    ]


def test_structures_render_as_json_and_none_as_empty():
    template = Template.parse("out={{ steps.extract.output }} gone=[{{ steps.skipped.output.order_id }}]")
    assert template.render(SCOPE) == 'out={"order_id": "A1001", "n": 3} gone=[]'


def test_single_hole_template_keeps_the_value():
    assert Template.parse("{{ steps.extract.output }}").render_value(SCOPE) == {"order_id": "A1001", "n": 3}
    assert Template.parse(" {{ steps.extract.output.n }}").render_value(SCOPE) == " 3"


def test_list_index_and_missing_keys_are_lenient():
    assert Template.parse("{{ input.tags.1 }}|{{ input.tags.9 }}|{{ input.nope }}").render(SCOPE) == "b||"


def test_render_structure_renders_nested_args():
    args = {"order_id": "{{ steps.extract.output.order_id }}", "meta": ["{{ input.tags }}", 7]}
    assert render_structure(args, SCOPE) == {"order_id": "A1001", "meta": [["a", "b"], 7]}


def test_text_without_holes_passes_through_even_with_braces():
    assert Template.parse('{"a": {"b": 1}}').render(SCOPE) == '{"a": {"b": 1}}'


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ input.message", "never closed"),
        ("{{ os.system }}", "start with input or steps"),
        ("{{ steps.classify }}", "steps.<step>.<field>"),
        ("{{ steps.classify.outptu }}", "field one of"),
        ("{{ steps.classify.error.x }}", "only steps.<step>.output has sub-fields"),
        ("{{ input.message() }}", "not a reference"),
        ("{{ input }}", "name an input key"),
        ("{{ __import__('os') }}", "not a reference"),
    ],
)
def test_bad_templates_are_rejected_with_a_reason(source, message):
    with pytest.raises(TemplateError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Template.parse(source)


def test_ref_knows_its_step():
    assert Ref.parse("steps.extract.output.order_id").step == "extract"
    assert Ref.parse("input.message").step is None


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("steps.classify.output == 'refund'", True),
        ('steps.classify.output != "refund"', False),
        ("steps.classify.output in ['refund', 'order_status']", True),
        ("steps.classify.output not in ['refund']", False),
        ("not steps.classify.output == 'other'", True),
        ("steps.extract.output.n >= 3 and steps.extract.output.n < 4.5", True),
        ("steps.classify.output == 'x' or (steps.extract.output.order_id == 'A1001')", True),
        ("steps.skipped.output", False),
        ("steps.skipped.output == null", True),
        ("steps.classify.escalated == false", True),
        ("steps.skipped.output.n > 1", False),
        ("'A10' in steps.extract.output.order_id", True),
        ("steps.classify.error", False),
        ("not not steps.classify.output", True),
    ],
)
def test_conditions_evaluate(source, expected):
    assert Condition.parse(source).evaluate(SCOPE) is expected


def test_condition_lists_its_references():
    refs = Condition.parse("steps.a.output in [steps.b.output, 'x'] and input.flag").refs()
    assert [str(r) for r in refs] == ["steps.a.output", "steps.b.output", "input.flag"]


@pytest.mark.parametrize(
    "source",
    [
        "",
        "steps.classify.output ==",
        "steps.classify.output = 'refund'",
        "__import__('os').system('x')",
        "steps.classify.output == 'refund' extra",
        "(steps.classify.output == 'refund'",
        "steps.classify.outputs == 'x'",
        "steps.classify.output + 1",
        "[1, 2",
        "'unterminated",
    ],
)
def test_bad_conditions_fail_to_parse(source):
    with pytest.raises(ConditionError):
        Condition.parse(source)


def test_incompatible_comparison_fails_at_run_time():
    with pytest.raises(ConditionError, match="cannot compare"):
        Condition.parse("steps.classify.output > 3").evaluate(SCOPE)
    with pytest.raises(ConditionError, match="'in' needs a list"):
        Condition.parse("'x' in steps.extract.output.n").evaluate(SCOPE)
