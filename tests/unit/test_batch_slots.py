"""BatchSlots: at most `size` requests in the engine, the rest wait in the open and their wait is measured."""

from __future__ import annotations

import asyncio

import pytest

from deployments.model.batch_slots import BatchSlots


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def hold(slots: BatchSlots, release: asyncio.Event, entered: list[float]) -> None:
    async with slots.slot() as waited:
        entered.append(waited)
        await release.wait()


def test_at_most_size_requests_hold_a_slot_and_the_rest_wait() -> None:
    async def scenario() -> None:
        clock, release, entered = Clock(), asyncio.Event(), []
        slots = BatchSlots(2, clock=clock)
        tasks = [asyncio.create_task(hold(slots, release, entered)) for _ in range(5)]
        await asyncio.sleep(0)
        assert (len(entered), slots.waiting) == (2, 3)
        clock.now += 4.0
        assert slots.wait_p90_s() == 4.0  # the oldest request still waiting: a stuck queue shows at once
        release.set()
        await asyncio.gather(*tasks)
        assert entered == [0.0, 0.0, 4.0, 4.0, 4.0] and slots.waiting == 0

    asyncio.run(scenario())


def test_p90_of_recent_waits_and_old_ones_forgotten() -> None:
    async def scenario() -> None:
        clock = Clock()
        slots = BatchSlots(1, window_s=30.0, clock=clock)
        assert slots.wait_p90_s() == 0.0
        for wait in [0.1] * 9 + [2.0]:
            gate = asyncio.Event()
            first = asyncio.create_task(hold(slots, gate, []))
            await asyncio.sleep(0)
            second = asyncio.create_task(hold(slots, asyncio.Event(), []))
            await asyncio.sleep(0)
            clock.now += wait
            gate.set()
            await first
            await asyncio.sleep(0)
            second.cancel()
            await asyncio.gather(second, return_exceptions=True)
        assert slots.wait_p90_s() == pytest.approx(0.1)  # nine of ten waited 0.1 s (and ten zero waits)
        clock.now += 31.0
        assert slots.wait_p90_s() == 0.0

    asyncio.run(scenario())


def test_a_cancelled_or_failed_holder_gives_its_slot_back() -> None:
    async def boom(slots: BatchSlots) -> None:
        async with slots.slot():
            raise RuntimeError("engine error")

    async def scenario() -> None:
        slots = BatchSlots(1, clock=Clock())
        with pytest.raises(RuntimeError):
            await boom(slots)
        waiter = asyncio.create_task(hold(slots, asyncio.Event(), []))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        entered: list[float] = []
        release = asyncio.Event()
        release.set()
        await asyncio.wait_for(hold(slots, release, entered), 1)
        assert entered == [0.0] and slots.waiting == 0

    asyncio.run(scenario())


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="size"):
        BatchSlots(0)


def test_waiting_work_sums_what_the_waiting_requests_will_cost_and_drops_them_once_in() -> None:
    async def scenario() -> None:
        slots, release = BatchSlots(1), asyncio.Event()

        async def request(work: float) -> None:
            async with slots.slot(work):
                await release.wait()

        tasks = [asyncio.create_task(request(w)) for w in (100.0, 30.0, 20.0)]
        await asyncio.sleep(0)
        assert slots.waiting_work == 50.0  # the first is in the batch; 30 + 20 wait behind it
        tasks[1].cancel()  # a request that gives up leaves the queue
        await asyncio.sleep(0)
        assert slots.waiting_work == 20.0
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert slots.waiting_work == 0.0

    asyncio.run(scenario())
