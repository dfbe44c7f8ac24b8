"""ServeBackend's failure policy without a cluster: back-pressure is 503 data, lost replicas and dead engines
are retried once, then reported as engine_dead (so pipelines escalate and chat clients get a 503)."""

import asyncio

from ray.exceptions import ActorUnavailableError
from ray.serve.exceptions import BackPressureError

from deployments.protocol import GenerationError, GenerationResult
from deployments.router import ingress as router
from deployments.router.ingress import ServeBackend

OK = GenerationResult(model="m", text="fine", finish_reason="stop")
DEAD = GenerationResult(model="m", error=GenerationError("engine_dead", "gone"))


class ScriptedCalls:
    """Returns or raises the scripted outcomes in order (a fake for a Serve handle call)."""

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.count = 0

    async def __call__(self):
        self.count += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def run(call, monkeypatch):
    monkeypatch.setattr(router, "RETRY_DELAY_S", 0)
    return asyncio.run(ServeBackend({})._with_retry("m", call))


def test_back_pressure_is_overloaded_without_retry(monkeypatch):
    call = ScriptedCalls(BackPressureError(32, 32))
    result = run(call, monkeypatch)
    assert result.error.kind == "overloaded" and call.count == 1


def test_a_lost_replica_is_retried_once(monkeypatch):
    call = ScriptedCalls(ActorUnavailableError("restarting", None), OK)
    assert run(call, monkeypatch) is OK and call.count == 2


def test_a_dead_engine_answer_is_retried_once_then_reported(monkeypatch):
    assert run(ScriptedCalls(DEAD, OK), monkeypatch) is OK
    call = ScriptedCalls(DEAD, DEAD)
    assert run(call, monkeypatch).error.kind == "engine_dead" and call.count == 2


def test_two_lost_replicas_become_engine_dead(monkeypatch):
    lost = ActorUnavailableError("gone", None)
    result = run(ScriptedCalls(lost, lost), monkeypatch)
    assert result.error.kind == "engine_dead" and "no live replica" in result.error.message


def test_a_deleted_model_app_is_retried_once_then_reported_as_engine_dead(monkeypatch):
    """What a handle raises after `serve.delete("model-<name>")`: pipelines escalate it as 'unavailable'."""
    from ray.serve._private.common import DeploymentID
    from ray.serve.exceptions import DeploymentUnavailableError

    gone = DeploymentUnavailableError(DeploymentID(name="model-m", app_name="model-m"))
    call = ScriptedCalls(gone, gone)
    assert run(call, monkeypatch).error.kind == "engine_dead" and call.count == 2


class RecordingHandle:
    """A fake deployment handle: records the request that ``generate.remote`` was given."""

    def __init__(self):
        self.seen = []
        self.generate = self
        self.answer = OK

    async def remote(self, request):
        self.seen.append(request)
        return self.answer


def test_requests_leave_with_their_specialists_settings_attached():
    """Model apps hold no spec: the router sends each specialist's instructions, contract and defaults along."""
    from cluster.spec import SpecialistSpec
    from deployments.protocol import GenerationRequest

    intent = SpecialistSpec(model="m", instructions="Classify.", output={"choice": ["a", "b"]})
    handle = RecordingHandle()
    backend = ServeBackend({"m": handle}, {"intent": intent})
    asyncio.run(backend.complete("m", GenerationRequest("r1", [], specialist="intent")))
    asyncio.run(backend.complete("m", GenerationRequest("r2", [])))
    assert handle.seen[0].specialist_spec == intent
    assert handle.seen[1].specialist_spec is None


class RecordingMetrics:
    """A fake of FleetMetrics: a real price book, calls recorded."""

    def __init__(self, prices):
        self.prices = prices
        self.calls = []

    def record_call(self, model, request, result, pipeline):
        self.calls.append((model, self.prices.cost(model, 1000)))


