"""What the router and the model deployments say to each other across Serve handles.

Plain dataclasses that pickle cheaply. Failures travel as data (:class:`GenerationError`) rather than as raised
exceptions, so the router maps them to HTTP statuses without guessing at wrapped Ray errors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from cluster.spec import SpecialistSpec

ErrorKind = Literal[
    "bad_request",
    "context_length_exceeded",
    "overloaded",
    "engine_dead",
    "timeout",
    "internal",
    "output_invalid",
    "cold_start",
    "adapter_refused",
]
ToolChoice = Literal["none", "auto", "required"]


@dataclass(frozen=True)
class ToolDef:
    """A function tool offered to the model: its arguments must validate against ``parameters``."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True)
class ToolCall:
    """A call the model made, OpenAI's way: ``arguments`` is a JSON text (an object) for the named tool."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Contract:
    """An output contract for one call: exactly one of the three is set (or none for free text)."""

    json_schema: dict[str, Any] | None = None
    choice: tuple[str, ...] | None = None
    regex: str | None = None

    def is_empty(self) -> bool:
        return self.json_schema is None and self.choice is None and self.regex is None


@dataclass(frozen=True)
class Tools:
    """The tools of one call and how the model may use them; decoding is constrained to valid calls.

    ``choice`` is none | auto | required, or the name of the one tool that must be called.
    """

    tools: tuple[ToolDef, ...]
    choice: str = "auto"
    parallel: bool = True

    def offered(self) -> tuple[ToolDef, ...]:
        """The tools the model may call under ``choice`` (none for "none", one for a named choice)."""
        if self.choice == "none":
            return ()
        if self.choice in ("auto", "required"):
            return self.tools
        return tuple(t for t in self.tools if t.name == self.choice)

    @property
    def call_required(self) -> bool:
        return self.choice not in ("none", "auto")

    def schemas(self) -> dict[str, dict[str, Any]]:
        return {t.name: t.parameters for t in self.offered()}


@dataclass(frozen=True)
class GenerationRequest:
    """One chat completion for a model deployment.

    ``specialist`` names the specialist whose instructions, contract and sampling defaults apply; the router
    attaches its settings as ``specialist_spec`` before the request crosses to a model app (which holds no spec).
    The explicit fields override those defaults (None means "use the default").
    """

    request_id: str
    messages: list[dict[str, Any]]
    specialist: str | None = None
    specialist_spec: SpecialistSpec | None = None
    contract: Contract | None = None
    max_tokens: int | None = None
    schema_tokens: int | None = None  # the budget JSON schemas are bounded to (default max_tokens); see retries
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[int, float] | None = None
    extra_sampling: dict[str, Any] = field(default_factory=dict)  # vLLM sampling extras (top_k, min_p, ...)
    tools: Tools | None = None
    trace_context: dict[str, str] | None = None  # W3C trace headers, so the model's span joins the caller's trace
    queue_budget_s: float | None = None  # how long it may wait for a batch slot (a pipeline's time left); see admission
    priority: str = "normal"  # the caller's class (its key's, or lower): low is refused first under overload
    escalated_from: str | None = None  # an escalated call: the model it left, and why (for the usage log)
    escalation_reason: str | None = None
    # a stream resumed after its replica died: the answer's text already sent, which the engine continues (the
    # prompt ends with it, inside the open assistant turn) instead of starting over
    continue_from: str | None = None


@dataclass(frozen=True)
class GenerationError:
    """Why a generation did not happen; ``kind`` decides the HTTP status the router answers with."""

    kind: ErrorKind
    message: str
    retry_after_s: int | None = None  # an ``overloaded`` refusal: when the queue is expected to have drained
    expected_wait_s: float | None = None  # an ``overloaded`` refusal: the wait the replica foresaw (None: unknown)


Readiness = Callable[[str], Awaitable[GenerationError | None]]
"""Why a model has no running replica (its error; it wakes one at zero), or None when it has one."""


def failure(
    model: str, kind: ErrorKind, message: str, retry_after_s: int | None = None, expected_wait_s: float | None = None
) -> GenerationResult:
    """A result that carries only an error."""
    return GenerationResult(model=model, error=GenerationError(kind, message, retry_after_s, expected_wait_s))


@dataclass
class GenerationResult:
    """A finished generation (or the last chunk of a stream), with real token counts from the engine."""

    model: str
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    mean_logprob: float | None = None
    error: GenerationError | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    token_logprobs: list[dict[str, Any]] | None = None  # OpenAI's logprobs.content entries, when asked for
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamDelta:
    """A piece of streamed text, or one complete tool call; the stream ends with a :class:`GenerationResult`.

    Text inside a tool call is never sent as text: a call leaves whole, once its closing tag is decoded.
    """

    text: str = ""
    tool_call: ToolCall | None = None
    logprobs: list[dict[str, Any]] | None = None
