"""Tools that pipeline steps call: Python callables by import path, and HTTP endpoints taking a JSON object.

Every tool is wrapped once, at registration, into one async shape (``async (args) -> output``), so the runner
never asks whether a tool is sync or async. Sync callables run on their own tool's bounded thread pool
(``ToolSpec.max_concurrency`` threads) so a slow lookup does not stall the event loop; on timeout the thread is
abandoned, not killed (Python cannot kill threads), and the stuck calls of one tool can only use up that tool's
threads, never another tool's. HTTP tools are given their own ``timeout_s`` (httpx's default of 5 s would win
otherwise).

A call never raises for the tool's sake: bad arguments, a timeout, an exception, an HTTP error status or an
output that is not JSON all come back as a :class:`ToolResult` with ``error`` set (and are logged), so the
pipeline result shows them. Pure asyncio: no Ray here.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cluster.escalation import schema_problem

if TYPE_CHECKING:
    import httpx

    from cluster.pipeline_spec import ToolSpec
    from cluster.spec import FleetSpec

logger = logging.getLogger(__name__)
ToolCall = Callable[[dict[str, Any]], Awaitable[Any]]
DEFAULT_TOOL_THREADS = 4


class ToolLoadError(ValueError):
    """A tool that cannot be registered (its import path does not resolve to a callable)."""


@dataclass(frozen=True)
class ToolResult:
    """What one tool call returned, or why it did not."""

    tool: str
    output: Any = None
    error: str | None = None
    latency_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Tool:
    """A registered tool: the uniform async call, its argument schema and its time limit."""

    name: str
    call: ToolCall
    args_schema: dict[str, Any]
    timeout_s: float = 10.0
    description: str = ""


def import_callable(path: str) -> Callable[..., Any]:
    """Resolve ``pkg.module:function``."""
    module_name, _, attr = path.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ToolLoadError(f"cannot import {path}: {exc}") from exc
    if not callable(target):
        raise ToolLoadError(f"{path} is not callable")
    return target


def python_call(func: Callable[..., Any], max_concurrency: int = DEFAULT_TOOL_THREADS) -> ToolCall:
    """Wrap a sync or async callable as ``async (args) -> output``; arguments are passed as keywords.

    A sync callable gets a pool of ``max_concurrency`` threads of its own: calls beyond it wait for a thread
    (inside the tool's timeout), and stuck calls cannot starve other tools.
    """
    if inspect.iscoroutinefunction(func):

        async def call_async(args: dict[str, Any]) -> Any:
            return await func(**args)

        return call_async

    name = getattr(func, "__name__", "tool")
    threads = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix=f"tool-{name}")

    async def call_in_thread(args: dict[str, Any]) -> Any:
        output = await asyncio.get_running_loop().run_in_executor(threads, lambda: func(**args))
        return await output if inspect.isawaitable(output) else output

    return call_in_thread


def http_call(url: str, client: Callable[[], httpx.AsyncClient], timeout_s: float) -> ToolCall:
    """POST the arguments as JSON within ``timeout_s``; a 2xx JSON body is the output, anything else an error."""

    async def call(args: dict[str, Any]) -> Any:
        response = await client().post(url, json=args, timeout=timeout_s)
        if response.status_code >= 300:  # noqa: PLR2004 - HTTP success range
            raise RuntimeError(f"HTTP {response.status_code} from {url}: {response.text[:200]}")
        try:
            return response.json()
        except ValueError:
            return response.text

    return call


class ToolRegistry:
    """Tools by name; build one per app (no global registry) and hand it to the pipeline runner."""

    def __init__(self, tools: Iterable[Tool] = (), *, clock: Callable[[], float] = time.monotonic) -> None:
        self._tools: dict[str, Tool] = {}
        self._clock = clock
        self._http: httpx.AsyncClient | None = None
        for tool in tools:
            self.register(tool)

    @classmethod
    def from_spec(
        cls,
        spec: FleetSpec,
        *,
        http_client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> ToolRegistry:
        """Every tool in ``spec.tools``; Python tools are imported now, so a bad path fails at startup."""
        registry = cls(clock=clock)
        registry._http = http_client
        for name, tool_spec in spec.tools.items():
            registry.register(registry._from_tool_spec(name, tool_spec))
        return registry

    def _from_tool_spec(self, name: str, tool: ToolSpec) -> Tool:
        if tool.python is not None:
            call = python_call(import_callable(tool.python), tool.max_concurrency)
        else:
            call = http_call(str(tool.url), self._http_client, tool.timeout_s)
        return Tool(name, call, tool.args_schema, tool.timeout_s, tool.description)

    def register(self, tool: Tool) -> None:
        self._tools[tool.name] = tool

    def add_python(
        self, name: str, func: Callable[..., Any], args_schema: dict[str, Any], timeout_s: float = 10.0
    ) -> None:
        """Register a callable directly (tests, embedding)."""
        self.register(Tool(name, python_call(func), args_schema, timeout_s))

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def get(self, name: str) -> Tool:
        return self._tools[name]

    def _http_client(self) -> httpx.AsyncClient:
        if self._http is None:
            import httpx  # only registries with HTTP tools need httpx

            self._http = httpx.AsyncClient()
        return self._http

    async def aclose(self) -> None:
        """Close the HTTP client this registry opened (or was given)."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def call(self, name: str, args: Any) -> ToolResult:
        """Validate ``args`` against the tool's schema, call it under its timeout, and report what happened."""
        start = self._clock()
        tool = self._tools.get(name)
        if tool is None:
            return ToolResult(name, error=f"no tool named '{name}' is registered")
        problem = _args_problem(args, tool.args_schema)
        if problem:
            return ToolResult(name, error=f"arguments do not match the tool's args_schema: {problem}")
        output, error = await _guarded(tool, args)
        return ToolResult(name, output if error is None else None, error, self._clock() - start)


def _args_problem(args: Any, schema: dict[str, Any]) -> str:
    if not isinstance(args, dict):
        return f"expected a JSON object, got {type(args).__name__}"
    return schema_problem(args, schema)


async def _guarded(tool: Tool, args: dict[str, Any]) -> tuple[Any, str | None]:
    """(output, None) or (None, error); exceptions become errors, cancellation still propagates."""
    try:
        async with asyncio.timeout(tool.timeout_s):
            output = await tool.call(args)
    except TimeoutError:
        logger.warning("tool %s timed out after %ss", tool.name, tool.timeout_s)
        return None, f"timed out after {tool.timeout_s}s"
    except Exception as exc:
        logger.warning("tool %s failed", tool.name, exc_info=True)
        return None, f"{type(exc).__name__}: {exc}"
    try:
        json.dumps(output)
    except (TypeError, ValueError) as exc:
        return None, f"output is not JSON: {exc}"
    return output, None
