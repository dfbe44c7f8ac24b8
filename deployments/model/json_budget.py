"""Bound a JSON schema so that its longest answer fits ``max_tokens``: a cut-off answer is then impossible.

Constrained decoding (vLLM + xgrammar) keeps every token inside the schema's grammar, but ``max_tokens`` can still
stop a string or number that runs on, leaving invalid JSON. If the LONGEST text the grammar accepts fits the
budget, no cut can happen. Lengths count characters and assume at most one token per character (true for ASCII
under BPE tokenizers; a non-ASCII character may take several tokens: a known, accepted risk). They assume the
grammar is compiled without free whitespace (xgrammar ``any_whitespace=False``, vLLM's
``disable_any_whitespace``): with free whitespace no schema is bounded. Separators are counted as ", " and ": ",
which also bounds the compact "," and ":".

Rules of :func:`fit_schema` (each checked against xgrammar 0.2.8):

- Local ``$ref`` (``#/$defs/...``, ``#/definitions/...``) is inlined; a recursive or non-local one leaves the
  schema unbounded, so it comes back unchanged and the caller checks the output instead.
- string: ``maxLength`` added or shrunk, never below ``minLength``; quotes count 2 (with ``maxLength`` xgrammar
  allows no escapes). ``pattern`` and the formats xgrammar implements ignore ``maxLength``: unbounded, except the
  fixed-width formats date, uuid and ipv4.
- integer / number: a missing ``minimum`` / ``maximum`` is added (±999999999, fewer digits when tight); given
  bounds are never narrowed. A bounded number has no exponent and at most 6 fraction digits.
- array: ``maxItems`` added or shrunk, never below ``minItems``; ``prefixItems`` count one each.
- object: every property counts as present. ``additionalProperties`` absent becomes false (xgrammar's strict mode
  already means that when ``properties`` is given); true, a schema, ``patternProperties`` or an object without
  ``properties`` are unbounded.
- enum / const: the longest value as xgrammar prints it. boolean 5, null 4. anyOf / oneOf / a type list: the
  longest branch, each bounded. allOf with one branch is merged; anything else unknown is unbounded.
- Sharing the budget: first only the bounds this module adds are sized; if they cannot fit even at their smallest,
  given bounds shrink too. Every sized bound gets the same allowance above its floor (characters, items or digits),
  capped at its given bound, at 9 digits, at max_tokens: the largest allowance that fits, found by bisection, so
  the result is deterministic and small bounds are never cut for the sake of large ones. If even the smallest form
  (minLength, minItems, one-digit added bounds) is too long, :class:`SchemaBudgetError` says what it needs.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any

SEPARATOR = 2  # ", " between items, ": " after a key
BRACKETS = 2
QUOTES = 2
FRACTION = 7  # "." and at most 6 digits, xgrammar's limit for a bounded number
DEFAULT_DIGITS = 9  # an added integer bound: ±999999999
FIXED_FORMATS = {"date": 10, "uuid": 36, "ipv4": 15}
# xgrammar 0.2.8 implements these; it then ignores maxLength. Any other format is a plain string to it.
OPEN_FORMATS = {"time", "date-time", "duration", "email", "hostname", "ipv6", "uri", "uri-reference"}
BOOLEAN_CHARS = 5
NULL_CHARS = 4


# What the serving path assumes: JSON text averages at least two characters a token (keys, punctuation and words
# are one token for several characters under BPE). Not a strict bound: an answer that still breaks its schema is
# caught by the router's contract check (retried, escalated, or a clear error, never a 200).
SERVING_CHARS_PER_TOKEN = 2.0


ITEM_SLOWNESS = 4  # an added maxItems grows one item per four characters of string allowance
DIGIT_SLOWNESS = 3  # added number bounds grow one digit per three


class SchemaBudgetError(ValueError):
    """The schema's shortest bounded answer does not fit max_tokens.

    The message says how many tokens it needs and the fix; ``needed`` is that number.
    """

    def __init__(self, message: str, needed: int = 0) -> None:
        super().__init__(message)
        self.needed = needed


class _Unbounded(Exception):
    """Raised inside the walk when some part has no length bound this module can set."""


@dataclass(frozen=True)
class _Knobs:
    """How far the bounds this module sets open: ``allowance`` units above their floor, at most their ceiling.

    ``limit`` None means measure only: nothing is added, a missing bound makes the schema unbounded.
    ``tighten_given`` lets caller-given bounds shrink too (second phase).
    """

    allowance: int = 0
    limit: int | None = None
    tighten_given: bool = False

    def pick(self, floor: int, given: int | None, default: int | None = None, per: int = 1) -> int:
        """The bound to use, from ``floor`` up to the given bound, ``default`` and ``limit``, whichever is least.

        ``per`` slows a bound's growth (one unit per ``per`` of allowance): array items and number digits grow
        slower than string lengths, so the budget goes to the text a value needs rather than to more of them.
        """
        if self.limit is None:
            if given is None:
                raise _Unbounded
            return given
        if given is not None and not self.tighten_given:
            return given
        ceiling = max(floor, min(cap for cap in (self.limit, given, default) if cap is not None))
        return min(ceiling, floor + self.allowance // per)


def longest_json_chars(schema: dict) -> int | None:
    """Upper bound on the characters of any JSON text the grammar accepts for this schema, or None when unbounded."""
    try:
        return _walk(_inline(schema, schema, frozenset()), _Knobs())[1]
    except _Unbounded:
        return None


def fit_schema(schema: dict, max_tokens: int, chars_per_token: float = 1.0) -> dict:
    """A copy of ``schema`` tightened so longest_json_chars(result) <= max_tokens x chars_per_token.

    ``chars_per_token`` 1 is the strict bound; a caller may assume more characters a token on average (the
    serving path assumes 2, see :data:`SERVING_CHARS_PER_TOKEN`) and check the output as well.
    Raises SchemaBudgetError when impossible.
    Returns the schema unchanged (a copy) when it is unbounded in a way this module cannot bound (recursive $ref),
    so the caller falls back to checking the output.
    """
    budget = max(1, int(max_tokens * chars_per_token))
    try:
        inlined = _inline(schema, schema, frozenset())
        for tighten_given in (False, True):
            if _length(inlined, _Knobs(0, budget, tighten_given)) <= budget:
                return _bisect(inlined, budget, tighten_given)
    except _Unbounded:
        return copy.deepcopy(schema)
    needed = math.ceil(_length(inlined, _Knobs(0, budget, True)) / chars_per_token)
    raise SchemaBudgetError(
        f"max_tokens {max_tokens} is too small for this JSON schema: its shortest bounded answer needs about "
        f"{needed} tokens; raise max_tokens to at least {needed}",
        needed,
    )


def _bisect(inlined: dict, max_tokens: int, tighten_given: bool) -> dict:
    """The largest allowance whose longest answer still fits: length grows with it, so bisection finds it."""
    low, high = 0, max_tokens
    while low < high:
        mid = (low + high + 1) // 2
        if _length(inlined, _Knobs(mid, max_tokens, tighten_given)) <= max_tokens:
            low = mid
        else:
            high = mid - 1
    return _walk(inlined, _Knobs(low, max_tokens, tighten_given))[0]


def _length(node: dict, knobs: _Knobs) -> int:
    return _walk(node, knobs)[1]


# --- $ref inlining ----------------------------------------------------------------------------------------------

_DEFS = {"$defs", "definitions"}  # dropped once inlined
_DATA_KEYS = {"const", "enum", "default", "examples"}


def _inline(node: Any, root: dict, seen: frozenset[str]) -> Any:
    """``node`` with every local $ref replaced by its target; a cycle or foreign ref is unbounded."""
    if isinstance(node, list):
        return [_inline(item, root, seen) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = node["$ref"]
        if ref in seen:
            raise _Unbounded
        merged = {**_resolve(root, ref), **{k: v for k, v in node.items() if k != "$ref"}}
        return _inline(merged, root, seen | {ref})
    return {k: v if k in _DATA_KEYS else _inline(v, root, seen) for k, v in node.items() if k not in _DEFS}


def _resolve(root: dict, ref: Any) -> dict:
    """The schema a local JSON pointer ``#/...`` names."""
    if not isinstance(ref, str) or not ref.startswith("#/"):
        raise _Unbounded
    target: Any = root
    for part in ref[2:].split("/"):
        key = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(target, dict) or key not in target:
            raise _Unbounded
        target = target[key]
    if not isinstance(target, dict):
        raise _Unbounded
    return target


