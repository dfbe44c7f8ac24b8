"""The escalation policy as a pure function: given one model call's outcome, accept, retry, escalate or fail.

Nothing here calls a model. The pipeline runner makes the call, hands the outcome to :func:`decide` and applies
the verdict, which keeps the policy testable without a fleet (like Ray Serve's autoscaling policies).

Checks, in order:

1. **unavailable**: the caller raised or timed out, or the result carries an error of kind engine_dead,
   overloaded, internal or timeout. Other error kinds (bad_request, context_length_exceeded) fail the step: a
   larger model would get the same bad request.
2. **contract**: the text must satisfy the call's contract: parse as JSON and validate against the schema
   (``jsonschema`` when installed, else a minimal structural check), be one of the choices, or fully match the
   regex. Constrained decoding is not enough: a string or number may run on until ``max_tokens`` and leave
   truncated JSON with finish_reason "length". A truncated output is first retried on the same model with
   ``max_tokens`` multiplied by ``retry_max_tokens_factor`` (up to ``retries`` times), then escalated.
3. **low_confidence**: ``min_confidence`` is a probability in [0, 1], compared with ``exp(mean_logprob)``, the
   geometric-mean token probability. Below it escalates; 1.0 always escalates (even without logprobs); 0 never.

On the LLM tier itself there is nowhere to go: contract and availability failures fail the step, low confidence
is accepted.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from cluster.pipeline_spec import EscalationPolicy

try:  # jsonschema ships with Ray and the test extra; the fallback keeps cluster/ importable without it
    import jsonschema
except ImportError:  # pragma: no cover - exercised only where jsonschema is absent
    jsonschema = None  # type: ignore[assignment]

UNAVAILABLE_KINDS = frozenset({"engine_dead", "overloaded", "internal", "timeout", "cold_start", "adapter_refused"})
Action = Literal["accept", "retry", "escalate", "fail"]


class ErrorLike(Protocol):
    kind: str
    message: str


class ToolCallLike(Protocol):
    name: str
    arguments: str  # JSON text


class ResultLike(Protocol):
    """What :func:`decide` reads from a ``deployments.protocol.GenerationResult``."""

    text: str
    finish_reason: str | None
    mean_logprob: float | None
    error: ErrorLike | None
    tool_calls: Any  # a list of ToolCallLike


class ToolsLike(Protocol):
    """``deployments.protocol.Tools``: the tools a call offered and whether it had to call one."""

    @property
    def call_required(self) -> bool: ...

    def schemas(self) -> dict[str, dict[str, Any]]: ...


class ContractLike(Protocol):
    """``deployments.protocol.Contract`` or ``cluster.spec.OutputContract``: at most one field set."""

    json_schema: dict[str, Any] | None
    choice: Any
    regex: str | None


@dataclass(frozen=True)
class CallOutcome:
    """One model call as the runner saw it: a result, or why none came back (timeout, raised exception)."""

    result: ResultLike | None
    failure: str | None = None


@dataclass(frozen=True)
class ContractCheck:
    ok: bool
    parsed: Any = None
    problem: str = ""
    truncated: bool = False


@dataclass(frozen=True)
class Verdict:
    """What to do next. ``reason`` names the escalation reason (also set on fail); ``parsed`` the output."""

    action: Action
    reason: str | None = None
    detail: str = ""
    parsed: Any = None
    max_tokens: int | None = None  # for action "retry"


def decide(
    outcome: CallOutcome,
    contract: ContractLike | None,
    policy: EscalationPolicy,
    *,
    max_tokens: int,
    retries_done: int = 0,
    can_escalate: bool = True,
    tools: ToolsLike | None = None,
) -> Verdict:
    """The next action after one call. ``can_escalate`` is false on the LLM tier or when no target is set.

    With ``tools``, an answer holding tool calls (or one that had to) is judged by its calls, else by ``contract``.
    """
    unavailable = _unavailable(outcome)
    result = outcome.result
    if unavailable is not None or result is None:
        return _escalate_or_fail("unavailable", unavailable or "no result", policy, can_escalate)
    if result.error is not None:
        return Verdict("fail", "error", f"{result.error.kind}: {result.error.message}")
    check = check_output(result, contract, tools)
    if not check.ok:
        if check.truncated and retries_done < policy.retries:
            bigger = math.ceil(max_tokens * policy.retry_max_tokens_factor)
            return Verdict("retry", "contract", check.problem, max_tokens=bigger)
        return _escalate_or_fail("contract", check.problem, policy, can_escalate)
    low = low_confidence(result.mean_logprob, policy.min_confidence)
    if low and can_escalate and "low_confidence" in policy.reasons:
        return Verdict("escalate", "low_confidence", low, parsed=check.parsed)
    return Verdict("accept", parsed=check.parsed)


CAPACITY_KINDS = frozenset({"overloaded", "cold_start"})
"""Errors that say a model is short of capacity, not broken: escalating them moves load onto the LLM tier, which
the LLM-tier budget caps (``deployments/router/escalation_budget.py``)."""


def is_capacity_escalation(outcome: CallOutcome) -> bool:
    """Whether escalating ``outcome`` would hand the LLM tier load a small model had no room for."""
    error = outcome.result.error if outcome.result is not None else None
    return error is not None and error.kind in CAPACITY_KINDS


def escalates_when_unavailable(policy: EscalationPolicy, can_escalate: bool) -> bool:
    """Whether a call under ``policy`` goes to the LLM tier when its model cannot answer: then a model with no
    running replica is not waited for (chat calls and pipeline steps alike)."""
    return can_escalate and "unavailable" in policy.reasons


def _unavailable(outcome: CallOutcome) -> str | None:
    if outcome.failure is not None:
        return outcome.failure
    if outcome.result is None:
        return "no result"
    error = outcome.result.error
    if error is not None and error.kind in UNAVAILABLE_KINDS:
        return f"{error.kind}: {error.message}"
    return None


def _escalate_or_fail(reason: str, detail: str, policy: EscalationPolicy, can_escalate: bool) -> Verdict:
    if can_escalate and reason in policy.reasons:
        return Verdict("escalate", reason, detail)
    return Verdict("fail", reason, detail)


def low_confidence(mean_logprob: float | None, min_confidence: float) -> str:
    """Why the output counts as unsure (empty when it does not)."""
    if min_confidence <= 0:
        return ""
    if min_confidence >= 1:
        return "min_confidence 1.0 always escalates"
    if mean_logprob is None:
        return ""  # no logprobs came back: nothing to judge by
    confidence = math.exp(mean_logprob)
    if confidence < min_confidence:
        return f"confidence {confidence:.3f} (exp of mean logprob {mean_logprob:.3f}) is below {min_confidence}"
    return ""


def check_output(result: ResultLike, contract: ContractLike | None, tools: ToolsLike | None) -> ContractCheck:
    """The answer's tool calls against their tools' schemas when it has (or owed) some, else its text."""
    calls = list(getattr(result, "tool_calls", None) or [])
    if tools is not None and (calls or tools.call_required):
        return check_tool_calls(calls, result.finish_reason, tools)
    return check_contract(result.text, result.finish_reason, contract)


def check_tool_calls(calls: list[ToolCallLike], finish_reason: str | None, tools: ToolsLike) -> ContractCheck:
    """Every call names an offered tool and its arguments validate; at least one when the choice requires it."""
    if not calls:
        cut = finish_reason == "length"
        return ContractCheck(False, problem="no tool call, though tool_choice requires one", truncated=cut)
    schemas = tools.schemas()
    parsed = []
    for call in calls:
        if call.name not in schemas:
            return ContractCheck(False, problem=f"call to '{call.name}', not one of the offered tools {list(schemas)}")
        try:
            arguments = json.loads(call.arguments)
        except ValueError as exc:
            return ContractCheck(False, problem=f"arguments of '{call.name}' are not valid JSON: {exc}")
        problem = schema_problem(arguments, schemas[call.name])
        if problem:
            return ContractCheck(False, problem=f"arguments of '{call.name}' do not match its parameters: {problem}")
        parsed.append({"name": call.name, "arguments": arguments})
    return ContractCheck(True, parsed)


def check_contract(text: str, finish_reason: str | None, contract: ContractLike | None) -> ContractCheck:
    """Does ``text`` satisfy the contract? Free text (no contract) always does and parses to itself."""
    if contract is None:
        return ContractCheck(True, text)
    if contract.json_schema is not None:
        return _check_json(text, finish_reason, contract.json_schema)
    if contract.choice is not None:
        answer = text.strip()
        if answer in contract.choice:
            return ContractCheck(True, answer)
        return ContractCheck(False, problem=f"{_clip(answer)!r} is not one of {list(contract.choice)}")
    if contract.regex is not None and not re.fullmatch(contract.regex, text):
        return ContractCheck(False, problem=f"{_clip(text)!r} does not fully match /{contract.regex}/")
    return ContractCheck(True, text)


def _check_json(text: str, finish_reason: str | None, schema: dict[str, Any]) -> ContractCheck:
    truncated = finish_reason == "length"
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        cut = " (cut off at max_tokens: finish_reason length)" if truncated else ""
        return ContractCheck(False, problem=f"not valid JSON{cut}: {exc}", truncated=truncated)
    problem = schema_problem(parsed, schema)
    if problem:
        return ContractCheck(False, problem=f"JSON does not match the schema: {problem}")
    return ContractCheck(True, parsed)


def schema_problem(value: Any, schema: dict[str, Any]) -> str:
    """The first way ``value`` breaks ``schema`` (empty when it is valid)."""
    if jsonschema is not None:
        validator_cls = jsonschema.validators.validator_for(schema)
        error = jsonschema.exceptions.best_match(validator_cls(schema).iter_errors(value))
        if error is None:
            return ""
        where = "/".join(str(p) for p in error.absolute_path)
        return f"{where or '(root)'}: {error.message}"
    return _minimal_schema_problem(value, schema, "(root)")  # pragma: no cover


_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


def _minimal_schema_problem(value: Any, schema: dict[str, Any], where: str) -> str:
    """type, enum, required and properties only: enough to catch a wrong shape without jsonschema."""
    expected = schema.get("type")
    if isinstance(expected, str) and expected in _JSON_TYPES and not isinstance(value, _JSON_TYPES[expected]):
        return f"{where}: expected {expected}, got {type(value).__name__}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where}: {value!r} is not one of {schema['enum']}"
    if not isinstance(value, dict):
        return ""
    missing = [key for key in schema.get("required", []) if key not in value]
    if missing:
        return f"{where}: missing required {missing}"
    for key, sub in schema.get("properties", {}).items():
        if key in value and isinstance(sub, dict):
            problem = _minimal_schema_problem(value[key], sub, f"{where}/{key}")
            if problem:
                return problem
    return ""


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
