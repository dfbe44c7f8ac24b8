"""The fleet spec: one YAML file validated into typed models, the single source of truth.

Every section is a pydantic model with ``extra="forbid"`` so a typo is an error, not a silently ignored key.
Named things (models, specialists, pipelines, pools) are YAML mappings keyed by name, which gives error paths
such as ``models.smol.max_model_len``. Loading goes through :func:`load_spec`, which turns every failure into a
:class:`cluster.spec_errors.SpecError`.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cluster.pipeline_spec import EscalationPolicy, PipelineSpec, ToolSpec, escalation_issues, pipeline_issues
from cluster.spec_errors import SpecError, SpecIssue, issues_from_validation_error, suggest

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
DType = Literal["auto", "bfloat16", "float16", "float32"]


class StrictModel(BaseModel):
    """Base for every spec section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AutoscalingSpec(StrictModel):
    """Replica bounds and the load each replica should carry; Ray Serve scales between the bounds."""

    min_replicas: int = Field(1, ge=0, description="0 lets the model scale to zero after idle_delay_s")
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(4.0, gt=0)
    upscale_delay_s: float = Field(10.0, ge=0, description="how long a step up must be wanted before it happens")
    downscale_delay_s: float = Field(120.0, ge=0, description="how long a step down must be wanted")
    idle_delay_s: float = Field(300.0, ge=0, description="idle time at one replica before a min_replicas: 0 model goes")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas}); "
                "make max_replicas at least min_replicas"
            )
        return self


class EngineSpec(StrictModel):
    """vLLM engine knobs; the defaults fit a 2-core, 24 GiB machine without a GPU."""

    enforce_eager: bool = True
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0,
        le=0.95,
        description="Fraction of accelerator memory (of host memory on the CPU backend). "
        "Left empty, the placement plan derives it on GPUs and 0.15 is used on the CPU.",
    )
    max_num_batched_tokens: int | None = Field(None, gt=0)
    seed: int = 0
    cpu_worker: Literal["in_process", "own_process"] = Field(
        "in_process",
        description="CPU backend, models without tensor parallelism: where vLLM's model worker runs. in_process "
        "runs it inside the engine-core process (one process fewer to start and hold); own_process is vLLM's "
        "default, a separate worker with OpenMP core binding, for large multi-socket hosts. GPUs keep vLLM's choice.",
    )


LoraRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]  # the ranks vLLM's LoRA kernels are built for


class LoraSpec(StrictModel):
    """A model's LoRA capacity: adapter specialists run on its replicas with their adapter applied, batched with
    the base model and each other. The slots are reserved at engine start, so they enter the memory estimate."""

    max_loras: int = Field(4, ge=1, description="adapters applied in one batch (slots in accelerator memory)")
    max_lora_rank: LoraRank = Field(16, description="the largest adapter rank this model's engines accept")
    max_cpu_loras: int | None = Field(
        None, ge=1, description="adapters kept loaded in host memory per replica (an LRU cache); default max_loras"
    )
    probe_min_divergence: float = Field(
        0.001,
        ge=0,
        description="a runtime registration must move the base model's per-token log-probabilities on the probe "
        "texts by at least this much (mean absolute difference, nats), else it is refused as not applied",
    )

    @model_validator(mode="after")
    def _cache_holds_slots(self) -> LoraSpec:
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) is below max_loras ({self.max_loras}); "
                "make it at least max_loras"
            )
        return self