def test_each_answer_feeds_its_replicas_measured_throughput_into_the_price_book():
    from cluster.cost import PriceBook
    from cluster.spec import parse_spec
    from deployments.protocol import GenerationRequest

    spec = parse_spec(
        {
            "models": {"m": {"source": "x", "pool": "l4"}},
            "pools": {"l4": {"accelerator": "L4", "gpus_per_node": 1, "gpu_memory_gib": 24, "price_per_gpu_hour": 1}},
        }
    )
    handle = RecordingHandle()
    handle.answer = GenerationResult(model="m", text="ok", extra={"tokens_per_hour": 500_000})
    metrics = RecordingMetrics(PriceBook.from_spec(spec, replica_per_hour={"m": 0.5}))
    asyncio.run(ServeBackend({"m": handle}, metrics=metrics).complete("m", GenerationRequest("r", [])))
    # 0.5 $/h per replica / 500,000 tokens/h x 1000 = 0.001 per 1k tokens, already used for this very call
    assert metrics.calls == [("m", 0.001)]


def test_requests_carry_the_callers_priority_and_the_tightest_queue_budget():
    from cluster.spec import SpecialistSpec
    from deployments.protocol import GenerationRequest
    from deployments.router.auth_gate import CALLER_PRIORITY

    interactive = SpecialistSpec(model="m", latency_objective_s=2.0)
    handle = RecordingHandle()
    backend = ServeBackend({"m": handle}, {"chat": interactive})

    async def calls():
        CALLER_PRIORITY.set("low")  # what the router's gate sets for the request
        await backend.complete("m", GenerationRequest("r1", [], specialist="chat"))
        await backend.complete("m", GenerationRequest("r2", [], specialist="chat", queue_budget_s=0.5))
        await backend.complete("m", GenerationRequest("r3", []))

    asyncio.run(calls())
    assert [r.priority for r in handle.seen] == ["low", "low", "low"]
    assert [r.queue_budget_s for r in handle.seen] == [2.0, 0.5, None]


class StreamingHandle:
    """A fake handle whose ``options(stream=True).stream.remote()`` plays one scripted stream per call; an item
    that is an exception is raised there (a replica lost mid-stream)."""

    def __init__(self, *streams):
        self.streams, self.calls, self.cancelled = list(streams), 0, 0
        self.stream = self
        self.seen = []

    def options(self, stream):
        return self

    def remote(self, request):
        self.calls += 1
        self.seen.append(request)
        return FakeResponse(self, self.streams.pop(0))


class FakeResponse:
    def __init__(self, handle, items):
        self.handle, self.items = handle, list(items)

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.items:
            raise StopAsyncIteration
        item = self.items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self):
        self.handle.cancelled += 1


def stream_through(handle, monkeypatch, request=None):
    from deployments.protocol import GenerationRequest

    monkeypatch.setattr(router, "RETRY_DELAY_S", 0)

    async def collect():
        backend = ServeBackend({"m": handle})
        return [item async for item in backend.stream("m", request or GenerationRequest("r", []))]

    return asyncio.run(collect())


def test_streams_share_the_plain_paths_retry_policy(monkeypatch):
    from deployments.protocol import StreamDelta

    # a dead engine's answer before any text: retried once, like a plain call
    handle = StreamingHandle([DEAD], [StreamDelta("fine"), OK])
    assert [getattr(i, "text", None) for i in stream_through(handle, monkeypatch)] == ["fine", "fine"]
    assert handle.calls == 2 and handle.seen[1].continue_from is None
    # lost twice: the second failure is the stream's end
    lost = ActorUnavailableError("gone", None)
    handle = StreamingHandle([lost], [StreamDelta("a"), lost])
    items = stream_through(handle, monkeypatch)
    assert items[-1].error.kind == "engine_dead" and handle.calls == 2
    assert "10." not in items[-1].error.message and "gone" not in items[-1].error.message  # Ray's text stays in logs


