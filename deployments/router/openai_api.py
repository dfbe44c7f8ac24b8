"""OpenAI's chat-completions wire format: request validation, response bodies and the error shape.

Every top-level field of OpenAI's request (``openai.types.chat.CompletionCreateParamsBase`` of the pinned
``openai`` package) is exactly one of: honoured (a field of :class:`ChatCompletionRequest`), a documented no-op
(:data:`NO_OP_FIELDS`: accepted and ignored, with the reason), or refused with a 400 that names it
(:data:`REFUSED_FIELDS`). vLLM's own sampling extras that clients send through ``extra_body`` are honoured from
:data:`VLLM_SAMPLING_EXTRAS`; any other field is a 400.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deployments.protocol import Contract, GenerationRequest, GenerationResult, ToolDef, Tools

STATUS_BY_KIND = {
    "bad_request": 400,
    "context_length_exceeded": 400,
    "output_invalid": 502,
    "overloaded": 503,
    "engine_dead": 503,
    "cold_start": 503,
    "adapter_refused": 503,  # a spec adapter that failed its probe (deployments/router/spec_adapter_probes.py)
    "timeout": 504,
    "internal": 500,
}
RETRY_AFTER_S = 2
MAX_N = 4  # choices per request: each is a whole generation on the model's replicas
MAX_TOP_LOGPROBS = 20  # OpenAI's own cap

NO_OP_FIELDS: dict[str, str] = {
    "user": "an end-user id for the provider's abuse monitoring; slm-fleet keeps none",
    "safety_identifier": "as user",
    "metadata": "stored-completion tags; nothing is stored",
    "store": "nothing is stored: completions cannot be listed or retrieved later",
    "service_tier": "one tier: every request is served the same way",
    "prompt_cache_key": "vLLM caches prompt prefixes by content, whatever the key",
    "prompt_cache_retention": "as prompt_cache_key",
    "prompt_cache_options": "as prompt_cache_key",
    "prediction": "predicted outputs only speed up decoding; the answer is the same without them",
    "reasoning_effort": "the fleet's models do not reason in hidden tokens; accepted so reasoning-aware clients work",
    "verbosity": "a hint for OpenAI's own models; length is set by max_tokens and the instructions",
}
REFUSED_FIELDS: dict[str, str] = {
    "audio": "audio output is not served: the fleet's models produce text",
    "functions": "the deprecated functions API is not served: send tools",
    "function_call": "the deprecated functions API is not served: send tool_choice",
    "web_search_options": "web search is not served: offer a function tool instead",
    "moderation": "moderation is not served by the fleet",
}
VLLM_SAMPLING_EXTRAS: dict[str, type | tuple[type, ...]] = {
    "top_k": int,
    "min_p": (int, float),
    "repetition_penalty": (int, float),
    "min_tokens": int,
    "stop_token_ids": list,
    "bad_words": list,
}


def _whole_characters(text: str) -> None:
    """JSON's \\uXXXX escapes can carry half a character (a lone UTF-16 surrogate), which no tokenizer takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise ValueError(
            f"contains a lone UTF-16 surrogate (\\u{ord(bad):04x} at character {exc.start}): not valid Unicode; "
            "send whole characters (a surrogate pair, or the character itself)"
        ) from None


