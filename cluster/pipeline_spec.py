"""Pipelines and tools in the fleet spec: steps, their templated inputs, conditions and escalation policy.

A pipeline is an ordered mapping of steps keyed by step name (YAML order is run order), so errors read
``pipelines.support-triage.steps.lookup.tool``. Each step is one of:

- a **specialist step** (``specialist:``): the specialist's instructions, contract and sampling apply;
- a **model step** (``model:``): free text from a model, with optional ``instructions`` as the system prompt
  (contracts belong to specialists: define one when the output must have a shape);
- a **tool step** (``tool:``): calls a registered tool. Its arguments come either from a specialist that decodes
  them under the tool's ``args_schema`` (``specialist:`` on the tool step: valid by construction, and escalated
  like any specialist call), or from ``args:``, templates over the request and earlier outputs (for arguments an
  earlier step already produced as validated JSON). Both are checked against ``args_schema`` before the call.

Templates and ``when:`` conditions are parsed here, at load time; :func:`pipeline_issues` checks the names they
and the steps point at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cluster.conditions import Condition, ConditionError
from cluster.spec_errors import SpecIssue, suggest
from cluster.templating import STEP_FIELDS, Ref, Template, TemplateError, parse_value_templates

if TYPE_CHECKING:
    from cluster.spec import FleetSpec

STEP_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
StepName = Annotated[str, Field(pattern=STEP_NAME_PATTERN)]
EscalationReason = Literal["contract", "low_confidence", "unavailable"]
ESCALATION_REASONS: tuple[EscalationReason, ...] = ("contract", "low_confidence", "unavailable")
DEFAULT_INPUT = "{{ input.message }}"
UnknownRef = Callable[[str, str, str, list[str]], SpecIssue]


class _StrictModel(BaseModel):
    # same rules as cluster.spec.StrictModel; kept local so this module does not import cluster.spec (a cycle)
    model_config = ConfigDict(extra="forbid", frozen=True)


class EscalationPolicy(_StrictModel):
    """When a step re-runs on an LLM-tier model, and the cheap same-model retry that may come first.

    Set on a pipeline (the default for its steps) and/or on a step; a step's policy overrides only the keys it
    sets, so ``escalation: {min_confidence: 0.5}`` on a step keeps the pipeline's ``to``.
    """

    to: str | None = Field(None, description="llm-tier model that re-runs the step; empty means never escalate")
    reasons: list[EscalationReason] = Field(
        default_factory=lambda: list(ESCALATION_REASONS),
        description="contract: output fails its contract; low_confidence: see min_confidence; "
        "unavailable: the model raised, timed out, answered engine_dead/overloaded/internal, or is at zero "
        "replicas (a cold start: the model is woken and the target answers meanwhile)",
    )
    min_confidence: float = Field(
        0.0,
        ge=0,
        le=1,
        description="a probability: escalate when exp(mean token logprob) is below it; 0 turns it off, "
        "1.0 always escalates (even when the engine returned no logprobs)",
    )
    retries: int = Field(1, ge=0, le=5, description="same-model retries of an output truncated at max_tokens")
    retry_max_tokens_factor: float = Field(2.0, ge=1, le=16, description="max_tokens grows by this per retry")

    def merged(self, override: EscalationPolicy | None) -> EscalationPolicy:
        """This policy with the keys ``override`` sets explicitly replaced."""
        if override is None:
            return self
        return self.model_copy(update=override.model_dump(exclude_unset=True))


class ToolSpec(_StrictModel):
    """A tool a pipeline step may call: a Python callable by import path, or an HTTP endpoint taking JSON."""

    description: str = ""
    python: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$",
        description="pkg.module:function, called with the arguments as keywords (sync or async)",
    )
    url: str | None = Field(None, pattern=r"^https?://", description="POSTed the arguments as a JSON object")
    args_schema: dict[str, Any] = Field(description="JSON schema (type: object) of the arguments")
    timeout_s: float = Field(10.0, gt=0, le=600)
    max_concurrency: int = Field(
        4, ge=1, le=256, description="threads of a sync python tool; calls beyond wait within timeout_s"
    )

    @model_validator(mode="after")
    def _one_target(self) -> ToolSpec:
        if (self.python is None) == (self.url is None):
            raise ValueError("give exactly one of python (pkg.module:function) or url")
        return self

    @field_validator("args_schema")
    @classmethod
    def _object_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("type") != "object":
            raise ValueError("args_schema must be a JSON schema with type: object (arguments are keywords)")
        return value


class StepSpec(_StrictModel):
    """One step of a pipeline; see the module docstring for the three kinds."""

    specialist: str | None = None
    model: str | None = None
    tool: str | None = None
    input: str | None = Field(None, description=f"template of the user message; default {DEFAULT_INPUT}")
    instructions: str = Field("", description="system prompt of a model step")
    args: Any = Field(None, description="tool arguments: a mapping of templates, or one '{{ ref }}' to a mapping")
    when: str | None = Field(None, description="condition; the step is skipped when it is false")
    max_tokens: int | None = Field(None, gt=0, description="overrides the specialist's max_tokens")
    timeout_s: float | None = Field(None, gt=0, description="per model call; default the pipeline's step_timeout_s")
    escalation: EscalationPolicy | None = None
    on_error: Literal["stop", "continue"] = Field(
        "stop", description="continue: record the error (steps.<name>.error) and run the next steps"
    )
    after: list[StepName] = Field(
        default_factory=list, description="earlier steps that must finish first though nothing here refers to them"
    )

    @property
    def kind(self) -> Literal["specialist", "model", "tool"]:
        if self.tool is not None:
            return "tool"
        return "model" if self.model is not None else "specialist"

    @property
    def input_template(self) -> str:
        return self.input if self.input is not None else DEFAULT_INPUT

    @model_validator(mode="after")
    def _shape(self) -> StepSpec:
        problem = _tool_step_problem(self) if self.tool is not None else _model_step_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    @field_validator("input")
    @classmethod
    def _input_parses(cls, value: str | None) -> str | None:
        if value is not None:
            _reraise(TemplateError, lambda: Template.parse(value))
        return value

    @field_validator("when")
    @classmethod
    def _when_parses(cls, value: str | None) -> str | None:
        if value is not None:
            _reraise(ConditionError, lambda: Condition.parse(value))
        return value

    @field_validator("args")
    @classmethod
    def _args_parse(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, dict | str):
            raise ValueError("args is a mapping of argument templates, or one '{{ reference }}' to a mapping")
        _reraise(TemplateError, lambda: parse_value_templates(value))
        return value

    def templates(self) -> Iterator[tuple[str, Template]]:
        """(field, template) for every template in this step."""
        if self.kind != "tool" or self.specialist is not None:
            yield "input", Template.parse(self.input_template)
        for template in parse_value_templates(self.args):
            yield "args", template

    def refs(self) -> Iterator[tuple[str, Ref]]:
        """(field, reference) for every reference in this step's templates and condition."""
        for field, template in self.templates():
            for ref in template.refs():
                yield field, ref
        if self.when is not None:
            for ref in Condition.parse(self.when).refs():
                yield "when", ref

    def depends_on(self) -> set[str]:
        """The steps this one waits for in a parallel pipeline: those it refers to, and those named in ``after``."""
        return {ref.step for _, ref in self.refs() if ref.step is not None} | set(self.after)