def test_a_free_text_stream_cut_after_text_left_is_resumed_where_it_was_cut(monkeypatch):
    """The second call continues the answer (its prompt ends with the text sent), first among its peers; the client
    sees each piece once, and the final result is the whole answer, marked as resumed."""
    from deployments.protocol import StreamDelta

    lost = ActorUnavailableError("gone", None)
    rest = GenerationResult(model="m", text="t two", finish_reason="stop", prompt_tokens=9, completion_tokens=4)
    for cut in (lost, DEAD):  # the replica process died, or its engine did
        handle = StreamingHandle([StreamDelta("Par"), StreamDelta("t one, "), cut], [StreamDelta("part two"), rest])
        items = stream_through(handle, monkeypatch)
        assert [i.text for i in items[:-1]] == ["Par", "t one, ", "part two"]
        assert handle.calls == 2
        again = handle.seen[1]
        assert again.continue_from == "Part one, " and again.priority == "high"
        final = items[-1]
        assert final.error is None and final.text == "Part one, t two"
        assert final.extra["resumed_after_chars"] == len("Part one, ")


def test_a_constrained_stream_cut_after_text_left_ends_with_the_failure(monkeypatch):
    """A continuation would restart the grammar mid-answer, so constrained output is never resumed."""
    from deployments.protocol import Contract, GenerationRequest, StreamDelta

    lost = ActorUnavailableError("gone", None)
    handle = StreamingHandle([StreamDelta('{"a": '), lost], [OK])
    request = GenerationRequest("r", [], contract=Contract(choice=("yes", "no")))
    items = stream_through(handle, monkeypatch, request)
    assert items[0].text == '{"a": ' and items[-1].error.kind == "engine_dead" and handle.calls == 1


def test_a_consumer_that_stops_early_cancels_the_replicas_stream(monkeypatch):
    from deployments.protocol import GenerationRequest, StreamDelta

    handle = StreamingHandle([StreamDelta("a"), StreamDelta("b"), OK])

    async def first_then_close():
        stream = ServeBackend({"m": handle}).stream("m", GenerationRequest("r", []))
        await anext(stream)
        await stream.aclose()  # what the stream guard does when the client goes away

    asyncio.run(first_then_close())
    assert handle.cancelled == 1


def serve_details(**models):
    """Serve's instance details for models given as (running replicas, target, min_replicas)."""
    apps = {}
    for model, (running, target, floor) in models.items():
        deployment = {
            "status": "HEALTHY" if running else "UPDATING",
            "replicas": [{"state": "RUNNING"}] * running,
            "target_num_replicas": target,
            "deployment_config": {"autoscaling_config": {"min_replicas": floor}},
        }
        apps[f"model-{model}"] = {"deployments": {f"model-{model}": deployment}}
    return {"applications": apps}


def test_unready_says_why_a_model_has_no_running_replica_and_wakes_only_one_at_zero(monkeypatch):
    woken = []

    async def wake(model):
        woken.append(model)

    async def check():
        backend = ServeBackend({}, scale_to_zero=frozenset({"cold", "waking"}))
        details = serve_details(smol=(1, 1, 1), dead=(0, 1, 1), cold=(0, 0, 0), waking=(0, 1, 0))

        async def fetch():
            return details

        backend.serve_details = router.ServeDetailsCache(fetch)
        monkeypatch.setattr(backend, "_wake", wake)
        answers = {m: await backend.unready(m) for m in ("smol", "dead", "cold", "waking", "gone")}
        await asyncio.sleep(0)  # the wake-ups are tasks
        return answers

    answers = asyncio.run(check())
    assert answers["smol"] is None
    assert answers["dead"].kind == "engine_dead" and "no running replica: 0 of 1" in answers["dead"].message
    assert answers["gone"].kind == "engine_dead" and "Serve has no app 'model-gone'" in answers["gone"].message
    assert {m: answers[m].kind for m in ("cold", "waking")} == {"cold": "cold_start", "waking": "cold_start"}
    assert sorted(woken) == ["cold", "waking"]  # a dead model is replaced by Serve, not woken by the router