class EndpointSpec(StrictModel):
    """An OpenAI-compatible API outside the fleet that serves a model: a hosted LLM, or vLLM run elsewhere.

    The router calls it over HTTP where it would call an engine: no placement, no Serve app, no GPU here.
    """

    url: str = Field(
        pattern=r"^https?://[^\s/]+",
        description="the API's base URL, up to and including /v1 (…/chat/completions is appended)",
    )
    model: str = Field(min_length=1, description="the model name the API knows")
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="environment variable (in the router's processes) holding the API key, sent as a bearer token",
    )
    structured_outputs: Literal["openai", "vllm"] = Field(
        "openai",
        description="how contracts are sent: 'openai' as response_format (JSON schemas only; choice and regex "
        "contracts are checked on the answer), 'vllm' as vLLM's structured_outputs (all three, and vLLM's sampling "
        "extras such as top_k)",
    )
    timeout_s: float = Field(
        120.0, gt=0, description="the longest wait for the API: to connect (at most 10 s) and between two reads"
    )
    max_concurrent_requests: int = Field(
        64, ge=1, description="calls in flight per router replica; beyond it a call is refused at once (503)"
    )


ENGINE_ONLY_FIELDS = (
    "max_model_len",
    "concurrent_seqs",
    "dtype",
    "params_b",
    "memory_gib",
    "tensor_parallel",
    "pool",
    "max_queued_requests",
    "latency_objective_s",
    "autoscaling",
    "engine",
    "lora",
)


class ModelSpec(StrictModel):
    """One set of weights served by one vLLM engine per replica, or by an outside API (``endpoint``)."""

    source: str | None = Field(
        None, min_length=1, description="bundled:<name>, a local HF folder, or a hub repo id (or set endpoint)"
    )
    endpoint: EndpointSpec | None = Field(None, description="served by this OpenAI-compatible API instead of an engine")
    tier: Literal["slm", "llm"] = "slm"
    max_model_len: int = Field(2048, gt=0)
    concurrent_seqs: int = Field(8, gt=0, description="sequences decoded together per replica (max_num_seqs)")
    dtype: DType = "auto"
    params_b: float | None = Field(None, gt=0, description="parameter count in billions, when not in config.json")
    memory_gib: float | None = Field(None, gt=0, description="declared engine memory, overrides the estimate")
    tensor_parallel: int | None = Field(None, ge=1)
    pool: str | None = None
    max_queued_requests: int = Field(
        32,
        ge=1,
        description="at most this many requests wait per replica beyond concurrent_seqs (a hard ceiling "
        "under the latency objective)",
    )
    price_per_1k_tokens: float | None = Field(
        None, ge=0, description="declared price; else derived from the pool's GPU-hour price (cluster/cost.py)"
    )
    latency_objective_s: float | None = Field(
        None,
        gt=0,
        description="how long a request may wait at this model for a place in its engine's batch: a replica refuses "
        "(503 + Retry-After) a request whose expected wait is longer, and autoscaling adds replicas when the measured "
        "wait (p90) is above it. Unset: 10 s",
    )
    capacity_escalations_per_min: int = Field(
        60,
        ge=0,
        description="llm tier: steps escalated to this model because a small model was overloaded or waking, per "
        "minute across all routers; beyond it they get a fast 503 instead (contract escalations are not counted)",
    )
    autoscaling: AutoscalingSpec = AutoscalingSpec()
    engine: EngineSpec = EngineSpec()
    escalation: EscalationPolicy | None = Field(
        None, description="chat calls naming this model escalate by this policy (the router's; no engine restart)"
    )
    lora: LoraSpec | None = Field(None, description="LoRA capacity; needed by specialists that name an adapter")
    log_usage: bool = Field(
        False,
        description="record in the usage log this model's calls if it is LLM-tier, else its calls escalated to the LLM "
        "tier (see usage_log)",
    )

    @model_validator(mode="after")
    def _llms_never_scale_to_zero(self) -> ModelSpec:
        if self.tier == "llm" and self.autoscaling.min_replicas == 0:
            raise ValueError(
                "an llm-tier model is the escalation target and cannot scale to zero; "
                "set autoscaling.min_replicas to 1 or more"
            )
        return self


