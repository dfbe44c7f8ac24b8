"""Promotions as rules (pure) and on the chat path over a scripted fake backend and an in-process store (no engine,
no Ray): shadow samples move a promotion live, a live one routes its task's calls to the specialist and labels
them, other tasks still reach the LLM, and one that stops agreeing is rolled back."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from cluster.convert.promotion import (
    Agreement,
    Promotion,
    best_match,
    next_phase,
    promotion_misfit,
    similarity_bar,
)
from cluster.cost import PriceBook
from cluster.spec import ConversionSpec, parse_spec
from deployments.protocol import failure
from deployments.router.chat_endpoint import ChatEndpoint
from deployments.router.openai_api import ChatCompletionRequest
from deployments.router.promotions import (
    MAX_SIDE_SAMPLES,
    PROMOTIONS_NAMESPACE,
    Match,
    PromotionRouting,
    TaskMatcher,
    promotions_from,
)
from tests.unit.in_process_store import InProcessStore
from tests.unit.test_chat_escalation import FLEET, ScriptedBackend

pytestmark = pytest.mark.timeout(60)
DIM = 8
AXIS = np.eye(DIM, dtype=np.float32)


def promotion(phase: str = "shadow", specialist: str = "intent", bar: float = 0.8) -> Promotion:
    return Promotion(
        task="refunds", specialist=specialist, model="big", centroid=AXIS[0].tolist(), min_similarity=bar,
        embedding_model="fake", phase=phase,
    )  # fmt: skip


def test_the_best_match_must_reach_its_bar():
    near = (AXIS[0] + 0.2 * AXIS[1]) / np.linalg.norm(AXIS[0] + 0.2 * AXIS[1])
    other = promotion().model_copy(update={"task": "other", "centroid": AXIS[1].tolist()})
    found = best_match([promotion(), other], near)
    assert found is not None and found[0].task == "refunds" and found[1] == pytest.approx(0.98, abs=0.01)
    assert best_match([promotion()], AXIS[2]) is None


def test_phases_follow_agreement():
    policy = ConversionSpec(promote_after=3, min_agreement=0.9, min_validity=1.0, min_samples_for_rollback=4)
    assert next_phase("shadow", Agreement(2, 2, 2), policy) == "shadow"  # too few samples yet
    assert next_phase("shadow", Agreement(3, 3, 3), policy) == "live"
    assert next_phase("shadow", Agreement(10, 5, 10), policy) == "shadow"  # disagrees: stays with the LLM
    assert next_phase("live", Agreement(3, 0, 0), policy) == "live"  # too few to judge
    assert next_phase("live", Agreement(4, 4, 3), policy) == "rollback"  # invalid answers
    assert next_phase("live", Agreement(10, 8, 10), policy) == "rollback"


def test_the_bar_sits_under_the_task_and_above_the_others():
    own = [0.9, 0.85, 0.8, 0.95, 0.88]
    assert similarity_bar(own, [0.3, 0.4]) == pytest.approx(0.757, abs=0.01)
    assert similarity_bar(own, [0.79]) == pytest.approx((0.81 + 0.79) / 2, abs=0.01)  # halfway, not under 0.79


def test_a_promotion_must_fit_the_spec():
    spec = parse_spec(FLEET)
    assert promotion_misfit(spec, promotion()) is None
    assert "not an LLM-tier" in promotion_misfit(spec, promotion().model_copy(update={"model": "smol"}))
    assert "no specialist" in promotion_misfit(spec, promotion(specialist="gone"))
    _, set_aside = promotions_from(spec, {"x": promotion(specialist="gone").model_dump(), "y": {"task": 1}})
    assert set(set_aside) == {"x", "y"}


class KeywordEmbedder:
    """A fake embedding: refund talk points along axis 0, anything else along axis 1."""

    def embed(self, texts):
        return np.stack([AXIS[0] if "refund" in t.lower() else AXIS[1] for t in texts])


def ask(text: str) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "big", "messages": [{"role": "user", "content": text}]})


class Fleet:
    """The chat endpoint over a scripted backend, rebuilt from the store's promotions as a router replica is."""

    def __init__(self, backend: ScriptedBackend, policy: dict) -> None:
        self.spec = parse_spec({**FLEET, "conversion": policy})
        self.backend, self.store = backend, InProcessStore()
        self.matcher = TaskMatcher(KeywordEmbedder())

    async def endpoint(self) -> ChatEndpoint:
        promotions, _ = promotions_from(self.spec, await self.store.items(PROMOTIONS_NAMESPACE))
        self.routing = PromotionRouting(promotions, self.matcher, self.store, self.spec, self.backend.complete)
        self.matcher.ready.wait(5)
        prices = PriceBook.from_spec(self.spec)
        return ChatEndpoint(self.spec, self.backend, prices, "big", promotions=self.routing)

    async def ask(self, text: str) -> dict:
        status, body = await (await self.endpoint()).complete(ask(text))
        assert status == 200, body
        await asyncio.gather(*self.routing._side_tasks)
        return body

    async def phase(self) -> str | None:
        entry = await self.store.get(PROMOTIONS_NAMESPACE, "refunds")
        return entry["phase"] if entry else None