# --- the walk: (tightened schema, longest answer) ----------------------------------------------------------------


def _walk(node: Any, knobs: _Knobs) -> tuple[dict, int]:
    """Bound one schema node; raises _Unbounded when it cannot."""
    if not isinstance(node, dict):
        raise _Unbounded
    if "const" in node:
        return node, _literal_chars(node["const"])
    if "enum" in node:
        return node, max(map(_literal_chars, node["enum"]), default=0)
    for key in ("anyOf", "oneOf"):
        if key in node:
            branches = [_walk(branch, knobs) for branch in node[key]]
            return {**node, key: [b[0] for b in branches]}, max((b[1] for b in branches), default=0)
    if "allOf" in node:
        if len(node["allOf"]) != 1 or not isinstance(node["allOf"][0], dict):
            raise _Unbounded
        rest = {k: v for k, v in node.items() if k != "allOf"}
        return _walk({**rest, **node["allOf"][0]}, knobs)
    kind = node.get("type")
    if isinstance(kind, list):
        return _walk_types(node, kind, knobs)
    return _walk_type(node, kind, knobs)


def _walk_types(node: dict, kinds: list[str], knobs: _Knobs) -> tuple[dict, int]:
    """A type list: each type bounded on its own, their added keywords merged, the longest counted."""
    fitted, longest = dict(node), 0
    for kind in kinds:
        part, chars = _walk_type(node, kind, knobs)
        fitted.update({k: v for k, v in part.items() if k not in node or node[k] is not v})
        longest = max(longest, chars)
    return fitted, longest