class OutputContract(StrictModel):
    """What a specialist's output must look like; vLLM's structured outputs enforce it while decoding."""

    json_schema: dict[str, Any] | None = None
    choice: list[str] | None = Field(None, min_length=1)
    regex: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> OutputContract:
        given = [k for k in ("json_schema", "choice", "regex") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of json_schema, choice, regex (got {given or 'none'})")
        return self

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"regex does not compile: {exc}") from None
        return value

    @field_validator("json_schema")
    @classmethod
    def _schema_is_object(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and "type" not in value and "properties" not in value and "enum" not in value:
            raise ValueError("json_schema needs at least a 'type', 'properties' or 'enum' key")
        return value


class SamplingSpec(StrictModel):
    """Default sampling for a specialist; a request may override temperature, top_p and max_tokens."""

    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, gt=0)


ADAPTER_SCHEMES = ("file://", "s3://", "gs://")


class AdapterSpec(StrictModel):
    """A LoRA adapter (peft's folder: ``adapter_config.json`` + weights) trained on the specialist's model."""

    source: str = Field(
        min_length=1,
        description="a local folder, file:///folder, s3://bucket/prefix or gs://bucket/prefix; a local folder must "
        "exist on every node that serves the model",
    )
    version: str = Field(
        "1",
        pattern=r"^[A-Za-z0-9._-]{1,40}$",
        description="change it when the files at source change: replicas cache an adapter by source and version",
    )
    trained_on: str | None = Field(
        None,
        min_length=1,
        description="the base model the adapter's adapter_config.json names (base_model_name_or_path), when that "
        "is the specialist's model under another name; without it the two names must match",
    )

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if "://" in value and not value.startswith(ADAPTER_SCHEMES):
            raise ValueError(f"unknown scheme; give a local folder or a URI starting with {', '.join(ADAPTER_SCHEMES)}")
        return value

    def is_local(self) -> bool:
        return not self.source.startswith(("s3://", "gs://"))

    def label(self) -> str:
        """``source@version``: how logs, spans, metrics and the diff name this adapter."""
        return f"{self.source}@{self.version}"

    def local_path(self) -> Path:
        """The folder of a local or ``file://`` source (object-store sources are fetched by the model replica)."""
        return Path(self.source.removeprefix("file://")).expanduser()


class SpecialistSpec(StrictModel):
    """A narrow skill bound to a model: instructions, an output contract and sampling defaults."""

    model: str
    description: str = ""
    instructions: str = ""
    output: OutputContract | None = None
    sampling: SamplingSpec = SamplingSpec()
    escalation: EscalationPolicy | None = Field(
        None, description="chat calls to this specialist escalate by this policy, like a one-step pipeline"
    )
    latency_objective_s: float | None = Field(
        None,
        gt=0,
        description="how long a call to this specialist may wait in its model's queue, when shorter than the "
        "model's own objective (an interactive skill on a model shared with batch work); beyond it: 503 or escalation",
    )
    adapter: AdapterSpec | None = Field(
        None, description="a LoRA adapter applied on the model for this specialist's calls (the model needs lora:)"
    )
    log_usage: bool = Field(
        False, description="record this specialist's calls that reach the LLM tier in the usage log (see usage_log)"
    )


class PoolSpec(StrictModel):
    """A class of nodes with one accelerator type."""

    accelerator: str = Field(min_length=1, description="e.g. L4, A10G, H100, or cpu")
    gpus_per_node: int = Field(0, ge=0)
    gpu_memory_gib: float = Field(0, ge=0)
    min_nodes: int = Field(0, ge=0)
    max_nodes: int = Field(1, ge=1)
    price_per_gpu_hour: float | None = Field(None, ge=0)
    tiers: list[Literal["slm", "llm"]] = Field(["slm"], min_length=1, description="which tiers may land here")

    @model_validator(mode="after")
    def _gpu_fields_agree(self) -> PoolSpec:
        if self.gpus_per_node > 0 and self.gpu_memory_gib <= 0:
            raise ValueError("a pool with GPUs needs gpu_memory_gib (memory of one GPU)")
        if self.min_nodes > self.max_nodes:
            raise ValueError(f"min_nodes ({self.min_nodes}) is above max_nodes ({self.max_nodes})")
        return self


