"""Safe templating of pipeline step inputs: ``{{ input.message }}``, ``{{ steps.extract.output.order_id }}``.

A template is literal text with ``{{ reference }}`` holes; a reference is a dotted path into the run's scope and
nothing else (no calls, no arithmetic, no eval), so a spec cannot run code. Templates are parsed when the spec
loads, which makes a malformed hole a spec error with its field path, and lets the reference checker see which
earlier steps a template reads.

The scope a run provides::

    {"input": {...request inputs...},
     "steps": {"<step>": {"output": ..., "error": ..., "model": ..., "status": ..., "escalated": ...}}}

Lookups are lenient on purpose: a missing key, an index past the end, or a path through ``None`` (a skipped step)
resolves to ``None``, which renders as an empty string. Typos in step names and fields are caught at load time.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ROOTS = ("input", "steps")
STEP_FIELDS = ("output", "error", "model", "status", "escalated")
_SEGMENT = r"(?:[A-Za-z_][A-Za-z0-9_-]*|[0-9]+)"
REF_PATTERN = rf"{_SEGMENT}(?:\.{_SEGMENT})*"
_REF_RE = re.compile(rf"^{REF_PATTERN}$")
_HOLE_RE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)


class TemplateError(ValueError):
    """A template or reference that cannot be parsed; the message says what to write instead."""


@dataclass(frozen=True)
class Ref:
    """A dotted path into the run scope, checked for shape when parsed."""

    parts: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Ref:
        text = text.strip()
        if not _REF_RE.match(text):
            raise TemplateError(
                f"'{text}' is not a reference; write a dotted path such as input.message or steps.<step>.output"
            )
        parts = tuple(text.split("."))
        _check_shape(parts)
        return cls(parts)

    @property
    def step(self) -> str | None:
        """The step this reference reads, or None for request inputs."""
        return self.parts[1] if self.parts[0] == "steps" else None

    def resolve(self, scope: Mapping[str, Any]) -> Any:
        value: Any = scope
        for part in self.parts:
            value = _lookup(value, part)
        return value

    def __str__(self) -> str:
        return ".".join(self.parts)


def _check_shape(parts: tuple[str, ...]) -> None:
    if parts[0] not in ROOTS:
        raise TemplateError(f"references start with {' or '.join(ROOTS)}, not '{parts[0]}'")
    if parts[0] == "input":
        if len(parts) < 2:  # noqa: PLR2004 - root plus one key
            raise TemplateError("name an input key, e.g. input.message")
        return
    if len(parts) < 3 or parts[2] not in STEP_FIELDS:  # noqa: PLR2004 - steps.<name>.<field>
        raise TemplateError(f"write steps.<step>.<field> with field one of {', '.join(STEP_FIELDS)}")
    if len(parts) > 3 and parts[2] != "output":  # noqa: PLR2004
        raise TemplateError(f"only steps.<step>.output has sub-fields, not steps.<step>.{parts[2]}")


def _lookup(value: Any, part: str) -> Any:
    if isinstance(value, Mapping):
        return value.get(part)
    if isinstance(value, Sequence) and not isinstance(value, str) and part.isdigit():
        index = int(part)
        return value[index] if index < len(value) else None
    return None


def to_text(value: Any) -> str:
    """How a value reads inside text: JSON for structures, empty for None, JSON spelling for booleans."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | dict | list | tuple):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


@dataclass(frozen=True)
class Template:
    """Parsed template: literal strings and :class:`Ref` holes, in order."""

    source: str
    parts: tuple[str | Ref, ...]

    @classmethod
    def parse(cls, source: str) -> Template:
        parts: list[str | Ref] = []
        position = 0
        for match in _HOLE_RE.finditer(source):
            parts.append(source[position : match.start()])
            parts.append(Ref.parse(match.group(1)))
            position = match.end()
        parts.append(source[position:])
        literals = [p for p in parts if isinstance(p, str)]
        if any("{{" in text for text in literals):
            raise TemplateError("a '{{' is never closed; write {{ reference }}")
        return cls(source, tuple(p for p in parts if p != ""))

    def refs(self) -> tuple[Ref, ...]:
        return tuple(p for p in self.parts if isinstance(p, Ref))

    def render(self, scope: Mapping[str, Any]) -> str:
        return "".join(p if isinstance(p, str) else to_text(p.resolve(scope)) for p in self.parts)

    def render_value(self, scope: Mapping[str, Any]) -> Any:
        """A template that is exactly one hole yields the value itself (a dict stays a dict); else text."""
        if len(self.parts) == 1 and isinstance(self.parts[0], Ref):
            return self.parts[0].resolve(scope)
        return self.render(scope)


@functools.lru_cache(maxsize=1024)
def compile_template(source: str) -> Template:
    """Parse once per distinct source; pipelines render the same few templates on every run."""
    return Template.parse(source)


def parse_value_templates(value: Any) -> list[Template]:
    """Every template inside a nested mapping/list of strings (tool ``args``), parsed; raises TemplateError."""
    if isinstance(value, str):
        return [Template.parse(value)]
    if isinstance(value, Mapping):
        return [t for item in value.values() for t in parse_value_templates(item)]
    if isinstance(value, list):
        return [t for item in value for t in parse_value_templates(item)]
    return []


def render_structure(value: Any, scope: Mapping[str, Any]) -> Any:
    """Render a nested mapping/list whose strings are templates; other scalars pass through."""
    if isinstance(value, str):
        return compile_template(value).render_value(scope)
    if isinstance(value, Mapping):
        return {key: render_structure(item, scope) for key, item in value.items()}
    if isinstance(value, list):
        return [render_structure(item, scope) for item in value]
    return value
