"""A real fleet in a subprocess for the HTTP tiers: ``slmfleet up`` (the main job) on free ports, reached over HTTP."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from deployments.local_run import LOOPBACK_ONLY_ENV
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 420


def driver_env() -> dict[str, str]:
    """The environment a driver script needs to join a local fleet's Ray: its token auth, and its loopback-only
    mode (``deployments.local_run.LOOPBACK_ONLY_ENV``; a driver outside it cannot reach a loopback GCS)."""
    return {**os.environ, "RAY_AUTH_MODE": "token", **LOOPBACK_ONLY_ENV}


class Fleet:
    """A running fleet: its URL, its log, and where its traces land."""

    def __init__(self, url: str, log: Path, trace_file: Path, proc: subprocess.Popen) -> None:
        self.url, self.log, self.trace_file, self.proc = url, log, trace_file, proc
        self.metrics_url = ""
        self.spec: Path | None = None

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def replica_process(self, deployment: str, app: str | None = None) -> psutil.Process:
        """The Serve replica process of ``deployment`` among the fleet's descendants (Ray titles it
        ``ray::ServeReplica:<app>:<deployment>``; each model is its own app of the same name)."""
        for proc in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if f"ServeReplica:{app or deployment}:{deployment}" in " ".join(proc.cmdline()):
                    return proc
            except psutil.NoSuchProcess:
                continue
        raise AssertionError(f"no replica process of {deployment}")

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


def start_fleet(work: Path, spec: Path) -> Fleet:
    """``slmfleet up`` of ``spec`` on free ports, retried when a port is taken between choosing and binding."""
    trace_file = work / "spans.jsonl"
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
        running.spec = spec
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
