"""Runs agent pipelines against an abstract model caller: steps in order, conditions, escalation, tools, cost.

The runner knows nothing about Ray: it calls ``call_model(model_deployment_name, GenerationRequest)`` and a
:class:`~deployments.pipeline.tools.ToolRegistry`. The router wires ``call_model`` to Serve handles; tests pass a fake.

Per model call the pure policy in :mod:`cluster.escalation` decides: accept, retry on the same model with a
larger ``max_tokens`` (truncated output), escalate the SAME request (the specialist's instructions and contract
still apply) to the policy's LLM-tier model, or fail the step. A step failure stops the run unless the step says
``on_error: continue``; either way it is in the result, never swallowed.

Tracing uses only the OpenTelemetry API: a span per run, step, model call and tool call. With no SDK configured
those are no-op spans; tests pass a ``tracer_provider`` of their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from cluster.conditions import Condition, ConditionError
from cluster.cost import CostSummary, PriceBook, llm_reference_model, sum_costs
from cluster.escalation import CallOutcome, Verdict, decide, escalates_when_unavailable, is_capacity_escalation
from cluster.pipeline_spec import EscalationPolicy, PipelineSpec, StepSpec
from cluster.spec import FleetSpec, OutputContract
from cluster.spec_errors import suggest
from cluster.templating import Template, render_structure
from deployments.pipeline.result import (
    Attempt,
    Escalation,
    EventType,
    PipelineResult,
    StepError,
    StepEvent,
    StepResult,
    StepStatus,
)
from deployments.pipeline.tools import ToolRegistry, ToolResult
from deployments.protocol import (
    Contract,
    GenerationError,
    GenerationRequest,
    GenerationResult,
    Readiness,
    StreamDelta,
)

if TYPE_CHECKING:
    from deployments.router.escalation_budget import EscalationBudget

ModelCaller = Callable[[str, GenerationRequest], Awaitable[GenerationResult]]
ModelStreamer = Callable[[str, GenerationRequest], AsyncIterator[StreamDelta | GenerationResult]]
Emit = Callable[[StepEvent], None]
DEFAULT_MAX_TOKENS = 256
log = logging.getLogger(__name__)


class UnknownPipelineError(LookupError):
    """No pipeline by that name (the router answers 404)."""


def _to_contract(output: OutputContract | None) -> Contract | None:
    if output is None:
        return None
    choice = tuple(output.choice) if output.choice is not None else None
    return Contract(json_schema=output.json_schema, choice=choice, regex=output.regex)


@dataclass(frozen=True)
class _StepPlan:
    """A step with everything resolved at startup: its model, contract, limits, policy, parsed templates."""

    name: str
    spec: StepSpec
    model: str | None
    contract: Contract | None
    max_tokens: int
    timeout_s: float
    policy: EscalationPolicy
    can_escalate: bool
    llm_model: str | None  # prices this step's LLM-tier counterfactual
    input: Template | None
    when: Condition | None
    depends_on: frozenset[str]  # in a parallel pipeline, the steps that must finish first


@dataclass(frozen=True)
class _PipelinePlan:
    name: str
    steps: tuple[_StepPlan, ...]
    output: Any  # None, a template string, or a mapping of templates
    llm_model: str | None
    parallel: bool
    live_step: str | None  # the step whose text, streamed as generated, is the run's output (see _live_step)
    deadline_s: float | None  # the pipeline's latency objective: every model call fits in what remains of it


def _plan_pipeline(spec: FleetSpec, name: str, tools: ToolRegistry) -> _PipelinePlan:
    pipeline = spec.pipelines[name]
    steps = tuple(_plan_step(spec, pipeline, step, tools) for step in pipeline.steps)
    llm = llm_reference_model(spec, pipeline.escalation.to)
    live = _live_step(pipeline, steps)
    return _PipelinePlan(name, steps, pipeline.output, llm, pipeline.parallel, live, pipeline.latency_objective_s)


def _live_step(pipeline: PipelineSpec, steps: tuple[_StepPlan, ...]) -> str | None:
    """The last step, when its text can leave as it is generated: it is the run's output (no ``output:``
    template), a model call in free text (no contract to check first), and never judged unsure after the fact
    (no low-confidence escalation)."""
    last = steps[-1] if steps else None
    if pipeline.output is not None or last is None or last.model is None or last.spec.kind == "tool":
        return None
    unsure_possible = last.policy.min_confidence > 0 and "low_confidence" in last.policy.reasons
    return None if last.contract is not None or unsure_possible else last.name


def _plan_step(spec: FleetSpec, pipeline: PipelineSpec, name: str, tools: ToolRegistry) -> _StepPlan:
    step = pipeline.steps[name]
    policy = pipeline.policy_for(name)
    model, contract, max_tokens = _model_contract_limit(spec, step, tools)
    can_escalate = policy.to is not None and model is not None and spec.models[model].tier != "llm"
    calls_model = model is not None
    return _StepPlan(
        name=name,
        spec=step,
        model=model,
        contract=contract,
        max_tokens=max_tokens,
        timeout_s=step.timeout_s or pipeline.step_timeout_s,
        policy=policy,
        can_escalate=can_escalate,
        llm_model=llm_reference_model(spec, policy.to),
        input=Template.parse(step.input_template) if calls_model else None,
        when=Condition.parse(step.when) if step.when is not None else None,
        depends_on=frozenset(step.depends_on()),
    )


def _model_contract_limit(
    spec: FleetSpec, step: StepSpec, tools: ToolRegistry
) -> tuple[str | None, Contract | None, int]:
    """Which model a step calls first, under which contract, with which max_tokens (None model: no call)."""
    if step.specialist is None:
        return step.model, None, step.max_tokens or DEFAULT_MAX_TOKENS
    specialist = spec.specialists[step.specialist]
    max_tokens = step.max_tokens or specialist.sampling.max_tokens
    if step.tool is not None:  # the specialist fills the tool's arguments under the tool's schema
        schema = tools.get(step.tool).args_schema if step.tool in tools else spec.tools[step.tool].args_schema
        return specialist.model, Contract(json_schema=schema), max_tokens
    return specialist.model, _to_contract(specialist.output), max_tokens


@dataclass
class _Calls:
    """The model calls of one step so far: attempts, escalations, and the accepted or failing outcome."""

    model: str
    attempts: list[Attempt] = field(default_factory=list)
    escalations: list[Escalation] = field(default_factory=list)
    parsed: Any = None
    text: str | None = None
    error: StepError | None = None


@dataclass
class _Run:
    """State of one run: the scope templates read, the step results so far, and where events go."""

    plan: _PipelinePlan
    run_id: str
    emit: Emit
    started: float
    scope: dict[str, Any]
    results: list[StepResult] = field(default_factory=list)

    @property
    def listening(self) -> bool:
        """Whether anyone takes events (an SSE run): the big payloads are built only then."""
        return self.emit is not _no_emit

    def event(self, event_type: EventType, step: str | None, /, **data: Any) -> None:
        self.emit(StepEvent(event_type, self.plan.name, self.run_id, step, data))

    def record(self, result: StepResult) -> None:
        self.results.append(result)
        self.scope["steps"][result.name] = result.scope_entry()

    def remaining_s(self, now: float) -> float | None:
        """What is left of the run's deadline (None: the pipeline has none)."""
        return None if self.plan.deadline_s is None else self.plan.deadline_s - (now - self.started)


