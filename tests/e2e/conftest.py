"""One real fleet for the whole e2e tier: ``slmfleet up`` (the main job) in a subprocess, reached over HTTP.

Package-scoped so its engines (about 3 GB each) are gone before the next tier starts.
"""

import copy
import functools
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from openai import OpenAI

from cluster.convert.sealed_log import generate_key_pair
from tests.adapters import make_adapter
from tests.e2e.tool_gate import ToolGate
from tests.fleet_process import ROOT, Fleet, start_fleet, stop
from tests.good_llm import MODEL_NAME, GoodLLM
from tests.object_stores import gcs_server, s3_server

RANDOM_ADAPTERS = ("tuned-a", "tuned-b", "late", "survivor")


@functools.cache
def usage_log_keys() -> tuple[Path, str, Path]:
    """One key pair and log folder for the whole run (private key, public key, destination), so every spec the
    e2e tests apply keeps the fleet's usage log where it was."""
    folder = Path(tempfile.mkdtemp(prefix="slmfleet-e2e-usage-"))
    private, public = generate_key_pair(folder / "keys")
    return private, public, folder / "log"


def e2e_spec(path: Path, gate_url: str, adapters: dict[str, Path], good_llm_url: str) -> Path:
    """The default fleet plus test pipelines: the demo forced to escalate, the demo with a short step timeout,
    a lookup of a given order, and a parallel fan-out (two specialists at once, then a reply reading both); a
    specialist whose every chat call escalates; a scale-to-zero model, ``cold`` (SmolLM2 again, starting at
    zero replicas, back to zero after 10 idle seconds), with ``extract-cold``, the extract specialist on it;
    ``greet-or-escalate``, free text on smol that big answers while smol has no replica; and
    ``gated-failover``, classify and reply on smol with a test-controlled tool step (``gate``) between them. smol
    has LoRA slots, and ``tuned-a``/``tuned-b`` are adapter specialists on it (``adapters`` made by peft), as is
    ``untrained-spec``, whose adapter changes nothing (its probe must refuse it). The usage
    log records ``intent-unsure``'s and ``triage-always-escalate``'s calls that reach the LLM tier; promotions move
    fast (``conversion``). ``oracle`` is an LLM-tier model served by an outside API (``endpoint``): the good LLM of
    ``tests/good_llm.py``, whose calls are logged."""
    spec = yaml.safe_load((ROOT / "fleet.yaml").read_text())
    # 4 slots: at max_loras 2, two adapters and the base batched together changed answers (vLLM 0.32 CPU, measured)
    spec["models"]["smol"]["lora"] = {"max_loras": 4, "max_lora_rank": 8, "max_cpu_loras": 4}
    for name, adapter in (("tuned-a", "tuned-a"), ("tuned-b", "tuned-b"), ("untrained-spec", "untrained")):
        spec["specialists"][name] = {
            "model": "smol",
            "adapter": {"source": str(adapters[adapter])},
            "sampling": {"temperature": 0.0, "max_tokens": 16},
        }
    demo = copy.deepcopy(spec["pipelines"]["support-triage"])
    demo["escalation"]["min_confidence"] = 1.0  # no answer is that sure: every model step escalates
    spec["pipelines"]["triage-always-escalate"] = demo
    failover = copy.deepcopy(spec["pipelines"]["support-triage"])
    # a step whose model has no running replica escalates at once; the LLM tier's answer, on a machine busy
    # starting the replacement, may take tens of seconds
    failover["step_timeout_s"] = 45
    spec["pipelines"]["triage-failover"] = failover
    spec["pipelines"]["fan-out"] = {
        "parallel": True,
        "steps": {
            "intent": {"specialist": "intent"},
            "fields": {"specialist": "order-fields"},
            "reply": {
                "specialist": "support-reply",
                "input": "Intent: {{ steps.intent.output }}. Order: {{ steps.fields.output.order_id }}.",
            },
        },
        "output": {"intent": "{{ steps.intent.output }}", "order": "{{ steps.fields.output }}"},
    }
    unsure = copy.deepcopy(spec["specialists"]["intent"])
    unsure["escalation"] = {"to": "big", "min_confidence": 1.0}  # never sure enough: every chat call escalates
    spec["specialists"]["intent-unsure"] = unsure
    unsure["log_usage"] = demo["log_usage"] = True
    _, public_key, destination = usage_log_keys()
    spec["usage_log"] = {"public_key": public_key, "destination": str(destination)}
    # promotions go live after 3 agreeing shadow samples; every live call is compared too, and 4 samples are enough
    # to roll one back
    spec["conversion"] = {"promote_after": 3, "shadow_rate": 1.0, "min_samples_for_rollback": 4}
    cold = copy.deepcopy(spec["models"]["smol"])
    cold["autoscaling"] = {"min_replicas": 0, "max_replicas": 1, "idle_delay_s": 10, "downscale_delay_s": 0}
    spec["models"]["cold"] = cold
    spec["specialists"]["extract-cold"] = {**copy.deepcopy(spec["specialists"]["extract"]), "model": "cold"}
    spec["specialists"]["greet-or-escalate"] = {
        "model": "smol",
        "instructions": "Greet the user.",
        "sampling": {"max_tokens": 8},
        "escalation": {"to": "big"},
    }
    spec["tools"]["gate"] = {"url": gate_url, "args_schema": {"type": "object"}, "timeout_s": 120}
    spec["pipelines"]["gated-failover"] = {
        "escalation": failover["escalation"],
        "step_timeout_s": 20,
        "steps": {
            "classify": {"specialist": "intent", "input": "{{ input.message }}"},
            "gate": {"tool": "gate", "args": {}},
            "reply": {"specialist": "support-reply", "input": "{{ input.message }}"},
        },
    }
    spec["pipelines"]["lookup-order"] = {
        "steps": {"lookup": {"tool": "order-status", "args": {"order_id": "{{ input.order_id }}"}}},
    }
    spec["models"]["oracle"] = {
        "endpoint": {"url": good_llm_url, "model": MODEL_NAME},
        "tier": "llm",
        "price_per_1k_tokens": spec["models"]["big"]["price_per_1k_tokens"],
        "log_usage": True,
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="package")
def gate() -> Iterator[ToolGate]:
    server = ToolGate()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="package")
