"""How long a model's replicas take to start, as this router saw them in Serve's details, and so when a caller
refused by a model with no running replica should come back: its ``Retry-After``.

While a model's only replica is being replaced (it died, or an apply restarts it), its calls queue at the router's
handle up to the deployment's bound and the rest are refused. ``Retry-After: 1`` would send a client that honours it
(the official ``openai`` client retries twice) back long before any replica can answer, and its retries run out.
The hint is the time the start furthest along still needs: the model's last start this router saw, from Serve's
start time to the first read that found it RUNNING (an upper bound, within one read of Serve's details), less how
long the starting replica has been at it.
Before any start was seen, :data:`DEFAULT_START_S`. Pure: the caller passes the replicas and the wall clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_START_S = 30.0
"""A replica start before any was seen: about a cold start of the bundled model on a small CPU host (20-35 s
measured, docs/benchmarks.md)."""
SIGHTING_GAP_S = 5.0
"""A start is learned only when the read that finds the replica RUNNING came at most this long after one that found
it STARTING: reads are sparse when nothing asks, and a start seen an hour apart would teach an hour."""
MAX_RETRY_AFTER_S = 120
"""The official ``openai`` client does not retry at all past a ``Retry-After`` of 120 s."""


@dataclass
class StartTimes:
    """Per model: its replicas seen STARTING (id -> Serve's start time, when last seen so) and its last start."""

    starting: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    last_start_s: dict[str, float] = field(default_factory=dict)

    def observe(self, model: str, replicas: Sequence[Mapping[str, Any]], read_at: float) -> None:
        """Note the replicas STARTING in a read of Serve's details made at ``read_at`` (wall clock), and learn the
        start of each one seen STARTING in the read before that now runs."""
        seen, still = self.starting.get(model, {}), {}
        for replica in replicas:
            replica_id, started = replica.get("replica_id"), replica.get("start_time_s")
            if replica_id is None or started is None:
                continue
            if replica.get("state") == "STARTING":
                still[replica_id] = (float(started), read_at)
            elif replica.get("state") == "RUNNING" and replica_id in seen:
                began, last_seen = seen[replica_id]
                if read_at - last_seen <= SIGHTING_GAP_S:
                    self.last_start_s[model] = max(0.0, read_at - began)
        self.starting[model] = still

    def retry_after_s(self, model: str, replicas: Sequence[Mapping[str, Any]], now: float) -> int:
        """Whole seconds until the model's start furthest along is expected to run (1 to :data:`MAX_RETRY_AFTER_S`);
        replicas stopping or updating are not starts."""
        expected = self.last_start_s.get(model, DEFAULT_START_S)
        under_way = [
            now - float(r["start_time_s"])
            for r in replicas
            if r.get("state") == "STARTING" and r.get("start_time_s") is not None
        ]
        left = expected - (max(under_way) if under_way else 0.0)
        return min(MAX_RETRY_AFTER_S, max(1, math.ceil(left)))
