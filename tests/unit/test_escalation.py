"""The escalation policy as a pure function: contract checks, truncation retries, confidence, availability."""

import math

import pytest

from cluster.escalation import CallOutcome, check_contract, decide, low_confidence, schema_problem
from cluster.pipeline_spec import EscalationPolicy
from deployments.protocol import Contract, GenerationError, GenerationResult

SCHEMA = {
    "type": "object",
    "properties": {"order_id": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
    "required": ["order_id"],
    "additionalProperties": False,
}
JSON = Contract(json_schema=SCHEMA)
CHOICE = Contract(choice=("refund", "other"))
REGEX = Contract(regex=r"[A-Z][0-9]{4}")
POLICY = EscalationPolicy(to="big")


def ok(text, finish="stop", logprob=None):
    return CallOutcome(GenerationResult(model="smol", text=text, finish_reason=finish, mean_logprob=logprob))


def errored(kind):
    return CallOutcome(GenerationResult(model="smol", error=GenerationError(kind, "boom")))


def judge(outcome, contract=JSON, policy=POLICY, **kwargs):
    kwargs.setdefault("max_tokens", 64)
    return decide(outcome, contract, policy, **kwargs)


def test_valid_json_is_accepted_and_parsed():
    verdict = judge(ok('{"order_id": "A1001", "qty": 2}'))
    assert verdict.action == "accept"
    assert verdict.parsed == {"order_id": "A1001", "qty": 2}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"qty": 2}', "'order_id' is a required property"),
        ('{"order_id": "A1", "qty": 0}', "qty: 0 is less than the minimum of 1"),
        ('{"order_id": "A1", "extra": 1}', "Additional properties"),
        ("not json", "not valid JSON"),
    ],
)
def test_json_contract_failures_escalate_with_the_problem(text, problem):
    verdict = judge(ok(text))
    assert (verdict.action, verdict.reason) == ("escalate", "contract")
    assert problem in verdict.detail


def test_truncated_json_is_retried_with_more_tokens_first():
    truncated = ok('{"order_id": "A10', finish="length")
    first = judge(truncated, max_tokens=64)
    assert (first.action, first.max_tokens) == ("retry", 128)
    assert "cut off at max_tokens" in first.detail
    second = judge(truncated, max_tokens=128, retries_done=1)
    assert (second.action, second.reason) == ("escalate", "contract")


def test_retry_factor_and_count_are_configurable():
    policy = EscalationPolicy(to="big", retries=0)
    assert judge(ok("{", finish="length"), policy=policy).action == "escalate"
    policy = EscalationPolicy(to="big", retries=2, retry_max_tokens_factor=1.5)
    assert judge(ok("{", finish="length"), policy=policy, max_tokens=10).max_tokens == 15


def test_untruncated_bad_json_is_not_retried():
    assert judge(ok('{"order_id": 5}')).action == "escalate"


def test_choice_and_regex_contracts():
    assert judge(ok(" refund\n"), CHOICE).parsed == "refund"
    assert judge(ok("refunds"), CHOICE).action == "escalate"
    assert judge(ok("A1001"), REGEX).action == "accept"
    verdict = judge(ok("A1001 please"), REGEX)
    assert verdict.action == "escalate"
    assert "does not fully match" in verdict.detail


def test_free_text_always_passes_even_when_truncated():
    assert judge(ok("a long answer cut", finish="length"), None).parsed == "a long answer cut"
    assert check_contract("x", None, Contract()).ok


@pytest.mark.parametrize("kind", ["engine_dead", "overloaded", "internal"])
def test_unavailable_errors_escalate(kind):
    verdict = judge(errored(kind))
    assert (verdict.action, verdict.reason) == ("escalate", "unavailable")
    assert kind in verdict.detail


def test_timeouts_and_raised_calls_escalate():
    assert judge(CallOutcome(None, "timeout after 1s")).reason == "unavailable"
    assert judge(CallOutcome(None, "RayActorError: died")).action == "escalate"
    assert judge(CallOutcome(None)).action == "escalate"


@pytest.mark.parametrize("kind", ["bad_request", "context_length_exceeded"])
def test_request_errors_fail_without_escalating(kind):
    verdict = judge(errored(kind))
    assert (verdict.action, verdict.reason) == ("fail", "error")


def test_low_confidence_compares_a_probability_with_exp_mean_logprob():
    policy = EscalationPolicy(to="big", min_confidence=0.5)
    assert judge(ok('{"order_id": "A"}', logprob=math.log(0.6)), policy=policy).action == "accept"
    verdict = judge(ok('{"order_id": "A"}', logprob=math.log(0.4)), policy=policy)
    assert (verdict.action, verdict.reason) == ("escalate", "low_confidence")
    assert "0.400" in verdict.detail


def test_threshold_one_always_escalates_and_zero_never():
    always = EscalationPolicy(to="big", min_confidence=1.0)
    assert judge(ok('{"order_id": "A"}', logprob=0.0), policy=always).action == "escalate"
    assert judge(ok('{"order_id": "A"}', logprob=None), policy=always).action == "escalate"
    never = EscalationPolicy(to="big", min_confidence=0.0)
    assert judge(ok('{"order_id": "A"}', logprob=-50.0), policy=never).action == "accept"


def test_missing_logprobs_do_not_escalate_below_one():
    assert low_confidence(None, 0.9) == ""


def test_reasons_can_be_narrowed():
    only_down = EscalationPolicy(to="big", reasons=["unavailable"], min_confidence=1.0)
    assert judge(ok("nope"), policy=only_down).action == "fail"
    assert judge(ok('{"order_id": "A"}'), policy=only_down).action == "accept"
    assert judge(errored("engine_dead"), policy=only_down).action == "escalate"


def test_nowhere_to_escalate_fails_or_accepts():
    assert judge(ok("nope"), can_escalate=False).action == "fail"
    assert judge(errored("engine_dead"), can_escalate=False).action == "fail"
    unsure = ok('{"order_id": "A"}', logprob=-9.0)
    assert judge(unsure, policy=EscalationPolicy(to="big", min_confidence=0.9), can_escalate=False).action == "accept"


def test_schema_problem_names_the_path():
    assert schema_problem({"order_id": "x", "qty": "2"}, SCHEMA).startswith("qty:")
    assert schema_problem({"order_id": "x"}, SCHEMA) == ""


def test_policy_merge_overrides_only_set_keys():
    base = EscalationPolicy(to="big", min_confidence=0.2, retries=2)
    merged = base.merged(EscalationPolicy(min_confidence=1.0))
    assert (merged.to, merged.min_confidence, merged.retries) == ("big", 1.0, 2)
    assert base.merged(EscalationPolicy(to=None)).to is None
    assert base.merged(None) is base
