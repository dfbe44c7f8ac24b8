"""The model deployment: one per spec model, each replica owning one vLLM engine.

It serves every specialist of the fleet (the router sends each request with its specialist's instructions,
contract and sampling defaults), so a step escalated from a small model to a large one keeps its contract, and the
model's app holds only the model's own settings. Failures come back as data
(:class:`GenerationError`), and ``check_health`` fails once the engine is dead so Serve replaces the replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import ray
from opentelemetry import trace

from cluster.adapter_files import AdapterFileError, check_adapter_folder
from cluster.adapter_probe import PROBE_TEXTS, PROBE_TOP_K, mean_divergence, probe_prefixes
from cluster.admission import Admission, decide_admission, model_objective_s, queue_budget
from cluster.autoscaling_policy import OBJECTIVE_METRIC, WAIT_METRIC
from cluster.memory import read_model_config
from cluster.model_store import resolve_source
from cluster.spec import AdapterSpec, ModelSpec
from deployments.model.adapter_router import report_adapters
from deployments.model.adapters import AdapterLoader, LoadedAdapter
from deployments.model.batch_slots import WAIT_WINDOW_S, BatchSlots
from deployments.model.chat_request import EngineCall, build_engine_call
from deployments.model.decode_rate import DecodeRate
from deployments.model.gpu_start_lock import gpu_start_lock
from deployments.model.json_budget import SchemaBudgetError
from deployments.model.throughput import ThroughputMeter
from deployments.model.tool_calls import ToolCallStream, split_tool_calls
from deployments.observability.telemetry import configure_tracing, context_from_carrier
from deployments.protocol import ErrorKind, GenerationRequest, GenerationResult, StreamDelta, failure

if TYPE_CHECKING:
    from deployments.model.engine import GenerationTally

log = logging.getLogger(__name__)
TRACER = trace.get_tracer("slmfleet.model_server")


class ModelServer:
    """Serve deployment class (options are applied by the app builder from the placement plan)."""

    def __init__(self, model_name: str, model: ModelSpec, engine_overrides: dict[str, Any] | None = None) -> None:
        entered = time.time()
        from deployments.model.engine import ChatEngine  # vLLM loads only inside the replica

        configure_tracing(f"slmfleet-model-{model_name}")
        self.model_name = model_name
        self.engine_overrides = dict(engine_overrides or {})
        self.throughput = ThroughputMeter()
        self.slots = BatchSlots(model.concurrent_seqs)
        self.decode = DecodeRate(model.concurrent_seqs)
        self.latency_objective_s: float = model_objective_s(model.latency_objective_s)
        self.max_waiting = model.max_queued_requests
        self.last_refusal = (float("-inf"), 0.0)  # (when, expected wait): refusals are demand too
        imported = time.time()
        path = resolve_source(model.source)
        resolved = time.time()
        gpu_ids = [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]
        with gpu_start_lock(gpu_ids):  # engines sharing a card profile its memory one at a time
            self.engine = ChatEngine.start(path, model, engine_overrides)
        capacity = (model.lora.max_cpu_loras or model.lora.max_loras) if model.lora else 0
        base_config = read_model_config(path)
        self.adapters = AdapterLoader(
            self.engine,
            capacity,
            lambda folder, adapter: check_adapter_folder(folder, model, base_config, adapter.trained_on),
            on_change=report_adapters,
        )
        # the base model's probe answers, measured once: at the first health check (idle), else with the first probe
        self._base_probe_task: asyncio.Task[list[dict[int, float]]] | None = None
        self.startup_s = startup_phases(entered, imported, resolved, time.time())
        log.info("model %s started: %s", model_name, self.startup_s)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """The deployment's ``user_config`` (live, no restart): the model's latency objective and queue bound."""
        self.latency_objective_s = model_objective_s(config.get("latency_objective_s"))
        self.max_waiting = config.get("max_queued_requests", self.max_waiting)

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Custom metrics for the autoscaling policy (Serve 2.60 polls this): the wait for a batch slot and the
        objective it is judged against. A recent refusal reports the wait it foresaw, so requests turned away still
        count as demand (they never show in the queue they were kept out of)."""
        refused_at, foreseen_wait = self.last_refusal
        wait = self.slots.wait_p90_s()
        if time.monotonic() - refused_at < WAIT_WINDOW_S:
            wait = max(wait, foreseen_wait)
        return {WAIT_METRIC: wait, OBJECTIVE_METRIC: self.latency_objective_s}

    def admission(self, request: GenerationRequest, work: float) -> Admission:
        """Whether ``request`` (``work`` expected tokens) may queue here: its expected wait against its priority
        class's share of the model's objective, or the caller's own smaller budget (a pipeline's time left)."""
        budget = queue_budget(self.latency_objective_s, request.priority, request.queue_budget_s)
        return decide_admission(
            work_ahead_tokens=self.slots.waiting_work,
            decode_rate_tokens_per_s=self.decode.tokens_per_s(),
            waiting=self.slots.waiting,
            max_waiting=self.max_waiting,
            budget_s=budget,
        )

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """A whole completion in one answer."""
        result = GenerationResult(model=self.model_name)
        async for item in self._traced(request, incremental=False):
            if isinstance(item, GenerationResult):
                result = item
        return result

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta | GenerationResult]:
        """Text deltas, then one final :class:`GenerationResult` with usage (or an error), in the caller's trace."""
        async for item in self._traced(request, incremental=True):
            yield item

    async def _traced(
        self, request: GenerationRequest, *, incremental: bool
    ) -> AsyncIterator[StreamDelta | GenerationResult]:
        adapter = request.specialist_spec.adapter if request.specialist_spec else None
        attributes = {
            "slmfleet.model": self.model_name,
            "slmfleet.specialist": request.specialist or "",
            "slmfleet.adapter": adapter.label() if adapter else "",
        }
        parent = context_from_carrier(request.trace_context)
        with TRACER.start_as_current_span("engine.generate", context=parent, attributes=attributes) as span:
            async for item in self._stream(request, incremental):
                if isinstance(item, GenerationResult):
                    span.set_attribute("slmfleet.tokens_in", item.prompt_tokens)
                    span.set_attribute("slmfleet.tokens_out", item.completion_tokens)
                yield item

    async def _stream(
        self, request: GenerationRequest, incremental: bool
    ) -> AsyncIterator[StreamDelta | GenerationResult]:
        from deployments.model.engine import (
            EngineDeadError,
            EngineGenerateError,
            GenerationTally,
            PromptRenderError,
            PromptTooLongError,
            VLLMClientError,
        )

        tally = GenerationTally()
        started = time.perf_counter()
        prepared = await self._prepare(request)
        if isinstance(prepared, GenerationResult):
            yield prepared
            return
        call, work, adapter = prepared
        calls = ToolCallStream() if call.tools else None
        self.throughput.started()
        try:
            async with self.adapters.using(adapter), self.slots.slot(work):
                in_slot = time.perf_counter()
                async for text in self.engine.generate(call, tally, incremental=incremental, adapter=adapter):
                    for delta in _deltas(text, calls, tally):
                        yield delta
                decoded_here = tally.completion_tokens - tally.resumed_tokens  # a resumed prefix took no time here
                self.decode.finished(decoded_here, time.perf_counter() - in_slot)
            if calls is not None and (rest := calls.flush()):
                yield StreamDelta(rest)
        except PromptTooLongError as exc:
            yield self._failed("context_length_exceeded", str(exc))
            return
        except (VLLMClientError, PromptRenderError) as exc:
            yield self._failed("bad_request", str(exc))
            return
        except EngineGenerateError as exc:  # the engine failed this request, and only it: logged, not returned
            log.warning("model %s: generation failed: %r", self.model_name, exc)
            yield self._failed("internal", f"model '{self.model_name}' could not generate this answer")
            return
        except EngineDeadError as exc:
            log.warning("model %s: engine dead: %r", self.model_name, exc)
            yield self._failed("engine_dead", f"the engine of model '{self.model_name}' died")
            return
        finally:
            self.throughput.finished(tally.prompt_tokens + tally.completion_tokens)  # a resumed prefix: prefilled here
        yield self._result(tally, calls, started)

    async def _prepare(
        self, request: GenerationRequest
    ) -> tuple[EngineCall, float, LoadedAdapter | None] | GenerationResult:
        """The engine call, its expected work and its loaded adapter; or the refusal (contract too big for the
        budget, queue too long, adapter that will not load)."""
        try:
            call = build_engine_call(request, request.specialist_spec)
        except SchemaBudgetError as exc:
            return self._failed("bad_request", str(exc))
        work = self.decode.expected_tokens(call.sampling.get("max_tokens"))
        verdict = self.admission(request, work)
        if not verdict.admitted:
            return self._refused(verdict)
        spec = request.specialist_spec
        if spec is None or spec.adapter is None:
            return call, work, None
        try:
            return call, work, await self.adapters.load(spec.adapter)
        except Exception as exc:  # files gone or unreadable since registration: the reason is logged
            log.warning("model %s: adapter %s: %r", self.model_name, spec.adapter, exc)
            return self._failed("internal", f"the adapter of specialist '{request.specialist}' could not be loaded")

    def _result(self, tally: GenerationTally, calls: ToolCallStream | None, started: float) -> GenerationResult:
        text, tool_calls = (tally.text, []) if calls is None else split_tool_calls(tally.text)
        # calls that completed are the answer (a call cut off at max_tokens was dropped): their finish is tool_calls
        finish = "tool_calls" if tool_calls else tally.finish_reason
        return GenerationResult(
            model=self.model_name,
            text=text,
            finish_reason=finish,
            prompt_tokens=tally.prompt_tokens,
            completion_tokens=tally.completion_tokens,
            mean_logprob=tally.mean_logprob,
            tool_calls=tool_calls,
            token_logprobs=tally.token_logprobs,
            extra={
                "engine_s": round(time.perf_counter() - started, 6),  # lets callers see their own overhead
                "tokens_per_hour": self.throughput.tokens_per_hour(),  # this replica's rate, for derived prices
            },
        )

    def _refused(self, verdict: Admission) -> GenerationResult:
        # a count-bound refusal before the rate is measured foresees no wait: report twice the objective instead
        foreseen = verdict.expected_wait_s if verdict.expected_wait_s is not None else 2 * self.latency_objective_s
        self.last_refusal = (time.monotonic(), foreseen)
        message = f"model '{self.model_name}' is at capacity: {verdict.reason}"
        return failure(self.model_name, "overloaded", message, verdict.retry_after_s, verdict.expected_wait_s)

    def _failed(self, kind: ErrorKind, message: str) -> GenerationResult:
        log.warning("model %s: %s: %s", self.model_name, kind, message)
        return failure(self.model_name, kind, message)

    async def probe_adapter(self, adapter: AdapterSpec) -> dict[str, Any]:
        """Load ``adapter`` and measure how far it moves the model (:mod:`cluster.adapter_probe`):
        ``{"divergence", "positions", "load_s"}``, or :func:`load_failure`'s answer when it cannot be loaded."""
        started = time.perf_counter()
        try:
            loaded = await self.adapters.load(adapter)
        except Exception as exc:  # the engine refused the files (rank, shapes), they are wrong, or the fetch failed
            log.warning("model %s: adapter %s not loaded: %r", self.model_name, adapter, exc)
            return load_failure(exc)
        load_s = time.perf_counter() - started
        async with self.adapters.using(loaded):  # a base probe still under way is batched with this one
            base, tuned = await asyncio.gather(asyncio.shield(self._base_probe()), self._probe_logprobs(loaded))
        divergence = mean_divergence(base, tuned)
        return {"divergence": divergence, "positions": len(tuned), "load_s": round(load_s, 3)}

    def _base_probe(self) -> asyncio.Task[list[dict[int, float]]]:
        """The base model's probe answers, one measurement per replica shared by every probe (measured again only
        if it failed)."""
        task = self._base_probe_task
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            self._base_probe_task = task = asyncio.create_task(self._probe_logprobs(None))
        return task

    async def _probe_logprobs(self, adapter: LoadedAdapter | None) -> list[dict[int, float]]:
        """The next-token log-probabilities after every probe prefix, one prefill each, all in one batch."""
        prefixes = [cut for text in PROBE_TEXTS for cut in probe_prefixes(self.engine.token_ids(text))]
        return list(
            await asyncio.gather(*(self.engine.next_token_logprobs(ids, adapter, PROBE_TOP_K) for ids in prefixes))
        )

    async def startup(self) -> dict[str, float]:
        """Where this replica's start-up went, in seconds (see :func:`startup_phases`)."""
        return self.startup_s

    async def load(self) -> dict[str, Any]:
        """What this replica holds now: requests inside vLLM (unfinished, its own count), requests waiting for a
        batch slot, and the admission inputs (decode rate, objective)."""
        return {
            "engine_requests": self.engine.engine.get_num_unfinished_requests(),
            "waiting": self.slots.waiting,
            "decode_tokens_per_s": self.decode.tokens_per_s(),
            "latency_objective_s": self.latency_objective_s,
        }

    async def wake(self) -> str:
        """A request that does nothing: the router sends it to a model at zero replicas so Serve starts one."""
        return self.model_name

    async def check_health(self) -> None:
        """Called by Serve every few seconds; raising marks the replica unhealthy and Serve replaces it. The first
        call on a LoRA-enabled replica also starts the base probe, so no registration waits for it."""
        await self.engine.check_health()
        if self.adapters.slots.capacity > 0:
            self._base_probe()

    async def placement(self) -> dict[str, Any]:
        """Where this replica runs (node, GPU ids, Ray resources) and the memory fraction its engine really got."""
        from deployments.placement_probe import replica_placement

        info = replica_placement(self.model_name, self.engine_overrides)
        info["gpu_memory_utilization"] = self.engine.engine.vllm_config.cache_config.gpu_memory_utilization
        return info

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