def _reraise(kind: type[Exception], parse: Callable[[], Any]) -> None:
    try:
        parse()
    except kind as exc:
        raise ValueError(str(exc)) from None


def _tool_step_problem(step: StepSpec) -> str | None:
    if step.model is not None:
        return "a tool step takes no model; name a specialist to fill the tool's arguments, or give args"
    if (step.specialist is None) == (step.args is None):
        return "a tool step needs exactly one of specialist (fills the arguments) or args (templates)"
    if step.instructions:
        return "instructions belong to model steps; a specialist carries its own"
    return None


def _model_step_problem(step: StepSpec) -> str | None:
    if (step.specialist is None) == (step.model is None):
        return "a step calls exactly one of specialist, model or tool"
    if step.args is not None:
        return "args belong to tool steps"
    if step.instructions and step.specialist is not None:
        return "instructions belong to model steps; a specialist carries its own"
    return None


class PipelineSpec(_StrictModel):
    """An agent workflow: steps run in order (or as a DAG when ``parallel``), each may be skipped by ``when`` and
    escalated by the policy."""

    description: str = ""
    steps: dict[StepName, StepSpec] = Field(min_length=1)
    parallel: bool = Field(
        False,
        description="start each step once the steps it refers to (and its `after`) have finished, so independent "
        "steps run at the same time; false: one after another in the order written",
    )
    output: Any = Field(
        None, description="final output: a template, or a mapping of templates; default the last step that ran"
    )
    escalation: EscalationPolicy = EscalationPolicy()
    log_usage: bool = Field(
        False, description="record this pipeline's steps that run on the LLM tier in the usage log (see usage_log)"
    )
    step_timeout_s: float = Field(60.0, gt=0, le=3600, description="per model call, unless a step sets timeout_s")
    latency_objective_s: float | None = Field(
        None,
        gt=0,
        le=3600,
        description="the run's deadline: each model call gets what remains of it, as its time limit and as its "
        "budget for waiting in a model's queue (a model that cannot start it in time refuses at once, and the "
        "step escalates or fails fast); unset: only step timeouts apply",
    )

    @field_validator("output")
    @classmethod
    def _output_parses(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, dict | str):
            raise ValueError("output is a template, or a mapping of templates")
        _reraise(TemplateError, lambda: parse_value_templates(value))
        return value

    def policy_for(self, step: str) -> EscalationPolicy:
        return self.escalation.merged(self.steps[step].escalation)


# Reference checks: called by cluster.spec.check_references, which passes its did-you-mean helper in.