class ChatMessage(BaseModel):
    """One message; text content only (a list of parts must be text parts)."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None  # an earlier assistant refusal; shown to nobody, accepted so histories round-trip

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, value: Any) -> Any:
        for part in value if isinstance(value, list) else []:
            kind = part.get("type")
            if kind not in ("text", "input_text", "output_text") or not isinstance(part.get("text"), str):
                raise ValueError(f"content parts of type {kind!r} are not served: the fleet's models take text")
            _whole_characters(part["text"])
        if isinstance(value, str):
            _whole_characters(value)
        return value

    @model_validator(mode="after")
    def _roles_fit_fields(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self

    def wire(self) -> dict[str, Any]:
        """The message as it travels to the model replica (OpenAI-shaped)."""
        data: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            data["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id:
            data["tool_call_id"] = self.tool_call_id
        if self.name:
            data["name"] = self.name
        return data


class FunctionCallText(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: str


class MessageToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallText


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None  # calls always follow the schema here (constrained decoding), strict or not

    @field_validator("parameters")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        return checked_schema(value)


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: dict[str, str]

    @field_validator("function")
    @classmethod
    def _has_name(cls, value: dict[str, str]) -> dict[str, str]:
        if not value.get("name"):
            raise ValueError("a named tool_choice needs function.name")
        return value


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = "output"
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        return checked_schema(value)


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema object")
        return self

    def contract(self) -> Contract | None:
        if self.type == "json_schema" and self.json_schema is not None:
            return Contract(json_schema=self.json_schema.schema_)
        if self.type == "json_object":
            return Contract(json_schema={"type": "object"})
        return None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False
    include_obfuscation: bool | None = None  # a side-channel guard for OpenAI's own streams: nothing to obfuscate


def checked_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema that is itself valid (else a 400 naming where), so no bad schema reaches the engine."""
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"not a valid JSON schema: {exc.message}") from None
    return schema


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat-completions request: every field honoured, a documented no-op, or a 400 (see the module)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1 - MAX_N)  # the engine's 64-bit seed (+1 per choice)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[int, float] | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    modalities: list[Literal["text"]] | None = None  # text is the only output there is
    vllm_extras: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _sort_fields(cls, data: Any) -> Any:
        """Drop documented no-ops, refuse what cannot be served, collect vLLM's extras (400 names the field)."""
        if not isinstance(data, dict):
            return data
        data = {key: value for key, value in data.items() if key not in NO_OP_FIELDS}
        for key, why in REFUSED_FIELDS.items():
            if data.get(key) is not None and not (key == "functions" and data[key] == []):  # {} asks for web search
                raise ValueError(f"'{key}' is not supported: {why}")
        extras = {key: data.pop(key) for key in list(data) if key in VLLM_SAMPLING_EXTRAS}
        for key in REFUSED_FIELDS:
            data.pop(key, None)
        for key, value in extras.items():
            if not isinstance(value, VLLM_SAMPLING_EXTRAS[key]) or isinstance(value, bool):
                raise ValueError(f"'{key}' must be of type {VLLM_SAMPLING_EXTRAS[key]}, got {value!r}")
        return {**data, "vllm_extras": extras}

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs set to true")
        if self.tool_choice is not None and not self.tools:
            raise ValueError("tool_choice needs tools")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = [t.function.name for t in self.tools or []]
            if self.tool_choice.function["name"] not in names:
                raise ValueError(f"tool_choice names '{self.tool_choice.function['name']}', not one of tools {names}")
        if self.stream and self.n > 1:
            raise ValueError("n > 1 is served without streaming only; set stream false or n 1")
        return self

    def tool_set(self) -> Tools | None:
        if not self.tools:
            return None
        choice = self.tool_choice or "auto"
        if isinstance(choice, NamedToolChoice):
            choice = choice.function["name"]
        defs = tuple(ToolDef(t.function.name, t.function.description, t.function.parameters) for t in self.tools)
        return Tools(defs, choice, self.parallel_tool_calls)

    def to_generation(self, specialist: str | None, index: int = 0) -> GenerationRequest:
        """The engine request for choice ``index`` (a seeded request gives each choice its own seed)."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        return GenerationRequest(
            request_id=new_id("chatcmpl"),
            messages=[m.wire() for m in self.messages],
            specialist=specialist,
            contract=self.response_format.contract() if self.response_format else None,
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop,
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs or 0,
            seed=None if self.seed is None else self.seed + index,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias=self.logit_bias,
            extra_sampling=dict(self.vllm_extras),
            tools=self.tool_set(),
        )


ChatMessage.model_rebuild()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def error_body(
    message: str, err_type: str, code: str | None = None, param: str | None = None, retry_after_s: int | None = None
) -> dict[str, Any]:
    """OpenAI's error object; a refusal that knows when to come back also says so in ``retry_after`` (seconds)."""
    error: dict[str, Any] = {"message": message, "type": err_type, "param": param, "code": code}
    if retry_after_s is not None:
        error["retry_after"] = retry_after_s
    return {"error": error}


def retry_after_headers(status: int, body: dict[str, Any]) -> dict[str, str] | None:
    """``Retry-After`` for a 409 (a keyed run in progress), 429 or 503: the body's own estimate when it has one,
    else a short default."""
    if status not in (409, 429, 503):
        return None
    error = body.get("error")
    seconds = error.get("retry_after") if isinstance(error, dict) else None
    return {"Retry-After": str(seconds if seconds is not None else RETRY_AFTER_S)}


def error_response(status: int, message: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    """An error in OpenAI's shape; 429/503 carry Retry-After so well-behaved clients back off."""
    err_type = "invalid_request_error" if status < 500 else "server_error"  # noqa: PLR2004
    if status == 401:  # noqa: PLR2004
        err_type = "authentication_error"
    body = error_body(message, err_type, code, param)
    return JSONResponse(body, status_code=status, headers=retry_after_headers(status, body))


def validation_error_body(errors: Any) -> dict[str, Any]:
    """A request that failed validation, as a 400 body naming the parameter (``messages.0.content``, ...)."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        return error_body("The request body is not valid JSON", "invalid_request_error", "invalid_json")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "extra_forbidden":
        return error_body(
            f"Unrecognized request argument supplied: {param}", "invalid_request_error", "unknown_parameter", param
        )
    where = f" at '{param}'" if param else ""
    message = str(first.get("msg", "")).removeprefix("Value error, ")
    return error_body(f"Invalid request{where}: {message}", "invalid_request_error", "invalid_request", param)


def usage(*results: GenerationResult) -> dict[str, int]:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def choice_body(index: int, result: GenerationResult) -> dict[str, Any]:
    """One ``choices[]`` entry: text and/or tool calls, the finish reason, and logprobs when they were asked."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": result.text if result.text or not result.tool_calls else None,
    }
    if result.tool_calls:
        message["tool_calls"] = [tool_call_body(call) for call in result.tool_calls]
    logprobs = {"content": result.token_logprobs, "refusal": None} if result.token_logprobs is not None else None
    return {"index": index, "message": message, "finish_reason": result.finish_reason or "stop", "logprobs": logprobs}


def tool_call_body(call: Any, index: int | None = None) -> dict[str, Any]:
    body = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    return body if index is None else {"index": index, **body}


def completion_body(
    request_id: str, served_as: str, results: list[GenerationResult], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A ChatCompletion with one choice per result; usage adds every choice's tokens up."""
    body: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served_as,
        "choices": [choice_body(i, r) for i, r in enumerate(results)],
        "usage": usage(*results),
    }
    if extra:
        body["slmfleet"] = extra
    return body


def chunk_body(
    request_id: str,
    served_as: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": served_as,
        "choices": [
            {
                "index": 0,
                "delta": delta,
                "finish_reason": finish_reason,
                "logprobs": {"content": logprobs, "refusal": None} if logprobs is not None else None,
            }
        ],
    }
