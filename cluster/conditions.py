"""``when:`` conditions: a small, safe expression language over the same references as templates.

Grammar (parsed by hand, never eval'd)::

    expr    := and_ ("or" and_)*
    and_    := not_ ("and" not_)*
    not_    := "not" not_ | compare
    compare := atom (("==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not in") atom)?
    atom    := reference | 'string' | "string" | number | true | false | null | "[" atom, ... "]" | "(" expr ")"

Examples: ``steps.classify.output == 'refund'``, ``steps.classify.output in ['refund', 'order_status']``,
``not steps.lookup.error and steps.extract.output.order_id != null``. A bare reference tests truthiness.
Conditions are parsed when the spec loads, so a bad one is a spec error naming its field.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cluster.templating import REF_PATTERN, Ref, TemplateError


class ConditionError(ValueError):
    """A condition that cannot be parsed, or whose comparison makes no sense for the values at run time."""


_TOKEN_RE = re.compile(
    r"""\s*(?:
      (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<num>-?[0-9]+(?:\.[0-9]+)?)
    | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,)
    | (?P<word>"""
    + REF_PATTERN
    + r"""))""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in"}
_ORDERING = {"<", "<=", ">", ">="}
_CONSTANTS: dict[str, Any] = {"true": True, "false": False, "null": None}


def _contains(container: Any, item: Any) -> bool:
    if not isinstance(container, list | tuple | str | dict):
        raise ConditionError(f"'in' needs a list or text on the right, got {type(container).__name__}")
    if isinstance(container, str) and not isinstance(item, str):
        return False
    return item in container


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "in": lambda a, b: _contains(b, a),
    "not in": lambda a, b: not _contains(b, a),
}


@dataclass(frozen=True)
class _Token:
    kind: str  # "str" | "num" | "op" | "word" | "end"
    text: str
    column: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN_RE.match(text, position)
        if not match or match.end() == position:
            raise ConditionError(f"unexpected {text[position:].strip()[:20]!r} at column {position + 1}")
        kind = match.lastgroup or "op"
        tokens.append(_Token(kind, match.group(kind), match.start(kind) + 1))
        position = match.end()
    tokens.append(_Token("end", "", len(text) + 1))
    return tokens


# Nodes: each evaluates against the run scope and lists the references it reads.


@dataclass(frozen=True)
class _Const:
    value: Any

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        return self.value

    def refs(self) -> tuple[Ref, ...]:
        return ()


@dataclass(frozen=True)
class _RefNode:
    ref: Ref

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        return self.ref.resolve(scope)

    def refs(self) -> tuple[Ref, ...]:
        return (self.ref,)


@dataclass(frozen=True)
class _ListNode:
    items: tuple[Any, ...]

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        return [item.evaluate(scope) for item in self.items]

    def refs(self) -> tuple[Ref, ...]:
        return tuple(r for item in self.items for r in item.refs())


@dataclass(frozen=True)
class _Not:
    operand: Any

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        return not self.operand.evaluate(scope)

    def refs(self) -> tuple[Ref, ...]:
        return self.operand.refs()


@dataclass(frozen=True)
class _BoolOp:
    op: str  # "and" | "or"
    operands: tuple[Any, ...]

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        values = (bool(o.evaluate(scope)) for o in self.operands)
        return all(values) if self.op == "and" else any(values)

    def refs(self) -> tuple[Ref, ...]:
        return tuple(r for o in self.operands for r in o.refs())


@dataclass(frozen=True)
class _Compare:
    op: str
    left: Any
    right: Any

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        left, right = self.left.evaluate(scope), self.right.evaluate(scope)
        if self.op in _ORDERING and (left is None or right is None):
            return False  # a skipped step or missing key orders with nothing, like SQL's NULL
        try:
            return _COMPARE[self.op](left, right)
        except TypeError:
            raise ConditionError(
                f"cannot compare {type(left).__name__} {self.op} {type(right).__name__} ({left!r} {self.op} {right!r})"
            ) from None

    def refs(self) -> tuple[Ref, ...]:
        return (*self.left.refs(), *self.right.refs())


class _Parser:
    """Recursive descent over the token list; one method per grammar rule."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.index = 0

    def peek(self, offset: int = 0) -> _Token:
        return self.tokens[min(self.index + offset, len(self.tokens) - 1)]

    def take(self) -> _Token:
        token = self.peek()
        self.index += 1
        return token

    def at_word(self, word: str, offset: int = 0) -> bool:
        token = self.peek(offset)
        return token.kind == "word" and token.text == word

    def expect(self, text: str) -> None:
        token = self.take()
        if token.text != text:
            raise ConditionError(f"expected '{text}' at column {token.column}, found {token.text or 'the end'!r}")

    def parse(self) -> Any:
        node = self.parse_or()
        token = self.peek()
        if token.kind != "end":
            raise ConditionError(f"unexpected {token.text!r} at column {token.column}")
        return node

    def parse_or(self) -> Any:
        return self._bool_chain("or", self.parse_and)

    def parse_and(self) -> Any:
        return self._bool_chain("and", self.parse_not)

    def _bool_chain(self, op: str, operand: Callable[[], Any]) -> Any:
        operands = [operand()]
        while self.at_word(op):
            self.take()
            operands.append(operand())
        return operands[0] if len(operands) == 1 else _BoolOp(op, tuple(operands))

    def parse_not(self) -> Any:
        if self.at_word("not"):
            self.take()
            return _Not(self.parse_not())
        return self.parse_compare()

    def parse_compare(self) -> Any:
        left = self.parse_atom()
        token = self.peek()
        if (token.kind == "op" and token.text in _COMPARE) or self.at_word("in"):
            op = self.take().text
        elif self.at_word("not") and self.at_word("in", 1):
            self.index += 2
            op = "not in"
        else:
            return left
        return _Compare(op, left, self.parse_atom())

    def parse_atom(self) -> Any:
        token = self.take()
        if token.kind == "str":
            return _Const(ast.literal_eval(token.text))
        if token.kind == "num":
            return _Const(float(token.text) if "." in token.text else int(token.text))
        if token.text == "(":
            node = self.parse_or()
            self.expect(")")
            return node
        if token.text == "[":
            return self._parse_list()
        if token.kind == "word" and token.text in _CONSTANTS:
            return _Const(_CONSTANTS[token.text])
        if token.kind == "word" and token.text not in _KEYWORDS:
            try:
                return _RefNode(Ref.parse(token.text))
            except TemplateError as exc:
                raise ConditionError(str(exc)) from None
        raise ConditionError(f"expected a value at column {token.column}, found {token.text or 'the end'!r}")

    def _parse_list(self) -> _ListNode:
        items = []
        while self.peek().text != "]":
            items.append(self.parse_atom())
            if self.peek().text != ",":
                break
            self.take()
        self.expect("]")
        return _ListNode(tuple(items))


@dataclass(frozen=True)
class Condition:
    """A parsed ``when:`` expression."""

    source: str
    root: Any

    @classmethod
    def parse(cls, source: str) -> Condition:
        if not source.strip():
            raise ConditionError("the condition is empty")
        return cls(source, _Parser(source).parse())

    def evaluate(self, scope: Mapping[str, Any]) -> bool:
        """True when the step should run; raises ConditionError for a comparison of incompatible values."""
        return bool(self.root.evaluate(scope))

    def refs(self) -> tuple[Ref, ...]:
        return self.root.refs()
