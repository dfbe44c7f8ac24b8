"""Turning a :class:`GenerationRequest` plus a specialist's defaults into engine inputs, without importing vLLM.

Kept pure so the merge rules (request overrides specialist, instructions become the system prompt, a contract
becomes a structured-outputs constraint) are unit-tested without an engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cluster.spec import OutputContract, SamplingSpec, SpecialistSpec
from deployments.protocol import Contract, GenerationRequest

DEFAULT_SAMPLING = SamplingSpec()


@dataclass(frozen=True)
class EngineCall:
    """Everything the engine needs for one request: chat messages, sampling and an optional constraint."""

    messages: list[dict[str, str]]
    sampling: dict[str, Any]
    structured: dict[str, Any] | None


def contract_from_spec(output: OutputContract | None) -> Contract | None:
    """A specialist's declared output contract as the wire type."""
    if output is None:
        return None
    return Contract(
        json_schema=output.json_schema,
        choice=tuple(output.choice) if output.choice else None,
        regex=output.regex,
    )


def structured_kwargs(contract: Contract | None) -> dict[str, Any] | None:
    """Keyword arguments for vLLM's ``StructuredOutputsParams``; None means free text."""
    if contract is None or contract.is_empty():
        return None
    if contract.json_schema is not None:
        return {"json": contract.json_schema}
    if contract.choice is not None:
        return {"choice": list(contract.choice)}
    return {"regex": contract.regex}


def text_of(content: Any) -> str:
    """OpenAI message content may be a string or a list of typed parts; engines here take text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def with_instructions(messages: list[dict[str, Any]], instructions: str) -> list[dict[str, str]]:
    """Plain role/content messages, the specialist's instructions leading the system prompt."""
    plain = [{"role": str(m.get("role", "user")), "content": text_of(m.get("content"))} for m in messages]
    if not instructions:
        return plain
    if plain and plain[0]["role"] == "system":
        merged = f"{instructions}\n\n{plain[0]['content']}".strip()
        return [{"role": "system", "content": merged}, *plain[1:]]
    return [{"role": "system", "content": instructions}, *plain]


def build_engine_call(request: GenerationRequest, specialist: SpecialistSpec | None) -> EngineCall:
    """Merge request fields over the specialist's defaults (a field left None keeps the default)."""
    defaults = specialist.sampling if specialist else DEFAULT_SAMPLING
    sampling: dict[str, Any] = {
        "temperature": _first(request.temperature, defaults.temperature),
        "top_p": _first(request.top_p, defaults.top_p),
        "max_tokens": _first(request.max_tokens, defaults.max_tokens),
    }
    if request.stop:
        sampling["stop"] = list(request.stop)
    if request.logprobs:
        sampling["logprobs"] = 0  # 0 = only the sampled token's log-probability
    contract = request.contract or (contract_from_spec(specialist.output) if specialist else None)
    instructions = specialist.instructions if specialist else ""
    return EngineCall(with_instructions(request.messages, instructions), sampling, structured_kwargs(contract))


def _first(value: Any, default: Any) -> Any:
    return default if value is None else value
