"""Admission by deadline: a request queues only while its expected wait fits its budget; refusals say when to
come back. And the measurements it is fed: the decode rate of a full batch and what a request may cost."""

import pytest

from cluster.admission import PRIORITY_SHARE, decide_admission, queue_budget, tighter
from deployments.model.decode_rate import DEFAULT_EXPECTED_TOKENS, MIN_SAMPLES, DecodeRate


def admit(**overrides):
    args = {"work_ahead_tokens": 0.0, "decode_rate_tokens_per_s": 100.0, "waiting": 0, "max_waiting": 32}
    return decide_admission(**{**args, "budget_s": 10.0, **overrides})


def test_a_request_whose_expected_wait_fits_the_budget_is_admitted():
    verdict = admit(work_ahead_tokens=900.0, waiting=9)
    assert verdict.admitted and verdict.expected_wait_s == pytest.approx(9.0)


def test_beyond_the_budget_it_is_refused_with_the_time_the_excess_needs_to_drain():
    verdict = admit(work_ahead_tokens=1_450.0, waiting=12)
    assert not verdict.admitted
    assert verdict.expected_wait_s == pytest.approx(14.5)
    assert verdict.retry_after_s == 5  # 14.5 s of work against a 10 s budget: 4.5 s more, rounded up
    assert "14.5 s is over the 10 s objective" in verdict.reason


def test_the_same_count_of_waiting_requests_is_judged_by_their_tokens_not_their_number():
    short = admit(work_ahead_tokens=16 * 20.0, waiting=16)
    long = admit(work_ahead_tokens=16 * 256.0, waiting=16)
    assert short.admitted and not long.admitted


def test_a_smaller_budget_refuses_sooner():
    assert admit(work_ahead_tokens=500.0).admitted
    assert not admit(work_ahead_tokens=500.0, budget_s=2.0).admitted


def test_the_count_bound_is_a_hard_ceiling_even_when_the_wait_would_fit():
    verdict = admit(work_ahead_tokens=10.0, waiting=32)
    assert not verdict.admitted and "max_queued_requests 32" in verdict.reason
    assert verdict.retry_after_s == 1


def test_before_the_rate_is_measured_only_the_count_bound_decides():
    assert admit(work_ahead_tokens=1e9, decode_rate_tokens_per_s=None, waiting=31).admitted
    assert not admit(decode_rate_tokens_per_s=None, waiting=32).admitted


def test_the_decode_rate_is_the_per_sequence_rate_times_the_batch():
    rate = DecodeRate(batch_size=8)
    for _ in range(MIN_SAMPLES - 1):
        rate.finished(40, 2.0)
    assert rate.tokens_per_s() is None  # too few to judge by
    rate.finished(40, 2.0)
    assert rate.tokens_per_s() == pytest.approx(20.0 * 8)


def test_the_rate_follows_recent_requests_only():
    rate = DecodeRate(batch_size=1, samples=4)
    for _ in range(4):
        rate.finished(10, 1.0)
    for _ in range(4):
        rate.finished(10, 5.0)  # the batch got slower under load: the old, fast samples are gone
    assert rate.tokens_per_s() == pytest.approx(2.0)


def test_a_request_costs_its_max_tokens_capped_by_the_longest_recent_answer():
    rate = DecodeRate(batch_size=4)
    assert rate.expected_tokens(None) == DEFAULT_EXPECTED_TOKENS
    assert rate.expected_tokens(32) == 32
    for tokens in (12, 20, 7, 15):
        rate.finished(tokens, 1.0)
    assert rate.expected_tokens(512) == 20  # this model's answers run to 20 tokens, not 512
    assert rate.expected_tokens(5) == 5
    assert rate.expected_tokens(None) == 20


def test_under_pressure_low_priority_is_refused_first_then_normal_then_high():
    # 7 s of work queued against a 10 s objective: high (10 s) fits, normal (8 s) fits, low (5 s) does not
    verdicts = {
        p: admit(work_ahead_tokens=700.0, budget_s=queue_budget(10.0, p, None)).admitted for p in PRIORITY_SHARE
    }
    assert verdicts == {"high": True, "normal": True, "low": False}
    nine = {p: admit(work_ahead_tokens=900.0, budget_s=queue_budget(10.0, p, None)).admitted for p in PRIORITY_SHARE}
    assert nine == {"high": True, "normal": False, "low": False}


def test_a_callers_own_smaller_budget_wins_over_its_class_share():
    assert queue_budget(10.0, "high", 2.5) == 2.5
    assert queue_budget(10.0, "low", 30.0) == 5.0
    assert queue_budget(10.0, "unknown-class", None) == 8.0  # treated as normal


def test_the_tighter_of_two_budgets_and_none_is_no_budget():
    assert tighter(None, None) is None
    assert tighter(3.0, None) == tighter(None, 3.0) == 3.0
    assert tighter(3.0, 0.0) == 0.0  # a pipeline with no time left gives its calls none
    assert queue_budget(10.0, "high", 0.0) == 0.0
