"""Schemathesis against the router's own OpenAPI schema, in process over a fake backend: bodies generated to fit the
schema and bodies generated to break it (negative mode) get a 2xx or a 4xx, never a 5xx."""

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from deployments.pipeline.runner import PipelineRunner
from deployments.pipeline.tools import ToolRegistry
from deployments.router.api import build_api
from tests.unit.test_api import SPEC, FakeBackend

BACKEND = FakeBackend()
APP = build_api(SPEC, BACKEND, runner=PipelineRunner(SPEC, BACKEND.complete, ToolRegistry.from_spec(SPEC)))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


@schema.parametrize()
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_5xx(case):
    response = case.call()
    assert response.status_code < 500, (case.as_curl_command(), response.status_code, response.text[:300])
