"""A router replica refuses alike, for a second, the requests a model just refused for overload, without a call;
requests that may wait longer still reach the model."""

from deployments.protocol import GenerationResult, failure
from deployments.router.refusal_memo import RefusalMemo


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def memo_after(result):
    clock = Clock()
    memo = RefusalMemo(hold_s=1.0, clock=clock)
    memo.observe("smol", result)
    return memo, clock


def test_within_the_hold_a_request_that_cannot_wait_that_long_is_refused_with_the_same_retry_after():
    memo, clock = memo_after(failure("smol", "overloaded", "full", retry_after_s=3, expected_wait_s=7.5))
    refused = memo.check("smol", budget_s=4.0)
    assert refused is not None and refused.error.kind == "overloaded" and refused.error.retry_after_s == 3
    assert "expected wait 7.5 s, over this request's 4 s budget" in refused.error.message
    assert memo.check("smol", budget_s=8.0) is None  # a higher class (a larger budget) still asks the model
    assert memo.check("other-model", budget_s=1.0) is None
    clock.now += 1.5
    assert memo.check("smol", budget_s=4.0) is None  # past the hold: the model decides again


def test_a_count_bound_refusal_with_no_estimate_refuses_every_budget_for_the_hold():
    memo, _ = memo_after(failure("smol", "overloaded", "full", retry_after_s=1))
    assert memo.check("smol", budget_s=1e6) is not None


def test_answers_and_other_errors_are_not_remembered():
    memo, _ = memo_after(GenerationResult(model="smol", text="hi"))
    memo.observe("smol", failure("smol", "engine_dead", "gone"))
    memo.observe("smol", failure("smol", "overloaded", "handle queue full"))  # no retry_after: Serve's back-pressure
    assert memo.check("smol", budget_s=0.1) is None
