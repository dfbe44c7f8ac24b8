"""How tools and a tool-calling history reach a model whose chat template knows nothing of tools (SmolLM2's).

A template that supports tools (it mentions ``tools``) gets OpenAI-shaped messages and ``tools=`` as they are.
Otherwise this documented rendering is used, in the roles every chat template has:

- the tools are listed in the system prompt, each as one JSON line of ``{"name", "description", "parameters"}``
  inside ``<tools>...</tools>``, with the call format (:mod:`deployments.model.tool_calls`) spelled out;
- an assistant message's ``tool_calls`` become its text: one ``<tool_call>`` block per call, after any content;
- a ``tool`` message becomes a user message ``<tool_response>\\n...\\n</tool_response>`` (consecutive results
  stay separate messages, in order).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from deployments.protocol import ToolDef

TOOLS_HEADER = (
    "You may call functions to help answer. The functions are listed, one JSON object per line, between "
    "<tools> and </tools>. To call one, answer with\n<tool_call>\n"
    '{"name": "<function name>", "arguments": {<arguments as JSON>}}\n</tool_call>\n'
    "and nothing else; a function's result comes back in <tool_response></tool_response>."
)


def template_supports_tools(chat_template: str | None) -> bool:
    return bool(chat_template) and "tools" in str(chat_template)


def tools_section(tools: tuple[ToolDef, ...]) -> str:
    lines = [json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters}) for t in tools]
    return TOOLS_HEADER + "\n<tools>\n" + "\n".join(lines) + "\n</tools>"


def call_text(call: dict[str, Any]) -> str:
    """An OpenAI assistant ``tool_calls`` entry as the text the model would have written."""
    function = call.get("function") or {}
    arguments = function.get("arguments") or "{}"
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):  # else shown as the client sent it
            arguments = json.loads(arguments)
    body = json.dumps({"name": function.get("name", ""), "arguments": arguments})
    return f"<tool_call>\n{body}\n</tool_call>"


def render_plain(messages: list[dict[str, Any]], tools: tuple[ToolDef, ...]) -> list[dict[str, str]]:
    """Role/content messages for a template without tool support (see the module docstring)."""
    rendered: list[dict[str, str]] = []
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            calls = "\n".join(call_text(c) for c in message["tool_calls"])
            content = f"{content}\n{calls}".strip()
        elif role == "tool":
            role, content = "user", f"<tool_response>\n{content}\n</tool_response>"
        rendered.append({"role": role, "content": content})
    if tools:
        rendered = _with_system(rendered, tools_section(tools))
    return rendered


def _with_system(messages: list[dict[str, str]], section: str) -> list[dict[str, str]]:
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{messages[0]['content']}\n\n{section}".strip()}, *messages[1:]]
    return [{"role": "system", "content": section}, *messages]
