"""The router's registry read (no Ray): at most one a period, forced after its own writes; no request served from
the empty copy before the first read (a new router replica answered 404 for a registered adapter so), and after it
no request held long by a slow store."""

import asyncio

from deployments.router.periodic_read import PATIENCE_S, PeriodicRead


class Store:
    """A read that takes a while and counts itself; ``copy`` is what a request would be served from."""

    def __init__(self) -> None:
        self.reads, self.copy, self.value = 0, "empty", "registered"

    async def read(self) -> None:
        self.reads += 1
        await asyncio.sleep(0.05)
        self.copy = self.value


def test_requests_during_the_first_read_wait_for_it_instead_of_seeing_the_empty_copy() -> None:
    store = Store()
    refresh = PeriodicRead(store.read, period_s=1.0)

    async def request() -> str:
        await refresh()
        return store.copy

    async def burst() -> list[str]:
        return await asyncio.gather(*(request() for _ in range(5)))

    assert asyncio.run(burst()) == ["registered"] * 5
    assert store.reads == 1


def test_one_read_a_period_and_a_forced_one_after_a_write() -> None:
    now = [100.0]
    store = Store()
    refresh = PeriodicRead(store.read, period_s=1.0, clock=lambda: now[0])

    async def steps() -> None:
        await refresh()
        now[0] += 0.5
        await refresh()  # within the period: no read
        assert store.reads == 1
        store.value = "changed"
        await refresh(force=True)  # this replica wrote: read now
        assert (store.reads, store.copy) == (2, "changed")
        now[0] += 1.0
        store.value = "changed again"
        await refresh()  # due: this request waits for it (reads take milliseconds)
        assert (store.reads, store.copy) == (3, "changed again")

    asyncio.run(steps())


def test_a_forced_read_during_one_under_way_waits_for_it_then_reads_again() -> None:
    store = Store()
    refresh = PeriodicRead(store.read, period_s=1.0)

    async def overlap() -> None:
        first = asyncio.create_task(refresh())
        await asyncio.sleep(0.01)
        store.value = "written meanwhile"
        await refresh(force=True)
        await first
        assert store.reads == 2 and store.copy == "written meanwhile"

    asyncio.run(overlap())


def test_a_cancelled_first_caller_leaves_the_first_read_running_and_the_next_requests_waiting_for_it() -> None:
    store = Store()
    refresh = PeriodicRead(store.read, period_s=1.0)

    async def request() -> str:
        await refresh()
        return store.copy

    async def cancelled_first() -> list[str]:
        first = asyncio.create_task(request())
        await asyncio.sleep(0.01)
        first.cancel()  # its client went away while the first read was under way
        return await asyncio.gather(*(request() for _ in range(3)))

    assert asyncio.run(cancelled_first()) == ["registered"] * 3
    assert store.reads == 1


def test_once_loaded_a_slow_store_holds_a_request_only_briefly() -> None:
    now = [100.0]
    store = Store()
    refresh = PeriodicRead(store.read, period_s=1.0, clock=lambda: now[0])

    async def slow_store() -> float:
        await refresh()  # the first read is waited for
        now[0] += 2.0

        async def hung() -> None:
            await asyncio.sleep(5)

        store.read, refresh.read = hung, hung  # the store stops answering
        started = asyncio.get_running_loop().time()
        await refresh()
        await refresh()
        return asyncio.get_running_loop().time() - started

    assert asyncio.run(slow_store()) < 2 * PATIENCE_S + 0.2  # each of the two waits at most PATIENCE_S
