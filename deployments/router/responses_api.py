"""OpenAI's Responses API (``POST /v1/responses``), served by translating to and from chat completions.

The OpenAI Agents SDK speaks Responses by default. slm-fleet has no response store, no built-in tools and
text-only models, so a Responses request becomes one chat-completions body, runs through the router's chat
path (a ``ChatComplete`` or ``ChatStream`` callable), and the answer is turned back into a ``Response`` or
its SSE events. Every request field is exactly one of HONOURED, NO_OPS (accepted, ignored, reason given) or
REFUSED (a 400 when set); a field OpenAI does not define is a 400 too, so nothing is dropped silently.

Input items: messages (text parts only), ``function_call`` (consecutive calls merge into one assistant
message with ``tool_calls``), ``function_call_output`` (a ``tool`` message) and ``reasoning`` (skipped: no
reasoning models, and a chat template has nowhere to replay another model's reasoning). Anything else
(images, files, item references, built-in tool calls) is a 400 that names it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from deployments.router.openai_api import error_response, retry_after_headers
from deployments.router.stream_guard import HEARTBEAT_S, SSE_HEARTBEAT, with_heartbeat

ChatComplete = Callable[[dict[str, Any]], Awaitable[tuple[int, dict[str, Any]]]]
ChatStream = Callable[[dict[str, Any]], Awaitable[tuple[int, dict[str, Any]] | AsyncIterator[dict[str, Any]]]]

HONOURED: dict[str, str] = {
    "model": "the chat body's model (a model, a specialist or pipeline:<name>)",
    "input": "string or items, translated to chat messages",
    "instructions": "a leading system message",
    "tools": "function tools become chat tools; other tool types are a 400",
    "tool_choice": "none/auto/required/function/allowed_tools (function tools) map to chat's tool_choice",
    "parallel_tool_calls": "passed through",
    "text": "format json_schema/json_object become chat's response_format; verbosity is ignored",
    "max_output_tokens": "chat's max_completion_tokens",
    "temperature": "passed through",
    "top_p": "passed through",
    "user": "passed through",
    "safety_identifier": "passed through",
    "metadata": "passed through and echoed",
    "stream": "SSE Responses events (not a ResponseCreateParamsBase key: it lives on the streaming variant)",
}
NO_OPS: dict[str, str] = {
    "access_programs": "one access level: every model is served the same way",
    "background": "false only: runs are always in the foreground (true is a 400)",
    "background_options": "only applies to background runs, which are refused",
    "context_management": "nothing is compacted: an over-long input is a 400 from the chat path",
    "image": "image options, and images are refused anyway",
    "include": "nothing extra exists to include; message.output_text.logprobs is a 400 (no logprobs)",
    "max_tool_calls": "bounds built-in tool calls, and there are no built-in tools",
    "prompt_cache_key": "vLLM's prefix cache is automatic and keyless",
    "prompt_cache_options": "vLLM's prefix cache is automatic",
    "prompt_cache_retention": "vLLM's prefix cache lives as long as the engine's memory allows",
    "reasoning": "no reasoning models: effort and summary have nothing to act on",
    "service_tier": "one service tier",
    "store": "nothing is stored: no response can be retrieved later, send the whole conversation each time",
    "stream_options": "include_obfuscation: events carry no obfuscation field",
    "top_logprobs": "logprobs are only returned through include, which refuses them",
    "truncation": "never truncates: an over-long input is a 400 whether disabled or auto",
}
REFUSED: dict[str, str] = {
    "previous_response_id": "not supported: nothing is stored, send the whole conversation in input",
    "conversation": "not supported: nothing is stored, send the whole conversation in input",
    "prompt": "not supported: no stored prompt templates, send instructions and input",
    "moderation": "not supported: no moderation model, moderate on the client",
}
REFUSED_INCLUDES = frozenset({"message.output_text.logprobs"})
MESSAGE_ROLES = frozenset({"user", "system", "developer", "assistant"})
TEXT_PARTS = frozenset({"input_text", "output_text"})
UNION_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict"})  # pydantic names union members in locs


class RequestError(Exception):
    """A request slm-fleet cannot serve; becomes a 400 in OpenAI's error shape."""

    def __init__(self, message: str, param: str | None = None, code: str = "unsupported_value") -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> TextFormat:
        if self.type == "json_schema" and (self.name is None or self.schema_ is None):
            raise ValueError("a json_schema format needs a name and a schema")
        return self


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(BaseModel):
    """The honoured fields, type-checked; items, tools and tool_choice are checked while translating."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    input: str | list[Any]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    user: str | None = None
    safety_identifier: str | None = None
    metadata: dict[str, str] | None = None
    stream: bool | None = False
    background: bool | None = None
    include: list[str] | None = None


def parse_request(payload: Any) -> ResponsesRequest:
    """Refuse what cannot be served (naming it), then type-check what can."""
    if not isinstance(payload, dict):
        raise RequestError("The request body must be a JSON object", None, "invalid_request")
    known = set(HONOURED) | set(NO_OPS) | set(REFUSED)
    for key in payload:
        if key not in known:
            raise RequestError(f"Unknown parameter: '{key}'", key, "unknown_parameter")
    for key, why in REFUSED.items():
        if payload.get(key) is not None:
            raise RequestError(f"'{key}' is {why}", key, "unsupported_parameter")
    try:
        request = ResponsesRequest.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _param(first["loc"])
        raise RequestError(f"Invalid request at '{param}': {first['msg']}", param, "invalid_request") from exc
    if request.background:
        raise RequestError("'background': true is not supported: responses run in the foreground", "background")
    refused = sorted(set(request.include or ()) & REFUSED_INCLUDES)
    if refused:
        raise RequestError(f"include '{refused[0]}' is not supported: no logprobs are returned", "include")
    return request


def _param(loc: tuple[int | str, ...]) -> str | None:
    """A pydantic error location as OpenAI names a param (``tools[0].name``), without union member tags."""
    param = ""
    for part in loc:
        if isinstance(part, int):
            param += f"[{part}]"
        elif part.split("[")[0] not in UNION_TAGS:
            param += f".{part}" if param else part
    return param or None


def to_chat_body(request: ResponsesRequest) -> dict[str, Any]:
    """The chat-completions body (OpenAI's field names) that answers this Responses request."""
    messages = [{"role": "system", "content": request.instructions}] if request.instructions else []
    if isinstance(request.input, str):
        messages.append({"role": "user", "content": request.input})
    else:
        messages += input_messages(request.input)
    if not messages:
        raise RequestError("input is empty: send at least one message", "input", "invalid_request")
    tools, tool_choice = chat_tools_and_choice(request)
    body: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "tools": tools,
        "tool_choice": tool_choice,
        "parallel_tool_calls": request.parallel_tool_calls,
        "response_format": chat_response_format(request.text),
        "max_completion_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "user": request.user,
        "safety_identifier": request.safety_identifier,
        "metadata": request.metadata,
    }
    return {key: value for key, value in body.items() if value is not None}