def load_failure(exc: Exception) -> dict[str, Any]:
    """A probe's answer for an adapter that did not load: ``{"error"}``, final, when its files or the engine
    refused it; ``{"error", "retry": True}`` when fetching it failed on the way (the disk, the network, the object
    store's servers), which a later call may get past: a router keeps no verdict for that one."""
    if _fetch_failed_on_the_way(exc):
        return {"error": f"the adapter could not be fetched ({type(exc).__name__}: {str(exc)[:200]})", "retry": True}
    return {"error": _engine_reason(exc)}


def _fetch_failed_on_the_way(exc: Exception) -> bool:
    """OS and network errors, botocore's own (not a ClientError: that is S3's answer, such as a missing bucket),
    and google-cloud's server-side and retry errors."""
    if isinstance(exc, AdapterFileError):
        return False
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    if type(exc).__module__.startswith("botocore"):
        return "ClientError" not in names
    return type(exc).__module__.startswith("google.api_core") and bool(names & {"ServerError", "RetryError"})


def _engine_reason(exc: Exception) -> str:
    """The engine's own words for a refused adapter ("LoRA rank 32 is greater than max_lora_rank 16."), without
    the wrapper text around them."""
    text = str(exc)
    if "error '" in text:
        text = text.split("error '", 1)[1].split("', please", 1)[0]
    return text[:300]


