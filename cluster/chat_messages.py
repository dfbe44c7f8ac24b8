"""Chat messages as an engine reads them: the one shaping shared by the model replicas (what the engine is asked)
and the conversion loop (what a specialist is trained on), so an adapter learns the prompts it will serve."""

from __future__ import annotations

from typing import Any


def text_of(content: Any) -> str:
    """OpenAI message content may be a string or a list of typed parts; engines here take text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def plain_message(message: dict[str, Any]) -> dict[str, Any]:
    """Role and text content, plus the tool-calling fields when present (tool_calls, tool_call_id, name)."""
    role = str(message.get("role", "user"))
    role = "system" if role == "developer" else role  # OpenAI's newer name for the system prompt
    plain: dict[str, Any] = {"role": role, "content": text_of(message.get("content"))}
    for key in ("tool_calls", "tool_call_id", "name"):
        if message.get(key):
            plain[key] = message[key]
    return plain


def with_instructions(messages: list[dict[str, Any]], instructions: str) -> list[dict[str, Any]]:
    """Plain messages, the specialist's instructions leading the system prompt."""
    plain = [plain_message(m) for m in messages]
    if not instructions:
        return plain
    if plain and plain[0]["role"] == "system":
        merged = f"{instructions}\n\n{plain[0]['content']}".strip()
        return [{"role": "system", "content": merged}, *plain[1:]]
    return [{"role": "system", "content": instructions}, *plain]
