"""A task's examples split into training and held-out slices, the same way at every stage and on every run: an
example is held out when the hash of its request id says so (about one in ``HELD_OUT_ONE_IN``), so adding traffic
never moves an old example from one slice to the other."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

HELD_OUT_ONE_IN = 4
MIN_HELD_OUT = 4


def is_held_out(request_id: str, one_in: int = HELD_OUT_ONE_IN) -> bool:
    return int(hashlib.sha256(request_id.encode()).hexdigest()[:8], 16) % one_in == 0


def split_task(examples: Iterable[dict[str, Any]], members: Iterable[str]) -> tuple[list[dict], list[dict]]:
    """``(train, held_out)`` of the examples whose request ids are the task's members. With too few held out for
    a measurement, the last training examples (in log order) are moved over, so the gate always has a slice."""
    wanted = set(members)
    mine = [e for e in examples if e["request_id"] in wanted]
    train = [e for e in mine if not is_held_out(e["request_id"])]
    held_out = [e for e in mine if is_held_out(e["request_id"])]
    while len(held_out) < MIN_HELD_OUT and len(train) > MIN_HELD_OUT:
        held_out.append(train.pop())
    return train, held_out
