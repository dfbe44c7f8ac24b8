"""Promoted tasks on the router: a chat call addressed to an LLM-tier model is matched against the promotions of
that model (its task text embedded with the loop's model) and, for a live promotion, served by the task's
specialist; shadow samples compare the specialist with the LLM on the side and move promotions between phases
(the rules are :mod:`cluster.convert.promotion`).

Cost on the hot path: one embedding per call to a model with promotions (about 12 ms on these CPUs), run in a
thread, never on the event loop. The embedding model (about 90 MB, 7 s to load) loads in a thread when the first
promotion appears; until it has loaded, calls are not matched and simply reach the LLM.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from cluster.convert.embed import Embedder, task_text
from cluster.convert.evaluate import agrees, is_valid
from cluster.convert.promotion import Agreement, Promotion, best_match, next_phase, promotion_misfit
from cluster.spec import FleetSpec
from deployments.protocol import GenerationRequest, GenerationResult

log = logging.getLogger(__name__)
PROMOTIONS_NAMESPACE = "promotions"
STATS_NAMESPACE = "promotion-stats"
UNCAPPED = 1e12  # the store's windowed counters take a finite limit; these only count
MAX_SIDE_SAMPLES = 8  # side comparisons in flight per router replica; a call beyond it is not sampled
# a side call refused for capacity or availability compared nothing: it is no sample (neither agreeing nor not)
NOT_COMPARED = frozenset({"overloaded", "cold_start", "engine_dead", "timeout"})
Call = Callable[[str, GenerationRequest], Awaitable[GenerationResult]]


class TaskMatcher:
    """The embedding model of one router replica, loaded once in a thread; None until it is ready."""

    def __init__(self, embedder: Embedder | None = None) -> None:
        self.embedder = embedder or Embedder()
        self.ready = threading.Event()
        self._started = False

    def warm(self) -> None:
        if self._started:
            return
        self._started = True

        def load() -> None:
            try:
                self.embedder.embed(["warm-up"])
                self.ready.set()
            except Exception as exc:  # promotions then stay unmatched: the LLM answers, as before
                log.warning("the promotion matcher's embedding model did not load: %r", exc)

        threading.Thread(target=load, name="promotion-embedder", daemon=True).start()

    async def vector(self, request: GenerationRequest) -> Any | None:
        if not self.ready.is_set():
            return None
        text = task_text({"messages": request.messages})
        return (await asyncio.to_thread(self.embedder.embed, [text]))[0]


@dataclass(frozen=True)
class Match:
    promotion: Promotion
    similarity: float
    match_ms: float

    def label(self) -> dict[str, Any]:
        """What the answer says of it (``slmfleet.promotion``)."""
        return {
            "task": self.promotion.task,
            "specialist": self.promotion.specialist,
            "phase": self.promotion.phase,
            "similarity": round(self.similarity, 4),
            "match_ms": round(self.match_ms, 2),
        }


class PromotionRouting:
    """One router state's promotions (from the shared store) with the replica's matcher and the store to count in."""

    def __init__(
        self,
        promotions: dict[str, Promotion],
        matcher: TaskMatcher,
        store: Any,
        spec: FleetSpec,
        call: Call,
        *,
        side_tasks: set[asyncio.Task[None]] | None = None,
    ) -> None:
        """``call(model, request)`` makes a model call (the router's backend); ``spec`` is the spec it serves;
        ``side_tasks`` are the replica's side comparisons in flight, shared by the routings it builds one after
        another (so the bound holds across a rebuild)."""
        self.by_model: dict[str, list[Promotion]] = {}
        for promotion in promotions.values():
            self.by_model.setdefault(promotion.model, []).append(promotion)
        self.matcher, self.store, self.call = matcher, store, call
        self.settings = spec.conversion
        self.model_of = {name: specialist.model for name, specialist in spec.specialists.items()}
        self._side_tasks: set[asyncio.Task[None]] = set() if side_tasks is None else side_tasks
        if promotions:
            matcher.warm()

    async def match(self, model: str, request: GenerationRequest) -> Match | None:
        """The promotion this call belongs to, if its model has any and its task text is close enough."""
        candidates = self.by_model.get(model)
        if not candidates or request.specialist is not None or request.tools is not None:
            return None
        started = time.perf_counter()
        vector = await self.matcher.vector(request)
        if vector is None:
            return None
        found = best_match(candidates, vector)
        if found is None:
            return None
        return Match(found[0], found[1], (time.perf_counter() - started) * 1000)

    def wants_sample(self, match: Match) -> bool:
        """Every shadow-phase call is a sample; a live promotion samples ``shadow_rate`` of its calls. Sampling is
        best effort: with :data:`MAX_SIDE_SAMPLES` comparisons in flight a call is not sampled, so a burst of the
        task's traffic cannot pile side calls onto the specialist's (or the LLM's) queue."""
        if len(self._side_tasks) >= MAX_SIDE_SAMPLES:
            return False
        return match.promotion.phase == "shadow" or random.random() < self.settings.shadow_rate

    def sample(self, match: Match, request: GenerationRequest, served: GenerationResult) -> None:
        """Compare on the side: the other party (specialist in shadow, LLM when live) answers the same request."""
        task = asyncio.get_running_loop().create_task(self._sample(match, request, served))
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _sample(self, match: Match, request: GenerationRequest, served: GenerationResult) -> None:
        promotion = match.promotion
        side = replace(request, request_id=f"{request.request_id}:shadow")
        try:
            if promotion.phase == "shadow":  # the LLM served; the specialist answers on the side
                llm_text = served.text
                on_specialist = replace(side, specialist=promotion.specialist)
                specialist = await self.call(self.model_of[promotion.specialist], on_specialist)
                if specialist.error is not None and specialist.error.kind in NOT_COMPARED:
                    return
            else:  # the specialist served; the LLM answers on the side
                llm = await self.call(promotion.model, replace(side, specialist=None))
                if llm.error is not None:  # nothing to compare the specialist with
                    return
                llm_text, specialist = llm.text, served
            example = {"answer": llm_text, "contract": asdict(request.contract) if request.contract else None}
            answered = specialist.error is None
            await self._count(
                match,
                agreed=answered and agrees(specialist.text, example),
                valid=answered and is_valid(specialist.text, example),
            )
        except Exception as exc:  # a side comparison never affects the caller
            log.warning("shadow sample for promotion %s failed: %r", promotion.task, exc)

    async def _count(self, match: Match, *, agreed: bool, valid: bool) -> None:
        promotion = match.promotion
        window = self.settings.stats_window_s
        prefix = f"{promotion.task}:{promotion.phase}"
        used = {}
        for name, amount in (("samples", 1), ("agreed", int(agreed)), ("valid", int(valid))):
            consumed = await self.store.consume(STATS_NAMESPACE, f"{prefix}:{name}", amount, UNCAPPED, window)
            used[name] = int(consumed.used)
        stats = Agreement(used["samples"], used["agreed"], used["valid"])
        await self._move(promotion, next_phase(promotion.phase, stats, self.settings), stats)

    async def _move(self, promotion: Promotion, to: str, stats: Agreement) -> None:
        if to == promotion.phase:
            return
        if to == "rollback":
            log.warning("promotion %s rolled back: agreement %.2f, validity %.2f over %d samples",
                        promotion.task, stats.rate(), stats.validity(), stats.samples)  # fmt: skip
            await self.store.delete(PROMOTIONS_NAMESPACE, promotion.task)
            return
        log.info("promotion %s goes %s: agreement %.2f, %d samples", promotion.task, to, stats.rate(), stats.samples)
        moved = promotion.model_copy(update={"phase": to})
        await self.store.put(PROMOTIONS_NAMESPACE, promotion.task, moved.model_dump())


def promotions_from(spec: FleetSpec, entries: dict[str, Any]) -> tuple[dict[str, Promotion], dict[str, str]]:
    """The store's entries that the spec can serve, and those set aside with the reason."""
    usable, set_aside = {}, {}
    for name, entry in entries.items():
        try:
            promotion = Promotion.model_validate(entry)
        except ValueError as exc:
            set_aside[name] = f"not a promotion: {exc}"
            continue
        reason = promotion_misfit(spec, promotion)
        if reason is None:
            usable[name] = promotion
        else:
            set_aside[name] = reason
    return usable, set_aside