Priority = Literal["high", "normal", "low"]


class KeyPolicySpec(StrictModel):
    """What one API key (by its identity) may do: its request rate, its requests in flight, its priority."""

    requests_per_min: int | None = Field(
        None, ge=1, description="requests this key may make per minute across all routers; beyond it: 429"
    )
    max_concurrent_requests: int | None = Field(
        None,
        ge=1,
        description="requests of this key in flight at once across all routers (a stream counts until it ends); "
        "beyond it: 429",
    )
    priority: Priority = Field(
        "normal",
        description="under overload low is refused first (half the queue-wait budget), then normal (0.8), then high; "
        "a request may lower its own with the X-Slmfleet-Priority header, never raise it",
    )


class RouterReplicasSpec(StrictModel):
    """How many router replicas run; Serve's default policy scales them on ongoing requests.

    Left empty, the bounds follow the exposure: one replica on loopback (a laptop), two to eight when the router binds
    beyond it (a cluster: one replica is a single point of failure). Router replicas share their state through the
    fleet's state actor (``deployments/fleet_state.py``), so any number of them agree.
    """

    min_replicas: int | None = Field(None, ge=1, description="default: 1 on loopback, 2 when exposed")
    max_replicas: int | None = Field(None, ge=1, description="default: min_replicas on loopback, 8 when exposed")
    target_ongoing_requests: float = Field(64.0, gt=0, description="requests per router replica before another")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> RouterReplicasSpec:
        if self.min_replicas is not None and self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas}); "
                "make max_replicas at least min_replicas"
            )
        return self


