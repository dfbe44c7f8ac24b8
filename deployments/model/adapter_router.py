"""The model deployments' Serve request router: power-of-two choices with adapter affinity.

A request routed with a ``multiplexed_model_id`` (the router sets it to the adapter's key) goes to replicas that
hold that adapter unless they are hot (:func:`cluster.adapter_affinity.affinity_candidates`); anything else is
plain power of two choices over every replica, as Serve's default router does. Replicas report the adapters they
hold through Serve's multiplexing channel (:func:`report_adapters`), so holders are known to every handle.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable

from ray.serve._private.request_router.common import PendingRequest
from ray.serve._private.request_router.replica_wrapper import RunningReplica
from ray.serve._private.request_router.request_router import FIFOMixin, MultiplexMixin, RequestRouter

from cluster.adapter_affinity import affinity_candidates

log = logging.getLogger(__name__)


class AdapterAffinityRouter(FIFOMixin, MultiplexMixin, RequestRouter):
    """Two random candidates of each rank :func:`affinity_candidates` gives; Serve sends to the shorter queue of
    the first rank with room."""

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        # Serve's routing task hands out replicas to queued requests back to back, and a request counts in the queue
        # cache only once its own task has sent it: yield once, so the requests chosen so far are counted before this
        # choice (else a burst reads the same stale queue lengths and lands on the holder whole).
        await asyncio.sleep(0)
        by_id = {replica.replica_id: replica for replica in candidate_replicas}
        try:
            adapter = pending_request.metadata.multiplexed_model_id if pending_request is not None else ""
            holders = self._multiplexed_model_id_to_replica_ids.get(adapter, set()) if adapter else set()
            queues = {rid: self.replica_queue_len_cache.get(rid) for rid in by_id}
            ranks = affinity_candidates(list(by_id), holders, queues)
        except Exception as exc:  # an error here would leave the request unrouted forever: route it anyway
            log.warning("adapter affinity failed, routing without it: %r", exc)
            ranks = [list(by_id)]
        return [[by_id[rid] for rid in random.sample(rank, min(2, len(rank)))] for rank in ranks]


def report_adapters(keys: Iterable[str]) -> None:
    """Tell Serve's controller which adapters this replica holds (what ``@serve.multiplexed`` reports for its
    models), so every handle's router sees the holders. Best effort: routing without it is only less sticky."""
    try:
        from ray.serve._private.common import RequestRoutingInfo
        from ray.serve.context import _get_global_client, _get_internal_replica_context

        context = _get_internal_replica_context()
        if context is None:
            return
        info = RequestRoutingInfo(replica_id=context.replica_id, multiplexed_model_ids=sorted(keys))
        _get_global_client().record_request_routing_info(info)
    except Exception as exc:
        log.warning("reporting held adapters to Serve failed: %r", exc)
