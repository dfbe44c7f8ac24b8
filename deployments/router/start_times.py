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
"""A replica start before any was seen: about a cold start of the bundled model on a small CPU host (20-30 s
measured, docs/benchmarks.md)."""


@dataclass
class StartTimes:
    """Per model: its replicas seen starting (id -> Serve's start time) and the last start seen through."""

    starting: dict[str, dict[str, float]] = field(default_factory=dict)
    last_start_s: dict[str, float] = field(default_factory=dict)

    def observe(self, model: str, replicas: Sequence[Mapping[str, Any]], now: float) -> None:
        """Note the replicas not yet RUNNING, and the start of each one seen starting that now runs."""
        seen, still = self.starting.get(model, {}), {}
        for replica in replicas:
            replica_id, started = replica.get("replica_id"), replica.get("start_time_s")
            if replica_id is None or started is None:
                continue
            if replica.get("state") != "RUNNING":
                still[replica_id] = float(started)
            elif replica_id in seen:
                self.last_start_s[model] = max(0.0, now - seen[replica_id])
        self.starting[model] = still

    def retry_after_s(self, model: str, replicas: Sequence[Mapping[str, Any]], now: float) -> int:
        """Whole seconds until the model's start furthest along is expected to run (at least 1)."""
        expected = self.last_start_s.get(model, DEFAULT_START_S)
        under_way = [
            now - float(r["start_time_s"])
            for r in replicas
            if r.get("state") != "RUNNING" and r.get("start_time_s") is not None
        ]
        return max(1, math.ceil(expected - (max(under_way) if under_way else 0.0)))
