"""The tool registry: Python and HTTP tools behind one async call; failures come back as data, never swallowed."""

import asyncio
import json
import threading

import httpx
import pytest

from cluster.spec import parse_spec
from deployments.demo_tools import order_status
from deployments.pipeline.tools import ToolLoadError, ToolRegistry, import_callable

ARGS = {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}


def sync_lookup(order_id: str) -> dict:
    return {"id": order_id, "thread": threading.current_thread().name}


async def async_lookup(order_id: str) -> dict:
    await asyncio.sleep(0)
    return {"id": order_id}


def exploding(order_id: str) -> dict:
    raise RuntimeError(f"database down for {order_id}")


async def slow(order_id: str) -> dict:
    await asyncio.sleep(10)
    return {}


def not_json(order_id: str) -> object:
    return object()


def call(reg, name, args):
    return asyncio.run(reg.call(name, args))


def registry(**funcs):
    reg = ToolRegistry()
    for name, func in funcs.items():
        reg.add_python(name, func, ARGS, timeout_s=0.2)
    return reg


def test_sync_tools_run_off_the_event_loop():
    result = call(registry(lookup=sync_lookup), "lookup", {"order_id": "A1"})
    assert result.ok
    assert result.output["id"] == "A1"
    assert result.output["thread"] != threading.current_thread().name
    assert result.latency_s >= 0


def test_async_tools_are_awaited():
    result = call(registry(lookup=async_lookup), "lookup", {"order_id": "A1"})
    assert result.output == {"id": "A1"}


def test_exceptions_are_reported_with_type_and_message(caplog):
    result = call(registry(lookup=exploding), "lookup", {"order_id": "A1"})
    assert not result.ok
    assert result.error == "RuntimeError: database down for A1"
    assert result.output is None
    assert "tool lookup failed" in caplog.text


def test_timeouts_are_reported():
    result = call(registry(lookup=slow), "lookup", {"order_id": "A1"})
    assert result.error == "timed out after 0.2s"


def test_arguments_are_checked_against_the_schema_before_the_call():
    calls = []

    def record(order_id: str) -> None:
        calls.append(order_id)

    reg = registry(lookup=record)
    result = call(reg, "lookup", {"order": "A1"})
    assert "args_schema" in result.error
    assert "'order_id' is a required property" in result.error
    assert call(reg, "lookup", ["A1"]).error.endswith("expected a JSON object, got list")
    assert calls == []


def test_non_json_output_and_unknown_tools_are_errors():
    assert call(registry(lookup=not_json), "lookup", {"order_id": "A1"}).error.startswith("output is not JSON")
    assert call(registry(), "nope", {}).error == "no tool named 'nope' is registered"


def test_import_paths_resolve_or_explain():
    assert import_callable("deployments.demo_tools:order_status") is order_status
    with pytest.raises(ToolLoadError, match="cannot import"):
        import_callable("deployments.demo_tools:nope")
    with pytest.raises(ToolLoadError, match="cannot import"):
        import_callable("no_such_module_xyz:f")
    with pytest.raises(ToolLoadError, match="not callable"):
        import_callable("deployments.demo_tools:ORDERS")


def spec_with_tools(tools):
    return parse_spec({"models": {"smol": {"source": "x"}}, "tools": tools})


def test_registry_from_spec_with_python_and_http_tools():
    asyncio.run(_python_and_http_tools())


async def _python_and_http_tools():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        if request.url.path == "/fail":
            return httpx.Response(503, text="maintenance")
        return httpx.Response(200, json={"weather": "sunny"})

    spec = spec_with_tools(
        {
            "orders": {"python": "deployments.demo_tools:order_status", "args_schema": ARGS},
            "weather": {"url": "http://tools.test/weather", "args_schema": {"type": "object"}, "timeout_s": 1},
            "broken": {"url": "http://tools.test/fail", "args_schema": {"type": "object"}},
        }
    )
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    reg = ToolRegistry.from_spec(spec, http_client=client)
    assert "orders" in reg and "weather" in reg
    assert (await reg.call("orders", {"order_id": " a1001 "})).output["status"] == "shipped"
    assert (await reg.call("weather", {"city": "Oslo"})).output == {"weather": "sunny"}
    failed = await reg.call("broken", {"x": 1})
    assert failed.error == "RuntimeError: HTTP 503 from http://tools.test/fail: maintenance"
    assert seen == [{"city": "Oslo"}, {"x": 1}]
    await reg.aclose()


def test_http_tools_are_given_their_own_timeout_not_httpx_default():
    asyncio.run(_http_timeouts())


async def _http_timeouts():
    timeouts = []

    def handler(request: httpx.Request) -> httpx.Response:
        timeouts.append(request.extensions["timeout"])
        return httpx.Response(200, json={})

    spec = spec_with_tools(
        {"slow-api": {"url": "http://tools.test/x", "args_schema": {"type": "object"}, "timeout_s": 45}}
    )
    reg = ToolRegistry.from_spec(spec, http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    assert (await reg.call("slow-api", {})).ok
    assert timeouts == [{"connect": 45, "read": 45, "write": 45, "pool": 45}]
    await reg.aclose()


def test_stuck_sync_calls_of_one_tool_do_not_starve_another_tool():
    release = threading.Event()

    def stuck(order_id: str) -> dict:
        release.wait(30)
        return {}

    reg = registry(stuck=stuck, lookup=sync_lookup)

    async def scenario():
        # far more stuck calls than the default executor has threads (min(32, cores + 4))
        stuck_results = await asyncio.gather(*(reg.call("stuck", {"order_id": "x"}) for _ in range(40)))
        return stuck_results, await reg.call("lookup", {"order_id": "A1"})

    try:
        stuck_results, lookup = asyncio.run(scenario())
    finally:
        release.set()
    assert all(r.error == "timed out after 0.2s" for r in stuck_results)
    assert lookup.ok, lookup.error
    assert lookup.output["thread"].startswith("tool-sync_lookup")


def test_registry_from_spec_fails_fast_on_a_bad_import_path():
    spec = spec_with_tools({"t": {"python": "deployments.demo_tools:missing", "args_schema": ARGS}})
    with pytest.raises(ToolLoadError, match=r"deployments\.demo_tools:missing"):
        ToolRegistry.from_spec(spec)


def test_demo_tool_raises_for_unknown_orders():
    assert order_status("#b2001")["status"] == "cancelled"
    with pytest.raises(LookupError, match="no order 'Z9'"):
        order_status("Z9")


@pytest.mark.parametrize(
    ("tool", "problem"),
    [
        ({"args_schema": ARGS}, "exactly one of python"),
        ({"python": "a:b", "url": "http://x", "args_schema": ARGS}, "exactly one of python"),
        ({"python": "not a path", "args_schema": ARGS}, "pattern"),
        ({"python": "a:b", "args_schema": {"type": "string"}}, "type: object"),
        ({"url": "ftp://x", "args_schema": ARGS}, "pattern"),
    ],
)
def test_tool_spec_validation(tool, problem):
    with pytest.raises(Exception, match=problem):
        spec_with_tools({"t": tool})
