"""A short Schemathesis run against the real fleet's OpenAPI schema (positive and negative bodies): no 5xx. Model
calls that the schema allows are kept short (max_tokens at most 16, one choice) so the run stays in minutes."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(420)]
POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
CASES = [  # /v1/models takes no input: nothing to break
    ("/v1/chat/completions", "POST", POSITIVE),
    ("/v1/chat/completions", "POST", NEGATIVE),
    ("/v1/pipelines/{name}/runs", "POST", POSITIVE),
    ("/v1/pipelines/{name}/runs", "POST", NEGATIVE),
    ("/v1/models", "GET", POSITIVE),
]


def shortened(body):
    """A generated body with any generation kept short (a valid max_tokens of 2**31 would decode for minutes)."""
    if isinstance(body, dict):
        for field in ("max_tokens", "max_completion_tokens"):
            if isinstance(body.get(field), int) and body[field] > 16:
                body[field] = 16
        if isinstance(body.get("n"), int) and body["n"] > 1:
            body["n"] = 1
    return body


@pytest.mark.parametrize(("path", "method", "mode"), CASES, ids=[f"{m} {p} {g.value}" for p, m, g in CASES])
def test_the_real_fleet_answers_generated_requests_without_a_5xx(fleet, path, method, mode):
    schema = schemathesis.openapi.from_url(f"{fleet.url}/openapi.json")
    failures = []

    @given(case=schema[path][method].as_strategy(generation_mode=mode))
    @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case):
        if case.body is not None and not isinstance(case.body, (bytes, str)):
            case.body = shortened(case.body)
        response = case.call(base_url=fleet.url, timeout=120)
        if response.status_code >= 500:
            failures.append((case.as_curl_command(), response.status_code, response.text[:300]))

    check()
    assert not failures, failures