def startup_phases(entered: float, imported: float, resolved: float, ready: float) -> dict[str, float]:
    """A replica's start-up split by phase (wall-clock seconds): ``process`` from the worker process's birth to
    the constructor (Ray worker start, imports of this module), ``imports`` of vLLM and torch, ``weights`` (the
    model's files, converted once from the bundled GGUF), ``engine`` (vLLM's engine: load, profile, KV cache)."""
    import psutil  # vLLM's dependency: present wherever an engine runs

    born = psutil.Process().create_time()
    phases = {"process": entered - born, "imports": imported - entered, "weights": resolved - imported}
    phases["engine"] = ready - resolved
    return {name: round(max(0.0, seconds), 3) for name, seconds in phases.items()}


def _deltas(text: str, calls: ToolCallStream | None, tally: GenerationTally) -> list[StreamDelta]:
    """What one engine delta becomes on the wire: text (minus any tool-call markup), finished tool calls, and the
    log-probabilities of the tokens decoded since the last delta."""
    logprobs = None
    if tally.token_logprobs is not None:
        logprobs, tally.logprobs_sent = tally.token_logprobs[tally.logprobs_sent :], len(tally.token_logprobs)
    if calls is None:
        return [StreamDelta(text, logprobs=logprobs)]
    out = [StreamDelta(item) if isinstance(item, str) else StreamDelta(tool_call=item) for item in calls.feed(text)]
    if logprobs and out:
        out[0] = StreamDelta(out[0].text, out[0].tool_call, logprobs)
    return out