def input_messages(items: list[Any]) -> list[dict[str, Any]]:
    """Input items in order as chat messages; a call's results follow the assistant message that made it."""
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise RequestError(f"{param} must be an object", param, "invalid_request")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            messages.append(_message(item, param))
        elif kind == "function_call":
            _append_tool_call(messages, _tool_call(item, param))
        elif kind == "function_call_output":
            messages.append(_tool_result(item, param))
        elif kind != "reasoning":  # reasoning items are skipped: no reasoning model can take them back
            raise RequestError(
                f"Input item type '{kind}' is not supported: send messages, function_call and "
                "function_call_output items",
                f"{param}.type",
            )
    return messages


def _message(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in MESSAGE_ROLES:
        raise RequestError(f"{param}.role must be one of {sorted(MESSAGE_ROLES)}", f"{param}.role", "invalid_value")
    return {"role": role, "content": _text(item.get("content"), f"{param}.content")}


def _text(content: Any, param: str) -> str:
    """A string, or text parts joined by newlines (as vLLM joins a chat message's text parts)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(f"{param} must be a string or a list of content parts", param, "invalid_request")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise RequestError(
                f"Content part type '{kind}' is not supported: the models are text-only (input_text, output_text)",
                f"{param}[{j}].type",
            )
    return "\n".join(texts)


def _required_str(item: dict[str, Any], key: str, param: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise RequestError(f"{param}.{key} must be a non-empty string", f"{param}.{key}", "invalid_request")
    return value


def _tool_call(item: dict[str, Any], param: str) -> dict[str, Any]:
    arguments = item.get("arguments")
    if not isinstance(arguments, str):
        raise RequestError(f"{param}.arguments must be a JSON string", f"{param}.arguments", "invalid_request")
    name = _required_str(item, "name", param)
    return {
        "id": _required_str(item, "call_id", param),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def _append_tool_call(messages: list[dict[str, Any]], call: dict[str, Any]) -> None:
    """Calls right after an assistant message belong to it: chat keeps one assistant turn per model turn."""
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _tool_result(item: dict[str, Any], param: str) -> dict[str, Any]:
    call_id = _required_str(item, "call_id", param)
    return {"role": "tool", "tool_call_id": call_id, "content": _text(item.get("output"), f"{param}.output")}


def chat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Function tools in chat's nested shape; built-in, MCP and custom tools cannot run here."""
    converted = []
    for i, tool in enumerate(tools):
        kind = tool.get("type")
        if kind != "function":
            raise RequestError(
                f"Tool type '{kind}' is not supported: only function tools are served", f"tools[{i}].type"
            )
        function = {"name": _required_str(tool, "name", f"tools[{i}]")}
        function |= {k: tool[k] for k in ("description", "parameters", "strict") if tool.get(k) is not None}
        converted.append({"type": "function", "function": function})
    return converted


def chat_tools_and_choice(
    request: ResponsesRequest,
) -> tuple[list[dict[str, Any]] | None, str | dict[str, Any] | None]:
    """Chat's tools and tool_choice; ``allowed_tools`` becomes the allowed subset of tools and its mode."""
    tools = chat_tools(request.tools or [])
    choice = request.tool_choice
    if choice is None or choice in ("none", "auto", "required"):
        return tools or None, choice
    kind = choice.get("type") if isinstance(choice, dict) else choice
    names = {tool["function"]["name"] for tool in tools}
    if kind == "function" and isinstance(choice, dict):
        name = _required_str(choice, "name", "tool_choice")
        if name not in names:
            raise RequestError(
                f"tool_choice names '{name}', which is not in tools", "tool_choice.name", "invalid_value"
            )
        return tools, {"type": "function", "function": {"name": name}}
    if kind == "allowed_tools" and isinstance(choice, dict):
        allowed = {_required_str(t, "name", "tool_choice.tools") for t in choice.get("tools") or []}
        if not allowed <= names or choice.get("mode") not in ("auto", "required"):
            raise RequestError(
                "allowed_tools must list function tools from tools, mode auto or required", "tool_choice"
            )
        return [tool for tool in tools if tool["function"]["name"] in allowed], choice["mode"]
    raise RequestError(f"tool_choice '{kind}' is not supported: use none, auto, required or a function", "tool_choice")


def chat_response_format(text: TextConfig | None) -> dict[str, Any] | None:
    fmt = text.format if text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    schema = {"name": fmt.name, "schema": fmt.schema_, "strict": fmt.strict, "description": fmt.description}
    return {"type": "json_schema", "json_schema": {k: v for k, v in schema.items() if v is not None}}


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": parts}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def response_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat usage in Responses' names; no reasoning tokens, cached tokens when the chat path reports them."""
    if not usage:
        return None
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": int(usage.get("total_tokens", prompt + completion)),
    }


