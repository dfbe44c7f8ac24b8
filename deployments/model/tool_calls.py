"""Tool calls as text the model writes, the grammar that makes them valid, and the parser that reads them back.

A call is written as ``<tool_call>\\n{"name": "NAME", "arguments": {...}}\\n</tool_call>`` (the Hermes/Qwen style
many small chat models were trained on). Decoding runs under one xgrammar structural tag:

- ``required`` or a named tool: one or more call tags (one when ``parallel_tool_calls`` is false) and nothing else;
- ``auto``: *either* such calls *or* an answer in text (free text that may not contain ``<tool_call>``, or the
  text contract when the request also has one), so the model itself chooses at its first token;
- each call's name is one of the offered tools and its arguments follow that tool's JSON schema, tightened so the
  longest possible arguments fit the token budget (:mod:`deployments.model.json_budget`).

So a call is valid by construction; the parser below never guesses. Pure Python: no vLLM import.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from deployments.model.json_budget import SERVING_CHARS_PER_TOKEN, SchemaBudgetError, fit_schema
from deployments.protocol import Contract, ToolCall, ToolDef, Tools

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
_BEGIN = CALL_OPEN + '\n{"name": "'
_ARGS = '", "arguments": '
_END = "}\n" + CALL_CLOSE
_SEPARATOR = "\n"
MAX_WHITESPACE = 1  # at most one whitespace character in a row inside the arguments: no runaway blank space
_CALL = re.compile(
    re.escape(CALL_OPEN) + r'\n\{"name": "(?P<name>[^"]+)", "arguments": (?P<args>.*?)\}\n' + re.escape(CALL_CLOSE),
    re.DOTALL,
)
_CALL_AND_SEPARATOR = re.compile(_CALL.pattern + r"\n*", re.DOTALL)


def call_overhead(name: str) -> int:
    """Tokens of a call around its arguments, estimated at two characters a token (the tag text and a name are
    common words and punctuation, which BPE tokenizers encode at three or more characters a token)."""
    return -(-(len(_BEGIN) + len(name) + len(_ARGS) + len(_END) + len(_SEPARATOR)) // 2)


def argument_budget(tool: ToolDef, max_tokens: int) -> int:
    """Tokens the arguments may take so that one whole call fits ``max_tokens``.

    The schema bound assumes two characters a token (:data:`SERVING_CHARS_PER_TOKEN`) and counts ``", "`` /
    ``": "`` separators; the grammar allows at most one whitespace character at a gap.
    """
    return max(1, max_tokens - call_overhead(tool.name))


def structural_tag(tools: Tools, max_tokens: int, text: dict[str, Any] | None) -> dict[str, Any]:
    """The xgrammar structural tag for one call (vLLM's ``structured_outputs.structural_tag``, as JSON).

    ``text`` is the grammar format of a text answer under ``auto`` (None: free text without a call tag).
    """
    tags = _fitting_tags(tools, max_tokens)
    calls = {
        "type": "tags_with_separator",
        "tags": tags,
        "separator": _SEPARATOR,
        "at_least_one": True,
        "stop_after_first": not tools.parallel,
    }
    if tools.call_required:
        return {"type": "structural_tag", "format": calls}
    answer = text or {"type": "any_text", "excludes": [CALL_OPEN]}
    return {"type": "structural_tag", "format": {"type": "or", "elements": [calls, answer]}}


def _fitting_tags(tools: Tools, max_tokens: int) -> list[dict[str, Any]]:
    """A call tag per offered tool whose shortest call fits ``max_tokens``. A tool that cannot fit is left out (the
    model cannot call it within the budget); when none fits, the error names what the call needs."""
    tags, needs = [], {}
    for tool in tools.offered():
        try:
            tags.append(_call_tag(tool, max_tokens))
        except SchemaBudgetError as exc:
            needs[tool.name] = exc.needed + call_overhead(tool.name)
    if not tags:
        least = min(needs.values())
        raise SchemaBudgetError(
            f"max_tokens {max_tokens} is too small for a call to {', '.join(needs)}: the shortest call needs about "
            f"{least} tokens; raise max_tokens to at least {least}",
            least,
        )
    return tags


def _call_tag(tool: ToolDef, max_tokens: int) -> dict[str, Any]:
    return {
        "type": "tag",
        "begin": _BEGIN + tool.name + _ARGS,
        "content": {
            "type": "json_schema",
            "json_schema": fit_schema(tool.parameters, argument_budget(tool, max_tokens), SERVING_CHARS_PER_TOKEN),
            "max_whitespace_cnt": MAX_WHITESPACE,
        },
        "end": _END,
    }


def text_format(contract: Contract | None, max_tokens: int) -> dict[str, Any] | None:
    """A text contract as a structural-tag format, for ``auto`` with both tools and a response format."""
    if contract is None or contract.is_empty():
        return None
    if contract.json_schema is not None:
        schema = fit_schema(contract.json_schema, max_tokens, SERVING_CHARS_PER_TOKEN)
        return {"type": "json_schema", "json_schema": schema, "max_whitespace_cnt": MAX_WHITESPACE}
    if contract.choice is not None:
        return {"type": "or", "elements": [{"type": "const_string", "value": c} for c in contract.choice]}
    return {"type": "regex", "pattern": contract.regex}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _as_call(match: re.Match[str]) -> ToolCall:
    arguments = match.group("args")
    with contextlib.suppress(ValueError):  # canonical compact JSON, as OpenAI sends it; else the check reports it
        arguments = json.dumps(json.loads(arguments), separators=(",", ":"))
    return ToolCall(new_call_id(), match.group("name"), arguments)


def split_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """(text outside the calls, the calls) of a finished generation.

    One rule, shared with :class:`ToolCallStream`: each call goes, with the newlines right after it (the separator
    between calls); nothing else is stripped; a call cut off at max_tokens is dropped.
    """
    calls = [_as_call(m) for m in _CALL.finditer(text)]
    rest = _CALL_AND_SEPARATOR.sub("", text)
    head, _, _ = rest.partition(CALL_OPEN)  # an unfinished call's text is not content
    return head, calls


@dataclass
class ToolCallStream:
    """Incremental :func:`split_tool_calls` for streaming: feed text deltas, get text to send and finished calls.

    Text that might be the start of ``<tool_call>`` is held back until it is clearly not; a call leaves once its
    closing tag has arrived.
    """

    _pending: str = ""
    _in_call: bool = False
    _after_call: bool = False  # newlines right after a call are its separator, not text
    calls: list[ToolCall] = field(default_factory=list)

    def feed(self, delta: str) -> Iterator[str | ToolCall]:
        self._pending += delta
        while True:
            item = self._next()
            if item is None:
                return
            if isinstance(item, ToolCall):
                self.calls.append(item)
            yield item

    def flush(self) -> str:
        """Text still held back when the generation ends (a call cut off at max_tokens is dropped)."""
        rest, self._pending = ("" if self._in_call else self._pending), ""
        return rest

    def _next(self) -> str | ToolCall | None:
        if self._after_call:
            self._pending = self._pending.lstrip("\n")
            if not self._pending:
                return None  # more separator may follow
            self._after_call = False
        if self._in_call:
            match = _CALL.match(self._pending)
            if match is None:
                return None
            self._pending, self._in_call, self._after_call = self._pending[match.end() :], False, True
            return _as_call(match)
        start = self._pending.find(CALL_OPEN)
        if start >= 0:
            text, self._pending, self._in_call = self._pending[:start], self._pending[start:], True
            return text or self._next()
        keep = _partial_open_length(self._pending)
        text = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep :]
        return text or None


def _partial_open_length(text: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``<tool_call>``."""
    for size in range(min(len(text), len(CALL_OPEN) - 1), 0, -1):
        if CALL_OPEN.startswith(text[-size:]):
            return size
    return 0
