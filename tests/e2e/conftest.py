"""One real fleet for the whole e2e tier: ``slmfleet up`` (the main job) in a subprocess, reached over HTTP.

Package-scoped so its engines (about 3 GB each) are gone before the next tier starts.
"""

import copy
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from openai import OpenAI

from tests.e2e.tool_gate import ToolGate
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 420


class Fleet:
    """A running fleet: its URL, its log, and where its traces land."""

    def __init__(self, url: str, log: Path, trace_file: Path, proc: subprocess.Popen) -> None:
        self.url, self.log, self.trace_file, self.proc = url, log, trace_file, proc
        self.metrics_url = ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def ray_address(self, within_s: float = 30) -> str:
        """The fleet's Ray address from its ready message (printed just after /healthz may first answer)."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            found = re.search(r"^Ray cluster: (\S+)", self.log.read_text(errors="replace"), re.MULTILINE)
            if found:
                return found.group(1)
            time.sleep(0.5)
        pytest.fail(f"no 'Ray cluster:' line in the fleet's log:\n{self.log_tail()}")


class PortTaken(Exception):
    """Another process took a port between free_port() and the fleet binding it."""


def wait_until_healthy(fleet: Fleet) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if fleet.proc.poll() is not None:
            if "the port is in use" in fleet.log.read_text(errors="replace"):
                raise PortTaken(fleet.url)
            pytest.fail(f"slmfleet up exited with {fleet.proc.returncode}:\n{fleet.log_tail()}")
        try:
            if httpx.get(f"{fleet.url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    pytest.fail(f"the fleet did not become healthy in {START_TIMEOUT_S} s:\n{fleet.log_tail()}")


def e2e_spec(path: Path, gate_url: str) -> Path:
    """The default fleet plus test pipelines: the demo forced to escalate, the demo with a short step timeout,
    a lookup of a given order, and a parallel fan-out (two specialists at once, then a reply reading both); a
    specialist whose every chat call escalates; a scale-to-zero model, ``cold`` (SmolLM2 again, starting at
    zero replicas, back to zero after 10 idle seconds), with ``extract-cold``, the extract specialist on it; and
    ``gated-failover``, classify and reply on smol with a test-controlled tool step (``gate``) between them."""
    spec = yaml.safe_load((ROOT / "fleet.yaml").read_text())
    demo = copy.deepcopy(spec["pipelines"]["support-triage"])
    demo["escalation"]["min_confidence"] = 1.0  # no answer is that sure: every model step escalates
    spec["pipelines"]["triage-always-escalate"] = demo
    failover = copy.deepcopy(spec["pipelines"]["support-triage"])
    failover["step_timeout_s"] = 20  # shorter than a replica's replacement: a call waiting for it escalates
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
    cold = copy.deepcopy(spec["models"]["smol"])
    cold["autoscaling"] = {"min_replicas": 0, "max_replicas": 1, "idle_delay_s": 10, "downscale_delay_s": 0}
    spec["models"]["cold"] = cold
    spec["specialists"]["extract-cold"] = {**copy.deepcopy(spec["specialists"]["extract"]), "model": "cold"}
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
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def start_fleet(work: Path, gate: ToolGate) -> Fleet:
    """``slmfleet up`` on free ports, retried when a port is taken in the moment between choosing and binding."""
    spec, trace_file = e2e_spec(work / "fleet.yaml", gate.url), work / "spans.jsonl"
    env = {**os.environ, "SLMFLEET_TRACE_FILE": str(trace_file), "PYTHONUNBUFFERED": "1"}
    for attempt in range(3):
        port, metrics_port, log = free_port(), free_port(), work / f"fleet-{attempt}.log"
        cmd = [sys.executable, "-m", "cluster.cli", "up", "--spec", str(spec), "--port", str(port)]
        cmd += ["--metrics-port", str(metrics_port)]
        with open(log, "w") as out:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        running = Fleet(f"http://127.0.0.1:{port}", log, trace_file, proc)
        running.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        try:
            wait_until_healthy(running)
            return running
        except PortTaken:
            continue
        except BaseException:
            stop(running)
            raise
    pytest.fail("three fleets in a row found their port taken")


def stop(fleet: Fleet) -> None:
    fleet.proc.send_signal(signal.SIGTERM)
    try:
        fleet.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(fleet.proc.pid, signal.SIGKILL)
        fleet.proc.wait()


@pytest.fixture(scope="package")
def gate() -> Iterator[ToolGate]:
    server = ToolGate()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="package")
def fleet(tmp_path_factory, gate: ToolGate) -> Iterator[Fleet]:
    running = start_fleet(tmp_path_factory.mktemp("fleet"), gate)
    try:
        yield running
    finally:
        stop(running)


@pytest.fixture(scope="package")
def client(fleet: Fleet) -> OpenAI:
    return OpenAI(base_url=f"{fleet.url}/v1", api_key="unused-on-loopback", max_retries=0, timeout=120)