def test_shadow_then_live_then_other_tasks_stay_with_the_llm():
    async def scenario():
        backend = ScriptedBackend(smol="refund", big="refund")
        fleet = Fleet(backend, {"promote_after": 2, "shadow_rate": 0.0})
        await fleet.store.put(PROMOTIONS_NAMESPACE, "refunds", promotion().model_dump())
        shadow = await fleet.ask("I want a refund")
        assert shadow["slmfleet"]["served_by"] == "big" and shadow["slmfleet"]["promotion"]["phase"] == "shadow"
        assert backend.models()[-1] == "smol"  # the specialist answered on the side
        assert await fleet.phase() == "shadow"
        await fleet.ask("refund my order please")
        assert await fleet.phase() == "live"

        live = await fleet.ask("refund, now")
        assert live["slmfleet"]["served_by"] == "smol" and live["model"] == "big"
        assert live["slmfleet"]["promotion"] == {**live["slmfleet"]["promotion"], "task": "refunds", "phase": "live"}
        cost = live["slmfleet"]["cost"]
        assert cost["total"] < cost["llm_counterfactual"]
        backend.calls.clear()
        other = await fleet.ask("what is the weather like")
        assert other["slmfleet"]["served_by"] == "big" and "promotion" not in other["slmfleet"]
        assert backend.models() == ["big"]

    asyncio.run(scenario())


def test_a_live_promotion_that_disagrees_is_rolled_back_and_a_failing_specialist_escalates():
    async def scenario():
        backend = ScriptedBackend(smol="other", big="refund")
        fleet = Fleet(backend, {"shadow_rate": 1.0, "min_samples_for_rollback": 2})
        await fleet.store.put(PROMOTIONS_NAMESPACE, "refunds", promotion(phase="live").model_dump())
        first = await fleet.ask("refund please")
        assert first["slmfleet"]["served_by"] == "smol"
        assert backend.models()[-1] == "big"  # sampled: the LLM answered on the side
        await fleet.ask("a refund for order A1")
        assert await fleet.phase() is None  # rolled back
        after = await fleet.ask("refund please")
        assert after["slmfleet"]["served_by"] == "big" and "promotion" not in after["slmfleet"]

    asyncio.run(scenario())


def test_a_side_call_refused_for_capacity_is_no_sample_either_way():
    """A shadow comparison whose specialist was overloaded, or a live one whose LLM did not answer, compared
    nothing: counting it as a disagreement would keep a good specialist in shadow under load, or roll it back."""

    async def scenario():
        busy = failure("smol", "overloaded", "at capacity")
        backend = ScriptedBackend(smol=[busy, busy, busy, "refund"], big="refund")
        fleet = Fleet(backend, {"promote_after": 1, "shadow_rate": 1.0, "min_samples_for_rollback": 1})
        await fleet.store.put(PROMOTIONS_NAMESPACE, "refunds", promotion().model_dump())
        for _ in range(3):
            await fleet.ask("I want a refund")
            assert await fleet.phase() == "shadow"
        await fleet.ask("refund my order please")  # the first comparison that was made: it agrees
        assert await fleet.phase() == "live"

        backend.script["big"] = [failure("big", "engine_dead", "no replica")]
        for _ in range(3):  # every live call sampled; the LLM's side answers failed: nothing to roll back on
            assert (await fleet.ask("refund, now"))["slmfleet"]["served_by"] == "smol"
        assert await fleet.phase() == "live"

    asyncio.run(scenario())


def test_side_comparisons_in_flight_are_bounded_across_a_replicas_rebuilds():
    in_flight: set = set()  # the replica's, passed to each routing it builds
    spec, store = parse_spec(FLEET), InProcessStore()
    before, after = (
        PromotionRouting({}, TaskMatcher(KeywordEmbedder()), store, spec, None, side_tasks=in_flight) for _ in range(2)
    )
    match = Match(promotion(), 0.95, 1.0)
    assert after.wants_sample(match)
    before._side_tasks.update(object() for _ in range(MAX_SIDE_SAMPLES))  # still running from the old routing
    assert not after.wants_sample(match)