def final_status(finish_reason: str | None) -> tuple[str, dict[str, str] | None]:
    """(status, incomplete_details): a length cut is ``max_output_tokens``, a filter is ``content_filter``."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


class ResponseShell:
    """One response's id, time and the request fields every Response object echoes."""

    def __init__(self, request: ResponsesRequest) -> None:
        self.request = request
        self.id = _new_id("resp")
        self.created_at = int(time.time())
        self.extra: dict[str, Any] = {}  # top-level additions, i.e. the chat answer's ``slmfleet``

    def body(self, status: str, output: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        r = self.request
        text = r.text.model_dump(by_alias=True, exclude_none=True) if r.text else {}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "model": r.model,
            "output": output,
            "error": None,
            "incomplete_details": None,
            "instructions": r.instructions,
            "tools": r.tools or [],
            "tool_choice": r.tool_choice if r.tool_choice is not None else "auto",
            "parallel_tool_calls": r.parallel_tool_calls is not False,
            "temperature": r.temperature,
            "top_p": r.top_p,
            "max_output_tokens": r.max_output_tokens,
            "text": {"format": {"type": "text"}} | text,
            "metadata": r.metadata or {},
            "user": r.user,
            "safety_identifier": r.safety_identifier,
            "background": False,
            "truncation": "disabled",
            "usage": None,
            **fields,
            **self.extra,
        }


