"""Turning a :class:`GenerationRequest` plus a specialist's defaults into engine inputs, without importing vLLM.

Kept pure so the merge rules (request overrides specialist, instructions become the system prompt, a contract
becomes a structured-outputs constraint) are unit-tested without an engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cluster.chat_messages import with_instructions
from cluster.spec import OutputContract, SamplingSpec, SpecialistSpec
from deployments.model.json_budget import SERVING_CHARS_PER_TOKEN, fit_schema
from deployments.model.tool_calls import structural_tag, text_format
from deployments.protocol import Contract, GenerationRequest, ToolDef

DEFAULT_SAMPLING = SamplingSpec()


@dataclass(frozen=True)
class EngineCall:
    """Everything the engine needs for one request: chat messages (OpenAI-shaped, tool calls included), the tools
    to show the model, sampling and an optional structured-outputs constraint."""

    messages: list[dict[str, Any]]
    sampling: dict[str, Any]
    structured: dict[str, Any] | None
    tools: tuple[ToolDef, ...] = ()
    prefix: str = ""  # the answer's start, already sent, which the engine continues (a resumed stream)


def contract_from_spec(output: OutputContract | None) -> Contract | None:
    """A specialist's declared output contract as the wire type."""
    if output is None:
        return None
    return Contract(
        json_schema=output.json_schema,
        choice=tuple(output.choice) if output.choice else None,
        regex=output.regex,
    )


def structured_kwargs(contract: Contract | None, max_tokens: int) -> dict[str, Any] | None:
    """Keyword arguments for vLLM's ``StructuredOutputsParams``; None means free text.

    A JSON schema is tightened first so its longest answer fits ``max_tokens``: a cut cannot leave invalid JSON.
    """
    if contract is None or contract.is_empty():
        return None
    if contract.json_schema is not None:
        return {"json": fit_schema(contract.json_schema, max_tokens, SERVING_CHARS_PER_TOKEN)}
    if contract.choice is not None:
        return {"choice": list(contract.choice)}
    return {"regex": contract.regex}


def base_sampling(request: GenerationRequest, specialist: SpecialistSpec | None) -> dict[str, Any]:
    """temperature, top_p and max_tokens: the request's where it sets them, else the specialist's defaults (the one
    merge rule for engines and outside APIs)."""
    defaults = specialist.sampling if specialist else DEFAULT_SAMPLING
    return {
        "temperature": _first(request.temperature, defaults.temperature),
        "top_p": _first(request.top_p, defaults.top_p),
        "max_tokens": _first(request.max_tokens, defaults.max_tokens),
    }


def request_contract(request: GenerationRequest, specialist: SpecialistSpec | None) -> Contract | None:
    """The request's own contract (its response format), else the specialist's declared output."""
    return request.contract or (contract_from_spec(specialist.output) if specialist else None)


def build_engine_call(request: GenerationRequest, specialist: SpecialistSpec | None) -> EngineCall:
    """Merge request fields over the specialist's defaults (a field left None keeps the default)."""
    sampling = base_sampling(request, specialist)
    sampling.update(_optional_sampling(request))
    contract = request_contract(request, specialist)
    instructions = specialist.instructions if specialist else ""
    messages = with_instructions(request.messages, instructions)
    budget = request.schema_tokens or sampling["max_tokens"]
    tools = request.tools
    prefix = request.continue_from or ""
    if tools is None or not tools.offered():
        return EngineCall(messages, sampling, structured_kwargs(contract, budget), prefix=prefix)
    tag = structural_tag(tools, budget, text_format(contract, budget))
    return EngineCall(messages, sampling, {"structural_tag": json.dumps(tag)}, tools.offered(), prefix)


def _optional_sampling(request: GenerationRequest) -> dict[str, Any]:
    """The request's other sampling fields, only those it set (vLLM's defaults stand for the rest)."""
    sampling: dict[str, Any] = dict(request.extra_sampling)
    if request.stop:
        sampling["stop"] = list(request.stop)
    if request.logprobs:
        sampling["logprobs"] = request.top_logprobs  # 0 = only the sampled token's log-probability
    for key in ("seed", "presence_penalty", "frequency_penalty", "logit_bias"):
        value = getattr(request, key)
        if value is not None:
            sampling[key] = value
    return sampling


def _first(value: Any, default: Any) -> Any:
    return default if value is None else value
