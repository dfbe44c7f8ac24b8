"""Adapter affinity through Serve's real request routing: the model deployments' router
(``deployments/model/adapter_router.py``) on a two-replica stand-in deployment (no engine) whose replicas report
the adapters they hold the way model replicas do. Requests for a held adapter stick to its holder; a burst for it
spreads over both replicas (no replica above 2x the mean queue); the base model spreads as Serve's default does."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from cluster.deploy_options import ADAPTER_ROUTER_CLASS
from tests.integration.local_ray import private_ray

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")


@pytest.fixture(scope="module")
def local_serve() -> Iterator[None]:
    with private_ray("saf", num_cpus=4):
        serve.start(proxy_location="Disabled")  # handles only: no HTTP proxy to start (or fail its health check)
        try:
            yield
        finally:
            serve.shutdown()


def holder_app():
    """Two replicas that 'load' whatever adapter a request names and report what they hold, as a model replica's
    AdapterLoader does; each answers with its replica id. Defined in a function: Ray ships it by value."""
    from ray.serve.config import RequestRouterConfig

    from deployments.model.adapter_router import report_adapters

    @serve.deployment(
        num_replicas=2,
        max_ongoing_requests=100,
        ray_actor_options={"num_cpus": 0},
        request_router_config=RequestRouterConfig(request_router_class=ADAPTER_ROUTER_CLASS),
    )
    class Holder:
        def __init__(self) -> None:
            self.held: set[str] = set()
            self.replica = serve.get_replica_context().replica_id.unique_id

        async def __call__(self, seconds: float) -> str:
            key = serve.get_multiplexed_model_id()
            if key and key not in self.held:
                self.held.add(key)
                report_adapters(self.held)
            await asyncio.sleep(seconds)
            return self.replica

    return Holder.bind()


def test_requests_stick_to_the_adapters_holder_and_a_burst_spreads(local_serve) -> None:
    handle = serve.run(holder_app(), name="affinity", route_prefix=None)
    tuned = handle.options(multiplexed_model_id="adapter-x")
    holder = tuned.remote(0.0).result(timeout_s=60)
    time.sleep(3)  # the report reaches the controller, then every handle's router (long poll)

    sticky = Counter(tuned.remote(0.01).result(timeout_s=30) for _ in range(20))
    assert sticky == Counter({holder: 20}), sticky  # without affinity: both replicas, almost surely

    burst = Counter(r.result(timeout_s=60) for r in [tuned.remote(1.0) for _ in range(40)])
    print(f"sticky {dict(sticky)}, burst {dict(burst)}")
    assert len(burst) == 2, burst  # the hot holder did not take it all
    assert max(burst.values()) <= 2 * 40 / 2, burst  # neither replica above twice the mean

    base = Counter(handle.remote(0.01).result(timeout_s=30) for _ in range(20))
    assert len(base) == 2, base  # the base model is spread as Serve's default router spreads it
