"""Adapter affinity: which replicas of a model a request for an adapter may go to (pure; the Serve request router
in ``deployments/model/adapter_router.py`` applies it).

A replica that already holds the adapter answers without loading it, so requests for an adapter prefer its
holders; but a hot adapter must not pile onto them while other replicas idle. The rule: a holder is preferred
while its queue is at most ``factor`` x the mean queue of the replicas that do not hold the adapter, plus
:data:`SLACK` (so a quiet fleet stays sticky); when every holder is hot the others are preferred (Serve picks the
shorter queue of two, and the one chosen loads the adapter). So under a burst a holder carries at most about twice
what the others do, and no replica rises above twice the mean queue. The answer is ranked: the replicas not
preferred come second, used only when every preferred one is full. When every replica holds the adapter, or none
does, all are one rank. A request for the base model goes anywhere.

The hot holders are left out of the first rank rather than put beside the others, because Serve picks among two
candidates by its queue-length cache and prefers one it has an entry for over one it must probe: in a burst the
holder (whose entry every send refreshes) would take every request before a probe of the other replica returned
(CI saw 40 of 40 on the holder).

(Measured against the mean over all replicas instead, the rule could never fire on two replicas: one queue is
never above twice the mean of itself and another.)
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping
from typing import TypeVar

Replica = TypeVar("Replica", bound=Hashable)  # a replica's id: a string here, Serve's ReplicaID in the router

HOT_FACTOR = 2.0
SLACK = 2  # requests a holder may have queued beyond HOT_FACTOR x the others' mean before it counts as hot


def affinity_candidates(
    replicas: Collection[Replica],
    holders: Collection[Replica],
    queues: Mapping[Replica, int | None],
    factor: float = HOT_FACTOR,
) -> list[list[Replica]]:
    """The replicas a request may be sent to, from ``replicas`` (in their order), in ranks: the first is preferred,
    the second is the fallback when the first is full. ``queues`` are the latest known queue lengths (None: not
    measured yet, counted as empty)."""
    everyone = list(replicas)
    held = [r for r in everyone if r in holders]
    others = [r for r in everyone if r not in holders]
    if not held or not others:
        return [everyone]
    limit = factor * sum(queues.get(r) or 0 for r in others) / len(others) + SLACK
    cool = [r for r in held if (queues.get(r) or 0) <= limit]
    if cool:
        return [cool, [r for r in everyone if r not in cool]]
    return [others, held]
