"""One real fleet for the whole e2e tier: ``slmfleet up`` (the main job) in a subprocess, reached over HTTP.

Package-scoped so its engines (about 3 GB each) are gone before the next tier starts.
"""

import copy
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Fleet:
    """A running fleet: its URL, its log, and where its traces land."""

    def __init__(self, url: str, log: Path, trace_file: Path, proc: subprocess.Popen) -> None:
        self.url, self.log, self.trace_file, self.proc = url, log, trace_file, proc
        self.metrics_url = ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def wait_until_healthy(fleet: Fleet) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if fleet.proc.poll() is not None:
            pytest.fail(f"slmfleet up exited with {fleet.proc.returncode}:\n{fleet.log_tail()}")
        try:
            if httpx.get(f"{fleet.url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    pytest.fail(f"the fleet did not become healthy in {START_TIMEOUT_S} s:\n{fleet.log_tail()}")


def e2e_spec(path: Path) -> Path:
    """The default fleet plus test pipelines: the demo forced to escalate, the demo with a short step timeout,
    and a lookup of a given order."""
    spec = yaml.safe_load((ROOT / "fleet.yaml").read_text())
    demo = copy.deepcopy(spec["pipelines"]["support-triage"])
    demo["escalation"]["min_confidence"] = 1.0  # no answer is that sure: every model step escalates
    spec["pipelines"]["triage-always-escalate"] = demo
    failover = copy.deepcopy(spec["pipelines"]["support-triage"])
    failover["step_timeout_s"] = 20  # shorter than a replica's replacement: a call waiting for it escalates
    spec["pipelines"]["triage-failover"] = failover
    spec["pipelines"]["lookup-order"] = {
        "steps": {"lookup": {"tool": "order-status", "args": {"order_id": "{{ input.order_id }}"}}},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="package")
def fleet(tmp_path_factory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("fleet")
    port, metrics_port = free_port(), free_port()
    log, trace_file = work / "fleet.log", work / "spans.jsonl"
    env = {**os.environ, "SLMFLEET_TRACE_FILE": str(trace_file), "PYTHONUNBUFFERED": "1"}
    spec = e2e_spec(work / "fleet.yaml")
    cmd = [sys.executable, "-m", "cluster.cli", "up", "--spec", str(spec), "--port", str(port)]
    cmd += ["--metrics-port", str(metrics_port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    running = Fleet(f"http://127.0.0.1:{port}", log, trace_file, proc)
    running.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        wait_until_healthy(running)
        yield running
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="package")
def client(fleet: Fleet) -> OpenAI:
    return OpenAI(base_url=f"{fleet.url}/v1", api_key="unused-on-loopback", max_retries=0, timeout=120)