def _no_emit(_event: StepEvent) -> None:
    return None


class _StopRun(Exception):
    """A parallel run's step failed with ``on_error: stop``: the run ends with its error."""

    def __init__(self, error: StepError | None) -> None:
        super().__init__(str(error))
        self.error = error


class PipelineRunner:
    """Executes the spec's pipelines; build one per app and share it across requests (it holds no run state)."""

    def __init__(
        self,
        spec: FleetSpec,
        call_model: ModelCaller,
        tools: ToolRegistry,
        clock: Callable[[], float] = time.monotonic,
        *,
        tracer: trace.Tracer | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        prices: PriceBook | None = None,
        on_finished: Callable[[PipelineResult], None] | None = None,
        stream_model: ModelStreamer | None = None,
        budget: EscalationBudget | None = None,
        unready: Readiness | None = None,
    ) -> None:
        """``on_finished`` sees every finished run, JSON or streamed (the router counts runs and escalations).

        With ``unready`` (why a model has no running replica, or None), a step that may escalate for
        ``unavailable`` does so at once when its model is down or at zero, instead of waiting out its timeout.

        With ``stream_model``, an event-streamed run sends its output step's text as ``step_delta`` events while
        the model generates it (see :func:`_live_step`).
        """
        self._stream_model = stream_model
        self._budget = budget  # caps capacity escalations to the LLM tier (None: uncapped)
        self._unready = unready
        self._spec = spec
        self._call_model = call_model
        self._tools = tools
        self._clock = clock
        self._tracer = tracer or trace.get_tracer(__name__, tracer_provider=tracer_provider)
        self._prices = prices or PriceBook.from_spec(spec)
        self._on_finished = on_finished
        self.stream_timeout_s = spec.server.stream_timeout_s  # an event stream's overall limit (routes)
        self._plans = {name: _plan_pipeline(spec, name, tools) for name in spec.pipelines}

    @property
    def pipelines(self) -> list[str]:
        return list(self._plans)

    def _plan(self, name: str) -> _PipelinePlan:
        if name not in self._plans:
            hint = suggest(name, list(self._plans))
            extra = f"; did you mean '{hint}'?" if hint else f"; known: {', '.join(self._plans) or '(none)'}"
            raise UnknownPipelineError(f"no pipeline named '{name}'{extra}")
        return self._plans[name]

    async def run(self, name: str, inputs: Mapping[str, Any], *, run_id: str | None = None) -> PipelineResult:
        """Run a pipeline to the end; step failures are in the result, only an unknown name raises."""
        return await self._execute(self._plan(name), inputs, _no_emit, run_id)

    async def run_events(
        self, name: str, inputs: Mapping[str, Any], *, run_id: str | None = None
    ) -> AsyncIterator[StepEvent]:
        """The same run as a stream of events for SSE; the last event is ``pipeline_finished``."""
        plan = self._plan(name)
        queue: asyncio.Queue[StepEvent | None] = asyncio.Queue()
        task = asyncio.create_task(self._execute(plan, inputs, queue.put_nowait, run_id))
        task.add_done_callback(lambda _task: queue.put_nowait(None))
        try:
            while (event := await queue.get()) is not None:
                yield event
            task.result()  # surfaces a bug in the runner instead of ending the stream silently
        finally:
            if not task.done():
                task.cancel()  # the client went away: stop calling models for it

    async def _execute(
        self, plan: _PipelinePlan, inputs: Mapping[str, Any], emit: Emit, run_id: str | None
    ) -> PipelineResult:
        if not isinstance(inputs, Mapping):
            raise TypeError(f"pipeline inputs must be a mapping, got {type(inputs).__name__}")
        run_id = run_id or uuid.uuid4().hex[:16]
        scope = {"input": dict(inputs), "steps": {}}
        run = _Run(plan, run_id, emit, self._clock(), scope)
        attributes = {"slmfleet.pipeline": plan.name, "slmfleet.run_id": run_id}
        with self._tracer.start_as_current_span(f"pipeline {plan.name}", attributes=attributes) as span:
            error = await self._run_steps(run)
            result = self._finish(run, error)
            span.set_attribute("slmfleet.status", result.status)
            _set_token_attributes(span, result.tokens_in, result.tokens_out)
        if self._on_finished is not None:
            self._on_finished(result)
        if run.listening:
            run.event("pipeline_finished", None, **result.to_dict())
        return result

    async def _run_steps(self, run: _Run) -> StepError | None:
        if run.plan.parallel:
            return await self._run_steps_parallel(run)
        for step in run.plan.steps:
            result = await self._run_step(run, step)
            run.record(result)
            if result.status == "failed" and step.spec.on_error == "stop":
                return result.error
        return None

    async def _run_steps_parallel(self, run: _Run) -> StepError | None:
        """Each step starts once the steps it depends on have finished; a failing ``on_error: stop`` step cancels
        the steps still running or waiting, as a sequential run would never have started them."""
        finished = {step.name: asyncio.Event() for step in run.plan.steps}

        async def one(step: _StepPlan) -> None:
            for name in step.depends_on:
                await finished[name].wait()
            result = await self._run_step(run, step)
            run.record(result)
            if result.status == "failed" and step.spec.on_error == "stop":
                raise _StopRun(result.error)
            finished[step.name].set()

        stops: list[_StopRun] = []
        try:
            async with asyncio.TaskGroup() as group:
                for step in run.plan.steps:
                    group.create_task(one(step))
        except* _StopRun as group_error:
            stops.extend(e for e in group_error.exceptions if isinstance(e, _StopRun))
        return stops[0].error if stops else None

    def _finish(self, run: _Run, error: StepError | None) -> PipelineResult:
        order = {step.name: index for index, step in enumerate(run.plan.steps)}
        run.results.sort(key=lambda result: order[result.name])  # as written, however a parallel run finished
        steps = run.results
        output = None if error else self._final_output(run)
        cost = CostSummary.of((s.cost for s in steps), (s.llm_cost for s in steps), run.plan.llm_model)
        return PipelineResult(
            pipeline=run.plan.name,
            run_id=run.run_id,
            status="failed" if error else "ok",
            output=output,
            steps=steps,
            tokens_in=sum(s.tokens_in for s in steps),
            tokens_out=sum(s.tokens_out for s in steps),
            latency_s=self._clock() - run.started,
            cost=cost,
            error=error,
        )

    @staticmethod
    def _final_output(run: _Run) -> Any:
        if run.plan.output is not None:
            return render_structure(run.plan.output, run.scope)
        ran = [s for s in run.results if s.status != "skipped"]
        return ran[-1].output if ran else None

    # --- steps -------------------------------------------------------------------------------------------------

    async def _run_step(self, run: _Run, step: _StepPlan) -> StepResult:
        attributes = {"slmfleet.pipeline": run.plan.name, "slmfleet.step": step.name, "slmfleet.kind": step.spec.kind}
        with self._tracer.start_as_current_span(f"step {step.name}", attributes=attributes) as span:
            started = self._clock()
            result = self._skip_or_fail_condition(run, step)
            if result is None:
                run.event("step_started", step.name, kind=step.spec.kind, model=step.model)
                runner = self._tool_step if step.spec.kind == "tool" else self._model_step
                result = await runner(run, step)
            result.latency_s = self._clock() - started
            _annotate_step_span(span, result)
        if run.listening:
            run.event("step_finished", step.name, **result.to_dict())
        return result

    def _skip_or_fail_condition(self, run: _Run, step: _StepPlan) -> StepResult | None:
        if step.when is None:
            return None
        try:
            if step.when.evaluate(run.scope):
                return None
        except ConditionError as exc:
            return self._empty(step, "failed", StepError("condition", f"when: {exc}", step.name))
        return self._empty(step, "skipped")

    @staticmethod
    def _empty(step: _StepPlan, status: StepStatus, error: StepError | None = None) -> StepResult:
        spec = step.spec
        return StepResult(step.name, spec.kind, status, specialist=spec.specialist, tool=spec.tool, error=error)

    async def _model_step(self, run: _Run, step: _StepPlan) -> StepResult:
        calls = await self._call_with_policy(run, step, self._request(run, step))
        result = StepResult(
            step.name, step.spec.kind, "failed" if calls.error else "ok", specialist=step.spec.specialist
        )
        return self._with_calls(result, calls, step)

    async def _tool_step(self, run: _Run, step: _StepPlan) -> StepResult:
        spec = step.spec
        result = StepResult(step.name, "tool", "ok", specialist=spec.specialist, tool=spec.tool)
        if spec.specialist is not None:  # a specialist decodes the arguments under the tool's schema
            calls = await self._call_with_policy(run, step, self._request(run, step))
            self._with_calls(result, calls, step)
            if calls.error:
                result.status = "failed"
                return result
            args = calls.parsed
        else:
            args = render_structure(spec.args, run.scope)
        result.args = args
        outcome = await self._call_tool(run, str(spec.tool), args)
        result.output = outcome.output
        if not outcome.ok:
            result.status = "failed"
            result.error = StepError("tool", f"{spec.tool}: {outcome.error}", step.name)
        return result

    def _request(self, run: _Run, step: _StepPlan) -> GenerationRequest:
        content = step.input.render(run.scope) if step.input is not None else ""
        messages = [{"role": "user", "content": content}]
        if step.spec.instructions:
            messages.insert(0, {"role": "system", "content": step.spec.instructions})
        policy = step.policy
        return GenerationRequest(
            request_id=f"{run.run_id}:{step.name}",
            messages=messages,
            specialist=step.spec.specialist,
            contract=step.contract,
            max_tokens=step.spec.max_tokens,
            logprobs=policy.min_confidence > 0 and "low_confidence" in policy.reasons,
        )

    def _with_calls(self, result: StepResult, calls: _Calls, step: _StepPlan) -> StepResult:
        result.output = calls.parsed
        result.text = calls.text
        result.model = calls.model
        result.attempts = calls.attempts
        result.escalations = calls.escalations
        result.error = calls.error
        result.tokens_in = sum(a.tokens_in for a in calls.attempts)
        result.tokens_out = sum(a.tokens_out for a in calls.attempts)
        result.cost = sum_costs(a.cost for a in calls.attempts)
        last = calls.attempts[-1] if calls.attempts else None
        llm = step.llm_model
        result.llm_cost = self._prices.cost(llm, last.tokens_in + last.tokens_out) if last and llm else None
        return result

    # --- model calls and escalation ----------------------------------------------------------------------------

    async def _call_with_policy(self, run: _Run, step: _StepPlan, request: GenerationRequest) -> _Calls:
        """Call, judge, and retry or escalate until the policy accepts or gives up (bounded by the policy)."""
        calls = _Calls(model=str(step.model))
        can_escalate, retries, max_tokens = step.can_escalate, 0, step.max_tokens
        while True:
            outcome, attempt = await self._attempt(run, step, calls, request)
            verdict = decide(
                outcome,
                step.contract,
                step.policy,
                max_tokens=max_tokens,
                retries_done=retries,
                can_escalate=can_escalate,
            )
            calls.attempts.append(replace(attempt, action=verdict.action, reason=verdict.reason, detail=verdict.detail))
            if verdict.action == "accept":
                calls.parsed, calls.text = verdict.parsed, _text(outcome)
                return calls
            if verdict.action == "fail":
                calls.text = _text(outcome)
                calls.error = StepError(_error_kind(verdict), verdict.detail, step.name)
                return calls
            if verdict.action == "retry":
                retries, max_tokens = retries + 1, verdict.max_tokens or max_tokens
                request = _retry_request(request, retries, max_tokens, step.max_tokens)
                run.event("step_retried", step.name, model=calls.model, reason=verdict.reason, max_tokens=max_tokens)
                continue
            if await self._over_budget(step, calls, outcome):
                return calls
            from_model = calls.model
            self._escalate(run, step, calls, verdict)
            can_escalate, retries = False, 0
            request = replace(
                request,
                request_id=f"{run.run_id}:{step.name}:escalated",
                escalated_from=from_model,
                escalation_reason=str(verdict.reason),
            )

    async def _over_budget(self, step: _StepPlan, calls: _Calls, outcome: CallOutcome) -> bool:
        """Whether this capacity escalation is refused by the LLM tier's budget (the step then fails as unavailable)."""
        if self._budget is None or not is_capacity_escalation(outcome):
            return False
        target = str(step.policy.to)
        if await self._budget.take(target) is None:
            return False
        calls.error = StepError("unavailable", self._budget.refusal(calls.model, target), step.name)
        return True

    def _escalate(self, run: _Run, step: _StepPlan, calls: _Calls, verdict: Verdict) -> None:
        target = str(step.policy.to)
        escalation = Escalation(calls.model, target, str(verdict.reason), verdict.detail)
        calls.escalations.append(escalation)
        run.event("step_escalated", step.name, **escalation.__dict__)
        calls.model = target

    def _text_sink(self, run: _Run, step: _StepPlan, calls: _Calls) -> Callable[[str], None] | None:
        """Where a live step's text goes as it is generated (None: the call is made whole)."""
        if self._stream_model is None or not run.listening or step.name != run.plan.live_step:
            return None
        attempt = len(calls.attempts)
        return lambda text: run.event("step_delta", step.name, text=text, attempt=attempt, model=calls.model)

    async def _attempt(
        self, run: _Run, step: _StepPlan, calls: _Calls, request: GenerationRequest
    ) -> tuple[CallOutcome, Attempt]:
        """One model call under the step's timeout and the run's deadline, in its own span; exceptions become
        outcomes. With a deadline, the call may wait in a model's queue only for what remains of it."""
        model = calls.model
        escalation = calls.escalations[-1] if calls.escalations else None
        attributes = _call_attributes(model, step.spec.specialist, escalation)
        with self._tracer.start_as_current_span(f"model_call {model}", attributes=attributes) as span:
            started = self._clock()
            remaining, timeout_s = run.remaining_s(started), step.timeout_s
            if remaining is not None:
                request, timeout_s = replace(request, queue_budget_s=max(0.0, remaining)), min(timeout_s, remaining)
            if timeout_s <= 0:
                outcome = CallOutcome(None, f"timeout: the pipeline's {run.plan.deadline_s:g} s deadline has passed")
            elif (error := await self._not_ready(step, calls)) is not None:
                outcome = CallOutcome(GenerationResult(model=model, error=error))
            else:
                outcome = await self._guarded_call(model, request, timeout_s, self._text_sink(run, step, calls))
            latency = self._clock() - started
            result = outcome.result
            tokens_in = result.prompt_tokens if result else 0
            tokens_out = result.completion_tokens if result else 0
            _set_token_attributes(span, tokens_in, tokens_out)
            if outcome.failure:
                span.set_attribute("slmfleet.failure", outcome.failure)
        cost = self._prices.cost(model, tokens_in + tokens_out)
        finish = result.finish_reason if result else None
        engine_s = result.extra.get("engine_s") if result else None
        return outcome, Attempt(model, tokens_in, tokens_out, latency, finish, "pending", cost=cost, engine_s=engine_s)

    async def _not_ready(self, step: _StepPlan, calls: _Calls) -> GenerationError | None:
        """Why the step's own model cannot answer now, when the step could escalate for it (None: call it)."""
        if self._unready is None or calls.escalations or not escalates_when_unavailable(step.policy, step.can_escalate):
            return None
        return await self._unready(calls.model)

    async def _guarded_call(
        self, model: str, request: GenerationRequest, timeout_s: float, on_text: Callable[[str], None] | None
    ) -> CallOutcome:
        try:
            async with asyncio.timeout(timeout_s):
                if on_text is None or self._stream_model is None:
                    return CallOutcome(await self._call_model(model, request))
                return CallOutcome(await _streamed(self._stream_model(model, request), on_text))
        except TimeoutError:
            return CallOutcome(None, f"timeout after {timeout_s}s")
        except Exception as exc:  # a dead replica, a missing deployment: the policy decides, nothing is hidden
            log.warning("model call to %s raised", model, exc_info=True)  # details stay in the log
            return CallOutcome(None, f"the call to model '{model}' raised {type(exc).__name__}")

    async def _call_tool(self, run: _Run, tool: str, args: Any) -> ToolResult:
        attributes = {"slmfleet.tool": tool, "slmfleet.pipeline": run.plan.name}
        with self._tracer.start_as_current_span(f"tool {tool}", attributes=attributes) as span:
            outcome = await self._tools.call(tool, args)
            if outcome.error:
                span.set_attribute("slmfleet.tool_error", outcome.error)
                span.set_status(trace.Status(trace.StatusCode.ERROR, outcome.error))
        return outcome


