"""OpenAI's chat-completions wire format: request validation, response bodies and the error shape.

Unknown request fields are ignored (clients send many optional ones), but values slm-fleet cannot honour
(``n > 1``, an empty message list, a malformed ``response_format``) are 400s in OpenAI's error shape.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.protocol import Contract, GenerationError, GenerationRequest, GenerationResult

STATUS_BY_KIND = {
    "bad_request": 400,
    "context_length_exceeded": 400,
    "overloaded": 503,
    "engine_dead": 503,
    "timeout": 504,
    "internal": 500,
}
RETRY_AFTER_S = 2


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = "output"
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

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
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's request that slm-fleet honours."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool = False

    def to_generation(self, specialist: str | None) -> GenerationRequest:
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        return GenerationRequest(
            request_id=new_id("chatcmpl"),
            messages=[m.model_dump() for m in self.messages],
            specialist=specialist,
            contract=self.response_format.contract() if self.response_format else None,
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop,
            logprobs=self.logprobs,
        )


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def error_body(message: str, err_type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def error_response(status: int, message: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    """An error in OpenAI's shape; 503s carry Retry-After so well-behaved clients back off."""
    err_type = "invalid_request_error" if status < 500 else "server_error"  # noqa: PLR2004
    if status == 401:  # noqa: PLR2004
        err_type = "authentication_error"
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else None
    return JSONResponse(error_body(message, err_type, code, param), status_code=status, headers=headers)


def generation_error_response(error: GenerationError) -> JSONResponse:
    return error_response(STATUS_BY_KIND.get(error.kind, 500), error.message, code=error.kind)


def usage(result: GenerationResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def completion_body(request_id: str, served_as: str, result: GenerationResult) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served_as,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason or "stop",
                "logprobs": None,
            }
        ],
        "usage": usage(result),
    }
    if result.extra:
        body["slmfleet"] = result.extra
    return body


def chunk_body(
    request_id: str, served_as: str, delta: dict[str, Any], finish_reason: str | None = None
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": served_as,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }
