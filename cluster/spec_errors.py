"""Spec errors a person can act on: the field path, the bad value, what was expected, and a did-you-mean.

pydantic's own messages lose the thread for nested mappings; this module turns them into :class:`SpecIssue`
rows and suggests the nearest known key for typos, so the CLI can print them without a traceback.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError


@dataclass(frozen=True)
class SpecIssue:
    """One problem in a spec: where, what was there, what is wrong, how to fix it."""

    path: str
    value: Any
    problem: str
    fix: str

    def render(self) -> str:
        where = self.path or "(top level)"
        line = f"  {where}: {self.problem}\n    got: {_short(self.value)}"
        return f"{line}\n    fix: {self.fix}" if self.fix else line


class SpecError(Exception):
    """A fleet spec that cannot be used; ``str()`` is the full report."""

    def __init__(self, origin: str, issues: list[SpecIssue]) -> None:
        self.origin = origin
        self.issues = issues
        super().__init__(self.report())

    def report(self) -> str:
        count = len(self.issues)
        head = f"invalid fleet spec {self.origin}: {count} problem{'s' if count != 1 else ''}"
        return "\n".join([head, *(issue.render() for issue in self.issues)])


def suggest(word: str, candidates: list[str]) -> str | None:
    """The closest candidate to a misspelt name, if any is close enough."""
    matches = difflib.get_close_matches(str(word), candidates, n=1, cutoff=0.6)
    return matches[0] if matches else None


def issues_from_validation_error(exc: ValidationError, root: type[BaseModel]) -> list[SpecIssue]:
    """Translate pydantic's errors into spec issues with dotted paths and fixes."""
    issues = []
    for err in exc.errors(include_url=False):
        loc = [part for part in err["loc"] if not _is_union_tag(part)]
        path = ".".join(str(part) for part in loc)
        issues.append(SpecIssue(path, err.get("input"), _problem(err), _fix(err, root, loc)))
    return issues


def _is_union_tag(part: Any) -> bool:
    # pydantic inserts the union member's type name (e.g. "function-after[...]") into some locations
    return isinstance(part, str) and ("[" in part or part in {"int", "str", "float", "bool"})


def _problem(err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    return _value_error_parts(err)[0]


def _value_error_parts(err: dict[str, Any]) -> tuple[str, str]:
    """Our validators write "problem; fix" so both halves reach the report."""
    problem, _, fix = str(err["msg"]).removeprefix("Value error, ").partition("; ")
    return problem, fix


def _fix(err: dict[str, Any], root: type[BaseModel], loc: list[Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        known = _fields_at(root, loc[:-1])
        hint = suggest(str(loc[-1]), known)
        allowed = f"allowed keys: {', '.join(known)}" if known else "remove it"
        return f"did you mean '{hint}'? ({allowed})" if hint else allowed
    if kind == "missing":
        return f"add '{loc[-1]}'"
    if kind == "string_pattern_mismatch":
        return "use lower-case letters, digits and '-', starting with a letter"
    expected = (err.get("ctx") or {}).get("expected")
    if expected:
        return f"use one of {expected}"
    return _value_error_parts(err)[1] if kind == "value_error" else ""


def _fields_at(root: type[BaseModel], loc: list[Any]) -> list[str]:
    """Field names of the model found by walking ``loc`` down from ``root`` (mapping keys are skipped)."""
    current: Any = root
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel) and part in current.model_fields:
            current = _model_or_mapping(current.model_fields[part].annotation)
        elif _is_mapping(current) or _is_list(current):
            current = _model_or_mapping(typing.get_args(current)[-1])
        else:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_or_mapping(annotation: Any) -> Any:
    """Unwrap Optional/Annotated so the walk sees the model, dict or list inside."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _model_or_mapping(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _model_or_mapping(members[0]) if len(members) == 1 else annotation
    return annotation


def _is_mapping(annotation: Any) -> bool:
    return typing.get_origin(annotation) is dict


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