class ServerSpec(StrictModel):
    """The router's HTTP front door."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_keys_env: str | None = Field(
        None,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="environment variable holding comma-separated API keys; unset means open on loopback only",
    )
    request_timeout_s: float = Field(120.0, gt=0, description="a model call's limit (a stream's: to its first token)")
    stream_timeout_s: float = Field(
        600.0, gt=0, description="a whole streamed answer's limit; past it the stream ends with a timeout error event"
    )
    keys: dict[str, KeyPolicySpec] = Field(
        default_factory=dict, description="per key identity (see api_keys_env): request rate and priority"
    )
    idempotency_ttl_s: float = Field(
        86400.0, gt=0, description="how long a pipeline run's result is kept for repeats of its Idempotency-Key"
    )
    max_ongoing_requests: int = Field(256, ge=1, description="requests the router handles at once")
    max_queued_requests: int = Field(256, ge=1, description="requests waiting at the router before a fast 503")
    router: RouterReplicasSpec = RouterReplicasSpec()


USAGE_LOG_SCHEMES = ("file://", "s3://", "gs://")
USAGE_LOG_KEY_PATTERN = r"^x25519:[A-Za-z0-9+/]{43}=$"


class UsageLogSpec(StrictModel):
    """The conversion loop's record of LLM-tier calls (those opted in with ``log_usage``), written by each router
    replica as its own stream of segments sealed to ``public_key``: the router can write the log, never read it."""

    public_key: str = Field(description="the loop's public key, as printed by 'slmfleet convert keygen'")
    destination: str | None = Field(
        None,
        description="an absolute folder, file:///folder, s3://bucket/prefix or gs://bucket/prefix; default: "
        "$SLMFLEET_HOME/usage-log on each router node",
    )
    buffer_records: int = Field(
        1000, ge=1, le=1_000_000, description="records waiting to be written; beyond it a record is dropped (counted)"
    )
    segment_max_mib: float = Field(16.0, gt=0, le=1024, description="a segment is closed at this size")
    segment_max_age_s: float = Field(
        60.0, gt=0, le=86400, description="and at this age: how long a record may wait before it reaches object storage"
    )

    @field_validator("public_key")
    @classmethod
    def _key_shape(cls, value: str) -> str:
        if not re.fullmatch(USAGE_LOG_KEY_PATTERN, value):
            raise ValueError("not a usage-log public key; make a key pair with 'slmfleet convert keygen --out DIR'")
        return value

    @field_validator("destination")
    @classmethod
    def _absolute_or_uri(cls, value: str | None) -> str | None:
        if value is None or value.startswith(USAGE_LOG_SCHEMES) or Path(value).is_absolute():
            return value
        raise ValueError(
            "give an absolute folder (a relative one would depend on each router's working directory) or a URI "
            f"starting with {', '.join(USAGE_LOG_SCHEMES)}"
        )


class ConversionSpec(StrictModel):
    """How promoted tasks move from the LLM tier to their specialists (see ``cluster/convert/promotion.py``)."""

    promote_after: int = Field(
        20, ge=1, description="shadow samples (LLM answers, specialist compared) before a promotion goes live"
    )
    min_agreement: float = Field(0.9, gt=0, le=1, description="share of samples where the specialist agrees")
    min_validity: float = Field(1.0, gt=0, le=1, description="share of samples where its answer meets the contract")
    shadow_rate: float = Field(
        0.1, ge=0, le=1, description="share of a live promotion's calls also sent to the LLM to keep measuring"
    )
    min_samples_for_rollback: int = Field(10, ge=1, description="samples in a live promotion before it may roll back")
    stats_window_s: float = Field(86400.0, gt=0, description="agreement is counted over windows this long")


def is_loopback(host: str) -> bool:
    """Whether ``host`` keeps the router on this machine (anything else exposes it, and needs keys)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class FleetSpec(StrictModel):
    """The whole fleet."""

    models: dict[Name, ModelSpec] = Field(min_length=1)
    specialists: dict[Name, SpecialistSpec] = Field(default_factory=dict)
    pipelines: dict[Name, PipelineSpec] = Field(default_factory=dict)
    tools: dict[Name, ToolSpec] = Field(default_factory=dict)
    pools: dict[Name, PoolSpec] = Field(default_factory=dict)
    server: ServerSpec = ServerSpec()
    usage_log: UsageLogSpec | None = Field(
        None, description="where the router records opted-in LLM-tier calls for the conversion loop"
    )
    conversion: ConversionSpec = ConversionSpec()

    def served_names(self) -> list[str]:
        """Every name a request's ``model`` field may carry."""
        return [*self.models, *self.specialists]

    def engine_models(self) -> dict[str, ModelSpec]:
        """The models this fleet runs engines for (placed, rendered as Serve apps); not those behind an endpoint."""
        return {name: model for name, model in self.models.items() if model.endpoint is None}

    def endpoint_models(self) -> dict[str, EndpointSpec]:
        """The models served by an outside OpenAI-compatible API, by name."""
        return {name: model.endpoint for name, model in self.models.items() if model.endpoint is not None}


def check_references(spec: FleetSpec) -> list[SpecIssue]:
    """Cross-field checks pydantic cannot express: names that must point at something that exists."""
    issues: list[SpecIssue] = []
    for name, specialist in spec.specialists.items():
        if specialist.model not in spec.models:
            issues.append(_unknown_ref(f"specialists.{name}.model", specialist.model, "model", list(spec.models)))
        if name in spec.models:
            issues.append(
                SpecIssue(f"specialists.{name}", name, "a specialist has the same name as a model", "rename one")
            )
        issues.extend(escalation_issues(spec, f"specialists.{name}.escalation", specialist.escalation, _unknown_ref))
        issues.extend(_adapter_model_issues(spec, name, specialist))
    for name, model in spec.models.items():
        issues.extend(_serving_issues(name, model))
        if model.pool is not None and model.pool not in spec.pools:
            issues.append(_unknown_ref(f"models.{name}.pool", model.pool, "pool", list(spec.pools)))
        issues.extend(escalation_issues(spec, f"models.{name}.escalation", model.escalation, _unknown_ref))
    issues.extend(pipeline_issues(spec, _unknown_ref))
    issues.extend(_usage_log_issues(spec))
    return issues


