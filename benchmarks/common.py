"""Shared pieces of the hand-run benchmarks: a local fleet in a subprocess, an in-process engine, statistics."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import yaml

from tests.ports import free_port  # ports outside the ephemeral range, which Ray's own processes cannot take

ROOT = Path(__file__).resolve().parents[1]
# Short chat prompts the serving benchmarks share, so their figures are of the same work.
PROMPTS = [
    "Summarise: the order shipped on Monday and arrives Friday.",
    "What is the capital of France?",
    "Name three primary colours.",
    "Translate 'good morning' into Spanish.",
    "Give one tip for writing clear emails.",
    "What is 12 times 12?",
    "Describe a cat in one sentence.",
    "Why is the sky blue? One sentence.",
]


def small_spec(path: Path, pipelines: dict | None = None) -> Path:
    """The default fleet cut down to one engine (smol), its specialists, and the given pipelines."""
    spec = yaml.safe_load((ROOT / "fleet.yaml").read_text())
    specialists = {name: s for name, s in spec["specialists"].items() if s["model"] == "smol"}
    for specialist in specialists.values():  # their escalation target (big) is not in the cut-down fleet
        specialist.pop("escalation", None)
    small = {"server": spec["server"], "models": {"smol": spec["models"]["smol"]}, "specialists": specialists}
    small["tools"] = spec["tools"]  # Python tools: free unless a pipeline calls them
    path.write_text(yaml.safe_dump({**small, "pipelines": pipelines or {}}, sort_keys=False))
    return path


@contextlib.contextmanager
def running_fleet(
    pipelines: dict | None = None, env: dict[str, str] | None = None, work: Path | None = None, spec: Path | None = None
) -> Iterator[str]:
    """``slmfleet up`` on a free port, with ``env`` added to its environment (and so to its Ray cluster's
    processes); yields its URL once /healthz says every model is up. Its spec is ``spec``, or ``work``'s
    ``fleet.yaml`` (the small fleet with ``pipelines``); its log is ``work``'s ``fleet.log`` (a fresh temporary
    folder by default)."""
    work = work or Path(tempfile.mkdtemp(prefix="slmfleet-bench-"))
    port = free_port()
    spec = spec or small_spec(work / "fleet.yaml", pipelines)
    cmd = [sys.executable, "-m", "cluster.cli", "up", "--spec", str(spec)]
    log = open(work / "fleet.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, work / "fleet.log")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the fleet exited:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        time.sleep(2)
    raise SystemExit("the fleet did not come up")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(latencies_s: list[float]) -> str:
    ms = [v * 1000 for v in latencies_s]
    return f"p50 {percentile(ms, 50):8.1f} ms  p99 {percentile(ms, 99):8.1f} ms  mean {statistics.mean(ms):8.1f} ms"


def replica_process(deployment: str) -> psutil.Process:
    """The Serve replica process of ``deployment`` (its name is in the process title Ray sets)."""
    for proc in psutil.process_iter(["cmdline"]):
        if f"ServeReplica:{deployment}:{deployment}" in " ".join(proc.info["cmdline"] or []):
            return proc
    raise SystemExit(f"no replica process of {deployment}")
