"""The fleet's state actor in a real local Ray: two stand-in router replicas share one quota and one idempotency key;
a killed actor comes back with its durable namespaces (from the snapshot file) and without the others; the CLI's
read finds nothing, and creates nothing, where no actor exists.

The local Ray is private (``address="local"``, its own temp dir): it never joins another Ray on this machine, and
its detached actors end with it. Each test names its own state actor, so no test sees another's state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from deployments.fleet_state import (
    STATE_NAMESPACE,
    Consumed,
    FleetState,
    fleet_state,
    read_runtime_state,
)
from tests.integration.local_ray import private_ray

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    with private_ray("sfs", num_cpus=2):
        yield


def router_replicas(state_name: str, count: int = 2) -> list:
    """Stand-ins for router replicas: separate processes, each with its own FleetState client on its own loop.

    Defined inside a function so Ray ships the class by value (workers need not import the tests package).
    """

    @ray.remote(num_cpus=0)
    class RouterReplica:
        def __init__(self, name: str) -> None:
            self.state = FleetState.connect(name=name, timeout_s=60)

        async def spend(self, calls: int, limit: float) -> list[bool]:
            answers = await asyncio.gather(*(self.state.consume("quota", "key-a", 1, limit, 600) for _ in range(calls)))
            return [answer.allowed for answer in answers]

        async def enter(self, calls: int, limit: int) -> list[str | None]:
            leases = await asyncio.gather(*(self.state.acquire("flight", "key-a", limit, 600) for _ in range(calls)))
            return [lease.lease_id for lease in leases]

        async def leave(self, lease_ids: list[str]) -> list[bool]:
            return [await self.state.release("flight", "key-a", lease_id) for lease_id in lease_ids]

        async def claim(self, key: str, me: str) -> tuple[bool, str]:
            return await self.state.put_if_absent("idempotency", key, me, 600)

        async def read(self, ns: str, key: str) -> object:
            return await self.state.get(ns, key)

    return [RouterReplica.remote(state_name) for _ in range(count)]


async def wait_for_restart(client: FleetState, old_pid: int, timeout_s: float = 60) -> dict:
    """The restarted actor's description. ray.kill only asks the GCS to kill: calls made right after it can still
    run on the old process (those in flight when it dies are retried on the new one)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        described = await client.describe()
        if described["pid"] != old_pid:
            return described
        await asyncio.sleep(0.1)
    raise AssertionError(f"the state actor (pid {old_pid}) did not restart within {timeout_s} s")


def test_two_replicas_share_one_quota_and_one_idempotency_key(local_ray):
    a, b = router_replicas("test-state-shared")
    spent_a, spent_b = ray.get([a.spend.remote(8, 10), b.spend.remote(8, 10)])
    assert sum(spent_a) + sum(spent_b) == 10  # 16 tries at one limit of 10, from two processes at once
    assert sum(spent_a) > 0
    assert sum(spent_b) > 0

    claims = ray.get([a.claim.remote("req-1", "a"), b.claim.remote("req-1", "b")])
    assert sorted(stored for stored, _ in claims) == [False, True]
    winner = next(me for (stored, _), me in zip(claims, "ab", strict=True) if stored)
    assert [current for _, current in claims] == [winner, winner]

    client = FleetState(fleet_state(name="test-state-shared"))
    assert asyncio.run(client.consume("quota", "key-a", 0, 10, 600)).used == 10

    leased_a, leased_b = ray.get([a.enter.remote(5, 6), b.enter.remote(5, 6)])
    held_by_a = [lease for lease in leased_a if lease]
    assert len(held_by_a) + len([lease for lease in leased_b if lease]) == 6  # one cap on flights from both
    assert ray.get(b.leave.remote(held_by_a)) == [True] * len(held_by_a)  # any replica may end a lease
    assert asyncio.run(client.acquire("flight", "key-a", 0, 600)).held == 6 - len(held_by_a)
    ray.kill(ray.get_actor("test-state-shared", namespace=STATE_NAMESPACE))


def test_restart_keeps_the_durable_namespaces_only(local_ray, tmp_path):
    name = "test-state-restart"
    path = tmp_path / "fleet-state.json"
    handle = fleet_state(str(path), name=name)
    client = FleetState(handle, timeout_s=60)
    replica = router_replicas(name, count=1)[0]
    adapter = {"base": "smol", "path": "/adapters/support"}

    async def before() -> dict:
        await client.put("adapters", "support", adapter)
        await client.put("promotions", "triage", "smol")
        await client.put("idempotency", "req-1", {"status": 200}, 600)
        assert (await client.consume("quota", "key-a", 10, 10, 600)).allowed
        return await client.describe()

    first = asyncio.run(before())
    assert first["snapshot_path"] == str(path)
    assert path.exists()

    ray.kill(handle, no_restart=False)  # the process dies; max_restarts=-1 brings it back, constructor and all
    second = asyncio.run(wait_for_restart(client, first["pid"]))

    async def after() -> tuple:
        return (
            await client.get("adapters", "support"),
            await client.items("promotions"),
            await client.get("idempotency", "req-1"),
            await client.consume("quota", "key-a", 10, 10, 600),
        )

    got_adapter, promotions, idempotent, consumed = asyncio.run(after())
    assert second["entries"] == {"adapters": 1, "promotions": 1}
    assert got_adapter == adapter
    assert promotions == {"triage": "smol"}
    assert idempotent is None  # not durable: gone with the process
    assert consumed == Consumed(True, 10, 0, 0)  # a fresh window
    assert ray.get(replica.read.remote("adapters", "support")) == adapter  # a replica's own handle still works
    assert read_runtime_state(name=name) == {"adapters": {"support": adapter}, "promotions": {"triage": "smol"}}
    ray.kill(handle)


def test_second_lookup_gets_the_same_actor_and_errors_keep_their_class(local_ray, tmp_path):
    name = "test-state-lookup"
    client = FleetState(fleet_state(name=name))
    asyncio.run(client.put("adapters", "a1", "v"))
    again = FleetState(fleet_state(str(tmp_path / "ignored.json"), name=name))  # exists: its own path stays
    assert asyncio.run(again.get("adapters", "a1")) == "v"
    assert asyncio.run(again.describe())["snapshot_path"] is None
    with pytest.raises(ValueError, match="adapters/a2"):
        asyncio.run(again.put("adapters", "a2", {1, 2}))
    ray.kill(ray.get_actor(name, namespace=STATE_NAMESPACE))


def test_read_runtime_state_without_an_actor_is_empty_and_creates_none(local_ray):
    name = "test-state-absent"
    assert read_runtime_state(name=name) == {}
    with pytest.raises(ValueError):
        ray.get_actor(name, namespace=STATE_NAMESPACE)