def _retry_request(request: GenerationRequest, retries: int, max_tokens: int, first_budget: int) -> GenerationRequest:
    """A truncated call again with more room but the same schema bound: the bound assumed two characters a token
    for ``first_budget``, so with at least twice the tokens the longest answer fits even at one a token."""
    return replace(
        request,
        request_id=f"{request.request_id}:retry{retries}",
        max_tokens=max_tokens,
        schema_tokens=request.schema_tokens or first_budget,
    )


async def _streamed(
    items: AsyncIterator[StreamDelta | GenerationResult], on_text: Callable[[str], None]
) -> GenerationResult | None:
    """A streamed call's final result, its text handed to ``on_text`` piece by piece on the way."""
    async for item in items:
        if isinstance(item, GenerationResult):
            return item
        if item.text:
            on_text(item.text)
    return None


def _text(outcome: CallOutcome) -> str | None:
    return outcome.result.text if outcome.result is not None else None


def _error_kind(verdict: Verdict) -> Any:
    return verdict.reason if verdict.reason in ("contract", "unavailable") else "error"


def _call_attributes(model: str, specialist: str | None, escalation: Escalation | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {"slmfleet.model": model, "slmfleet.escalated": escalation is not None}
    if specialist:
        attributes["slmfleet.specialist"] = specialist
    if escalation is not None:
        attributes["slmfleet.escalation_reason"] = escalation.reason
    return attributes


def _set_token_attributes(span: trace.Span, tokens_in: int, tokens_out: int) -> None:
    span.set_attribute("slmfleet.tokens_in", tokens_in)
    span.set_attribute("slmfleet.tokens_out", tokens_out)


def _annotate_step_span(span: trace.Span, result: StepResult) -> None:
    span.set_attribute("slmfleet.status", result.status)
    if result.model:
        span.set_attribute("slmfleet.model", result.model)
    if result.specialist:
        span.set_attribute("slmfleet.specialist", result.specialist)
    _set_token_attributes(span, result.tokens_in, result.tokens_out)
    span.set_attribute("slmfleet.escalated", result.escalated)
    if result.escalations:
        span.set_attribute("slmfleet.escalation_reason", result.escalations[0].reason)
    if result.error:
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"{result.error.kind}: {result.error.message}"))
