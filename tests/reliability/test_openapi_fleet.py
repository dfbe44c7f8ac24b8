"""A short Schemathesis run against the real fleet's OpenAPI schema (positive and negative bodies): no 5xx. Model
calls that the schema allows are kept short (max_tokens at most 16, one choice) so the run stays in minutes."""

import schemathesis
from hypothesis import HealthCheck, settings

schema = schemathesis.pytest.from_fixture("fleet_schema")


def shortened(body):
    """A generated body with any generation kept short (a valid max_tokens of 2**31 would decode for minutes)."""
    if isinstance(body, dict):
        for field in ("max_tokens", "max_completion_tokens"):
            if isinstance(body.get(field), int) and body[field] > 16:
                body[field] = 16
        if isinstance(body.get("n"), int) and body["n"] > 1:
            body["n"] = 1
    return body


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_real_fleet_answers_generated_requests_without_a_5xx(case, fleet):
    case.body = shortened(case.body)
    response = case.call(base_url=fleet.url, timeout=120)
    assert response.status_code < 500, (case.as_curl_command(), response.status_code, response.text[:300])