def _walk_type(node: dict, kind: Any, knobs: _Knobs) -> tuple[dict, int]:
    if kind == "boolean":
        return node, BOOLEAN_CHARS
    if kind == "null":
        return node, NULL_CHARS
    if kind == "string":
        return _string(node, knobs)
    if kind in ("integer", "number"):
        return _number(node, kind, knobs)
    if kind == "array":
        return _array(node, knobs)
    if kind == "object":
        return _object(node, knobs)
    raise _Unbounded


def _string(node: dict, knobs: _Knobs) -> tuple[dict, int]:
    fmt = node.get("format")
    if fmt in FIXED_FORMATS:
        return node, FIXED_FORMATS[fmt] + QUOTES
    if "pattern" in node or fmt in OPEN_FORMATS:
        raise _Unbounded
    length = knobs.pick(node.get("minLength", 0), node.get("maxLength"))
    fitted = node if knobs.limit is None else {**node, "maxLength": length}
    return fitted, length + QUOTES


def _number(node: dict, kind: str, knobs: _Knobs) -> tuple[dict, int]:
    """Integer or number: its longest text is that of its widest bound (plus fraction digits for a number)."""
    lows = _bounds(node, "minimum", "exclusiveMinimum")
    highs = _bounds(node, "maximum", "exclusiveMaximum")
    fitted = node
    if not lows or not highs:
        span = 10 ** knobs.pick(1, None, DEFAULT_DIGITS, per=DIGIT_SLOWNESS) - 1
        fitted = dict(node)
        if not lows:
            fitted["minimum"] = -span if -span < min(highs, default=span) else math.ceil(min(highs)) - 1
            lows = [fitted["minimum"]]
        if not highs:
            fitted["maximum"] = span if span > max(lows) else math.floor(max(lows)) + 1
            highs = [fitted["maximum"]]
    fraction = FRACTION if kind == "number" else 0
    return fitted, max(_number_chars(bound, fraction) for bound in lows + highs)


def _bounds(node: dict, *keys: str) -> list[float]:
    return [node[k] for k in keys if isinstance(node.get(k), int | float) and not isinstance(node[k], bool)]


def _number_chars(bound: float, fraction: int) -> int:
    """Characters of the longest number no wider than ``bound``: sign, integer digits, fraction."""
    return (bound < 0) + len(str(math.floor(abs(bound)))) + fraction


def _array(node: dict, knobs: _Knobs) -> tuple[dict, int]:
    prefix = [_walk(item, knobs) for item in node.get("prefixItems", [])]
    items = node.get("items", not prefix)  # xgrammar's strict mode: no extra items after a prefix
    floor = node.get("minItems", 0)
    if items is False:
        count = min(len(prefix), knobs.pick(floor, node.get("maxItems", len(prefix))))
        fitted, item_chars = {**node, "maxItems": count}, 0
    else:
        item_node, item_chars = _walk(items, knobs)
        count = knobs.pick(floor, node.get("maxItems"), per=ITEM_SLOWNESS)
        fitted = {**node, "items": item_node, "maxItems": count}
    chars = [p[1] for p in prefix[:count]] + [item_chars] * (count - len(prefix))
    if prefix:
        fitted["prefixItems"] = [p[0] for p in prefix]
    return (node if knobs.limit is None else fitted), _joined(chars)


def _object(node: dict, knobs: _Knobs) -> tuple[dict, int]:
    properties = node.get("properties")
    extra = node.get("additionalProperties")
    if "patternProperties" in node or extra not in (None, False) or not isinstance(properties, dict):
        raise _Unbounded
    walked = {name: _walk(schema, knobs) for name, schema in properties.items()}
    chars = [_string_chars(name) + SEPARATOR + w[1] for name, w in walked.items()]
    fitted = {**node, "properties": {name: w[0] for name, w in walked.items()}, "additionalProperties": False}
    return (node if knobs.limit is None else fitted), _joined(chars)


def _joined(parts: list[int]) -> int:
    """Brackets around parts separated by ", "."""
    return BRACKETS + sum(parts) + SEPARATOR * max(len(parts) - 1, 0)


# --- literals (enum / const) -------------------------------------------------------------------------------------


def _literal_chars(value: Any) -> int:
    """Characters of a JSON value as xgrammar prints it (raw non-ASCII, numbers as C's %.17g or an integer)."""
    if isinstance(value, bool) or value is None:
        return len(json.dumps(value))
    if isinstance(value, int | float):
        return _number_literal_chars(value)
    if isinstance(value, str):
        return _string_chars(value)
    if isinstance(value, list):
        return _joined([_literal_chars(v) for v in value])
    if isinstance(value, dict):
        return _joined([_string_chars(str(k)) + SEPARATOR + _literal_chars(v) for k, v in value.items()])
    raise _Unbounded


def _number_literal_chars(value: float) -> int:
    try:
        return max(len(json.dumps(value)), len(f"{float(value):.17g}"))
    except OverflowError:
        return len(json.dumps(value))


def _string_chars(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False))