def from_chat_completion(shell: ResponseShell, answer: dict[str, Any]) -> dict[str, Any]:
    """A ChatCompletion as a Response: a message item for text, one function_call item per tool call."""
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    status, incomplete = final_status(choice.get("finish_reason"))
    parts = [output_text_part(message["content"])] if message.get("content") else []
    if message.get("refusal"):
        parts.append({"type": "refusal", "refusal": message["refusal"]})
    output = [message_item(_new_id("msg"), parts, "completed")] if parts else []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        call_id = call.get("id") or _new_id("call")
        item = function_call_item(
            _new_id("fc"), call_id, function.get("name", ""), function.get("arguments") or "", "completed"
        )
        output.append(item)
    if output and status == "incomplete":
        output[-1]["status"] = "incomplete"  # the cut fell in the last item
    if "slmfleet" in answer:
        shell.extra["slmfleet"] = answer["slmfleet"]
    return shell.body(status, output, usage=response_usage(answer.get("usage")), incomplete_details=incomplete)


class EventStream:
    """ChatCompletionChunks in, Responses SSE events out, each with the next ``sequence_number``."""

    def __init__(self, shell: ResponseShell) -> None:
        self.shell = shell
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self.positions: dict[str, int] = {}  # item id -> output_index
        self.text_item: dict[str, Any] | None = None
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> its open function_call item
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def event(self, kind: str, **fields: Any) -> str:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"

    def start(self) -> list[str]:
        shell = self.shell.body("in_progress", [])
        return [self.event("response.created", response=shell), self.event("response.in_progress", response=shell)]

    def on_chunk(self, chunk: dict[str, Any]) -> list[str]:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        if "slmfleet" in chunk:
            self.shell.extra["slmfleet"] = chunk["slmfleet"]
        events: list[str] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self.on_text(delta["content"])
            for call in delta.get("tool_calls") or []:
                events += self.on_tool_call(call)
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        return events

    def on_text(self, text: str) -> list[str]:
        events = []
        if self.text_item is None:
            item = message_item(_new_id("msg"), [], "in_progress")
            self.text_item, index = item, self._add(item)
            events.append(self.event("response.output_item.added", output_index=index, item=item))
            events.append(self._part_event("response.content_part.added", item, output_text_part("")))
            item["content"].append(output_text_part(""))
        part = self.text_item["content"][0]
        part["text"] += text
        where = self._where(self.text_item)
        events.append(self.event("response.output_text.delta", **where, content_index=0, delta=text, logprobs=[]))
        return events

    def on_tool_call(self, call: dict[str, Any]) -> list[str]:
        events = self.close_text("completed")
        index = call.get("index", 0)
        function = call.get("function") or {}
        item = self.calls.get(index)
        if item is None:
            call_id = call.get("id") or _new_id("call")
            item = function_call_item(_new_id("fc"), call_id, function.get("name") or "", "", "in_progress")
            self.calls[index] = item
            events.append(self.event("response.output_item.added", output_index=self._add(item), item=item))
        item["name"] = item["name"] or function.get("name") or ""  # in case the name came after the id
        if function.get("arguments"):
            item["arguments"] += function["arguments"]
            delta = self.event(
                "response.function_call_arguments.delta", **self._where(item), delta=function["arguments"]
            )
            events.append(delta)
        return events

    def close_text(self, status: str) -> list[str]:
        item, self.text_item = self.text_item, None
        if item is None:
            return []
        item["status"] = status
        part = item["content"][0]
        where = self._where(item)
        return [
            self.event("response.output_text.done", **where, content_index=0, text=part["text"], logprobs=[]),
            self._part_event("response.content_part.done", item, part),
            self.event("response.output_item.done", output_index=where["output_index"], item=item),
        ]

    def close_calls(self, status: str) -> list[str]:
        events = []
        for _, item in sorted(self.calls.items()):
            item["status"] = status
            where = self._where(item)
            events.append(self.event("response.function_call_arguments.done", **where, arguments=item["arguments"]))
            events.append(self.event("response.output_item.done", output_index=where["output_index"], item=item))
        self.calls = {}
        return events

    def finish(self) -> list[str]:
        """Close what is open (a cut leaves it incomplete), then the terminal event with the whole Response."""
        status, incomplete = final_status(self.finish_reason)
        item_status = "incomplete" if status == "incomplete" else "completed"
        events = self.close_text(item_status) + self.close_calls(item_status)
        body = self.shell.body(status, self.output, usage=response_usage(self.usage), incomplete_details=incomplete)
        return [*events, self.event(f"response.{status}", response=body)]

    def fail(self, error: dict[str, Any]) -> list[str]:
        """An ``error`` event, then ``response.failed`` holding what had been produced."""
        message = str(error.get("message") or "the model failed mid-stream")
        code = error.get("code")
        for item in self.output:
            if item["status"] == "in_progress":
                item["status"] = "incomplete"
        limited = code == "rate_limit_exceeded" or error.get("type") == "rate_limit_error"
        failure = {
            "code": "rate_limit_exceeded" if limited else "server_error",
            "message": message,
            "param": error.get("param"),
            "type": error.get("type") or "server_error",
        }
        body = self.shell.body("failed", self.output, usage=response_usage(self.usage), error=failure)
        return [
            self.event("error", code=None if code is None else str(code), message=message, param=error.get("param")),
            self.event("response.failed", response=body),
        ]

    def _add(self, item: dict[str, Any]) -> int:
        self.output.append(item)
        self.positions[item["id"]] = len(self.output) - 1
        return self.positions[item["id"]]

    def _where(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"item_id": item["id"], "output_index": self.positions[item["id"]]}

    def _part_event(self, kind: str, item: dict[str, Any], part: dict[str, Any]) -> str:
        return self.event(kind, **self._where(item), content_index=0, part=part)