def pipeline_issues(spec: FleetSpec, unknown_ref: UnknownRef) -> list[SpecIssue]:
    """Names in pipelines that point nowhere: specialists, models, tools, escalation targets, step references."""
    issues: list[SpecIssue] = []
    for name, pipeline in spec.pipelines.items():
        base = f"pipelines.{name}"
        issues += escalation_issues(spec, f"{base}.escalation", pipeline.escalation, unknown_ref)
        earlier: list[str] = []
        for step_name, step in pipeline.steps.items():
            path = f"{base}.steps.{step_name}"
            issues += _target_issues(spec, path, step, unknown_ref)
            issues += escalation_issues(spec, f"{path}.escalation", step.escalation, unknown_ref)
            issues += _ref_issues(spec, pipeline, path, step.refs(), earlier=earlier, unknown_ref=unknown_ref)
            issues += _after_issues(pipeline, path, step, earlier, unknown_ref)
            earlier.append(step_name)
        if pipeline.output is not None:
            refs = (("output", ref) for t in parse_value_templates(pipeline.output) for ref in t.refs())
            issues += _ref_issues(spec, pipeline, base, refs, earlier=earlier, unknown_ref=unknown_ref)
    return issues


def _target_issues(spec: FleetSpec, path: str, step: StepSpec, unknown_ref: UnknownRef) -> list[SpecIssue]:
    issues = []
    for field, value, known in (
        ("specialist", step.specialist, spec.specialists),
        ("model", step.model, spec.models),
        ("tool", step.tool, spec.tools),
    ):
        if value is not None and value not in known:
            issues.append(unknown_ref(f"{path}.{field}", value, field, list(known)))
    return issues


def escalation_issues(
    spec: FleetSpec, path: str, policy: EscalationPolicy | None, unknown_ref: UnknownRef
) -> list[SpecIssue]:
    if policy is None or policy.to is None:
        return []
    llms = [name for name, model in spec.models.items() if model.tier == "llm"]
    if policy.to in llms:
        return []
    if policy.to in spec.models:
        return [SpecIssue(f"{path}.to", policy.to, "escalation targets an slm-tier model", _llm_fix(llms))]
    return [unknown_ref(f"{path}.to", policy.to, "llm-tier model", llms)]


def _llm_fix(llms: list[str]) -> str:
    return f"name an llm-tier model: {', '.join(llms)}" if llms else "declare a model with tier: llm and name it"


def _ref_issues(
    spec: FleetSpec,
    pipeline: PipelineSpec,
    path: str,
    refs: Iterator[tuple[str, Ref]],
    *,
    earlier: list[str],
    unknown_ref: UnknownRef,
) -> list[SpecIssue]:
    issues = []
    for field, ref in refs:
        step = ref.step
        if step is None or step in earlier:
            issues += _output_field_issues(spec, pipeline, f"{path}.{field}", ref)
        elif step in pipeline.steps:
            issues.append(
                SpecIssue(f"{path}.{field}", str(ref), f"step '{step}' has not run yet here", "refer to earlier steps")
            )
        else:
            issues.append(unknown_ref(f"{path}.{field}", step, "earlier step", earlier))
    return issues


def _after_issues(
    pipeline: PipelineSpec, path: str, step: StepSpec, earlier: list[str], unknown_ref: UnknownRef
) -> list[SpecIssue]:
    issues = []
    for index, name in enumerate(step.after):
        if name in earlier:
            continue
        if name in pipeline.steps:
            issues.append(SpecIssue(f"{path}.after[{index}]", name, f"step '{name}' comes later", "name earlier steps"))
        else:
            issues.append(unknown_ref(f"{path}.after[{index}]", name, "earlier step", earlier))
    return issues


def _output_field_issues(spec: FleetSpec, pipeline: PipelineSpec, path: str, ref: Ref) -> list[SpecIssue]:
    """``steps.x.output.<key>`` must name a property of x's JSON schema, when x declares one."""
    if ref.step is None or len(ref.parts) < 4 or ref.parts[2] not in STEP_FIELDS:  # noqa: PLR2004
        return []
    properties = (output_schema(spec, pipeline.steps[ref.step]) or {}).get("properties")
    key = ref.parts[3]
    if not isinstance(properties, dict) or key in properties:
        return []
    known = list(properties)
    hint = suggest(key, known)
    fix = f"use one of: {', '.join(known)}"
    fix = f"did you mean '{hint}'? ({fix})" if hint else fix
    return [SpecIssue(path, str(ref), f"step '{ref.step}' outputs no '{key}'", fix)]


def output_schema(spec: FleetSpec, step: StepSpec) -> dict[str, Any] | None:
    """The JSON schema a step's output follows, when known (a tool's output has none declared)."""
    if step.kind != "specialist" or step.specialist not in spec.specialists:
        return None
    contract = spec.specialists[step.specialist].output
    return contract.json_schema if contract is not None else None