def good_llm() -> Iterator[GoodLLM]:
    server = GoodLLM()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="package")
def adapters(tmp_path_factory) -> dict[str, Path]:
    """LoRA adapters on the bundled model, made by peft (about a second each): two in the spec, two registered at
    runtime by the tests, and one with peft's do-nothing init (the probe must refuse it)."""
    folder = tmp_path_factory.mktemp("adapters")
    made = {name: make_adapter(folder / name, seed=seed) for seed, name in enumerate(RANDOM_ADAPTERS, start=1)}
    made["untrained"] = make_adapter(folder / "untrained", seed=0, trained_init=True)
    return made


@pytest.fixture(scope="package")
def object_stores() -> Iterator[dict[str, str]]:
    """Local S3 and GCS servers, and their variables set for the fleet (its replicas fetch s3:// and gs:// adapters
    with boto3 and google-cloud-storage, pointed at these servers as they would be at the real ones)."""
    with s3_server() as s3, gcs_server() as gcs, pytest.MonkeyPatch.context() as env:
        for key, value in {**s3, **gcs}.items():
            env.setenv(key, value)
        yield {**s3, **gcs}


@pytest.fixture(scope="package")
def fleet(
    tmp_path_factory, gate: ToolGate, adapters: dict[str, Path], object_stores: dict[str, str], good_llm: GoodLLM
) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("fleet")
    running = start_fleet(work, e2e_spec(work / "fleet.yaml", gate.url, adapters, good_llm.url))
    try:
        yield running
    finally:
        stop(running)


@pytest.fixture(scope="package")
def client(fleet: Fleet) -> OpenAI:
    return OpenAI(base_url=f"{fleet.url}/v1", api_key="unused-on-loopback", max_retries=0, timeout=120)