async def stream_events(shell: ResponseShell, chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    """The SSE body. A failure after the first byte can only be reported in-band, as OpenAI does."""
    events = EventStream(shell)
    for event in events.start():
        yield event
    try:
        async for chunk in chunks:
            if isinstance(chunk.get("error"), dict):
                for event in events.fail(chunk["error"]):
                    yield event
                return
            for event in events.on_chunk(chunk):
                yield event
    except Exception as exc:  # a broken chat stream must still end the Response as failed
        for event in events.fail({"message": f"internal error: {type(exc).__name__}", "code": "internal"}):
            yield event
        return
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
    for event in events.finish():
        yield event


def chat_error(status: int, body: dict[str, Any]) -> JSONResponse:
    """The chat path's error as is; 429/503 keep Retry-After so clients back off."""
    return JSONResponse(body, status_code=status, headers=retry_after_headers(status, body))


def add_responses_routes(app: FastAPI, complete: ChatComplete, stream: ChatStream) -> None:
    """Mount ``POST /v1/responses`` on ``app``, answered through the given chat-completions callables."""

    @app.post("/v1/responses")
    async def create_response(http_request: Request) -> Response:
        try:
            payload = await http_request.json()
        except ValueError:
            return error_response(400, "The request body is not valid JSON", "invalid_json")
        try:
            request = parse_request(payload)
            chat_body = to_chat_body(request)
        except RequestError as err:
            return error_response(400, err.message, err.code, err.param)
        shell = ResponseShell(request)
        if not request.stream:
            status, answer = await complete(chat_body)
            if status != 200:  # noqa: PLR2004
                return chat_error(status, answer)
            return JSONResponse(from_chat_completion(shell, answer))
        chunks = await stream({**chat_body, "stream": True, "stream_options": {"include_usage": True}})
        if isinstance(chunks, tuple):
            return chat_error(*chunks)
        return StreamingResponse(
            with_heartbeat(stream_events(shell, chunks), HEARTBEAT_S, SSE_HEARTBEAT),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