def _serving_issues(name: str, model: ModelSpec) -> list[SpecIssue]:
    """A model is served by an engine from ``source`` or by an outside API at ``endpoint``: exactly one, and an
    endpoint model has no engine settings."""
    if model.source is None and model.endpoint is None:
        fix = "add 'source' (e.g. bundled:smollm2-135m-instruct), or 'endpoint: {url, model}' for an outside API"
        return [SpecIssue(f"models.{name}.source", None, "a model needs weights or an API to serve it", fix)]
    if model.source is not None and model.endpoint is not None:
        problem = "a model is served by an engine from 'source' or by its 'endpoint', not both"
        return [SpecIssue(f"models.{name}.endpoint", model.endpoint.url, problem, "remove 'source' or 'endpoint'")]
    if model.endpoint is None:
        return []
    problem = "an engine setting, but this model is served by its endpoint"
    return [
        SpecIssue(f"models.{name}.{field}", getattr(model, field), problem, f"remove '{field}'")
        for field in ENGINE_ONLY_FIELDS
        if field in model.model_fields_set
    ]


def _usage_log_issues(spec: FleetSpec) -> list[SpecIssue]:
    """``log_usage`` needs a ``usage_log`` to write to."""
    if spec.usage_log is not None:
        return []
    opted = [
        *(f"models.{n}.log_usage" for n, m in spec.models.items() if m.log_usage),
        *(f"specialists.{n}.log_usage" for n, s in spec.specialists.items() if s.log_usage),
        *(f"pipelines.{n}.log_usage" for n, p in spec.pipelines.items() if p.log_usage),
    ]
    fix = "add 'usage_log: {public_key: ...}' (make the key with 'slmfleet convert keygen --out DIR')"
    return [SpecIssue(path, True, "there is no usage_log to record into", fix) for path in opted]


def _adapter_model_issues(spec: FleetSpec, name: str, specialist: SpecialistSpec) -> list[SpecIssue]:
    """An adapter needs a model with LoRA slots (its files are checked by ``cluster/adapter_files.py``)."""
    model = spec.models.get(specialist.model)
    if specialist.adapter is None or model is None or model.lora is not None:
        return []
    return [
        SpecIssue(
            f"specialists.{name}.adapter",
            specialist.adapter.source,
            f"model '{specialist.model}' has no LoRA capacity",
            f"add 'lora: {{max_loras: 4, max_lora_rank: 16}}' to models.{specialist.model}",
        )
    ]


def _unknown_ref(path: str, value: str, kind: str, known: list[str]) -> SpecIssue:
    fix = f"use one of the defined {kind}s: {', '.join(known) or '(none defined)'}"
    hint = suggest(value, known)
    if hint:
        fix = f"did you mean '{hint}'? ({fix})"
    return SpecIssue(path, value, f"no {kind} named '{value}'", fix)


def parse_spec(data: Any, origin: str = "<spec>") -> FleetSpec:
    """Validate already-parsed YAML data; raise :class:`SpecError` listing every problem found."""
    if not isinstance(data, dict):
        raise SpecError(origin, [SpecIssue("", data, "the spec must be a mapping", "start with 'models:'")])
    try:
        spec = FleetSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(origin, issues_from_validation_error(exc, FleetSpec)) from None
    issues = check_references(spec)
    if issues:
        raise SpecError(origin, issues)
    return spec


def load_spec(path: str | Path) -> FleetSpec:
    """Read and validate a fleet spec file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(str(path), [SpecIssue("", str(path), f"cannot read the file ({exc.strerror})", "")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(exc, "problem", None) or str(exc)
        issue = SpecIssue("", where, f"not valid YAML: {problem}", "fix the YAML syntax")
        raise SpecError(str(path), [issue]) from None
    return parse_spec(data, str(path))
