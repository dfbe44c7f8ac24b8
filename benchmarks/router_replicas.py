"""Router requests/s with one and with two router replicas, on one fleet, switched live by ``slmfleet apply``.

Run by hand: ``.venv/bin/python -m benchmarks.router_replicas [--rounds 3] [--seconds 20] [--concurrency 32]``.
The fleet is the default one cut to one engine (``benchmarks.common.small_spec``); the router's replica count is
``server.router`` in its spec, applied live between measurements (no restart of anything else), alternating
1, 2, 1, 2, ... so drift on this shared machine hits both sides alike. Two paths that stop at the router, so the
engine is not what is measured:

- ``models``: ``GET /v1/models`` (proxy + router only);
- ``tool-run``: ``POST /v1/pipelines/lookup/runs``, a one-step pipeline that calls a Python tool (the runner, the
  tool registry, the result and cost report; no model).

Printed: requests/s and p50/p99 per replica count, and the ratio two/one as a median with its round-to-round
spread. On a 2-core machine the proxy, the replicas and the load generator share the cores: the ratio says how
much a second replica helps here, not on a cluster where each replica has its own cores.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from benchmarks.common import ROOT, percentile, running_fleet

PIPELINES = {"lookup": {"steps": {"lookup": {"tool": "order-status", "args": {"order_id": "{{ input.order_id }}"}}}}}
PATHS = {
    "models": ("GET", "/v1/models", None),
    "tool-run": ("POST", "/v1/pipelines/lookup/runs", {"inputs": {"order_id": "A1001"}}),
}


async def measure(url: str, path: str, concurrency: int, seconds: float) -> tuple[float, list[float]]:
    """Closed loop: ``concurrency`` clients for ``seconds``; (requests/s, latencies in seconds), non-200s fail."""
    method, route, body = PATHS[path]
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() < stop_at:
            start = time.monotonic()
            resp = await http.request(method, f"{url}{route}", json=body)
            if resp.status_code != 200:
                raise SystemExit(f"{path}: HTTP {resp.status_code}: {resp.text[:300]}")
            latencies.append(time.monotonic() - start)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        started = time.monotonic()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        return len(latencies) / (time.monotonic() - started), latencies


def set_router_replicas(work: Path, address: str, replicas: int) -> None:
    """Edit the fleet's spec and apply it live: only the router's deployment changes."""
    spec_path = work / "fleet.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["server"]["router"] = {"min_replicas": replicas, "max_replicas": replicas}
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    cmd = [sys.executable, "-m", "cluster.cli", "apply", str(spec_path), "--address", address]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"apply failed:\n{done.stderr[-2000:]}")


def ray_address(log: Path, within_s: float = 60) -> str:
    """The fleet's Ray address from its ready message (printed just after /healthz may first answer)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        found = re.search(r"^Ray cluster: (\S+)", log.read_text(errors="replace"), re.MULTILINE)
        if found:
            return found.group(1)
        time.sleep(0.5)
    raise SystemExit(f"no Ray address in {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="slmfleet-router-"))
    results: dict[tuple[str, int], list[tuple[float, list[float]]]] = {}
    with running_fleet(PIPELINES, work=work) as url:
        address = ray_address(work / "fleet.log")
        for round_no in range(args.rounds):
            for replicas in (1, 2):
                set_router_replicas(work, address, replicas)
                time.sleep(3)  # let the proxy learn the new replica set
                for path in PATHS:
                    rate, lat = asyncio.run(measure(url, path, args.concurrency, args.seconds))
                    results.setdefault((path, replicas), []).append((rate, lat))
                    print(f"round {round_no + 1} replicas {replicas} {path:8s} {rate:7.1f} req/s", flush=True)
    print_table(results, args)


def print_table(results: dict[tuple[str, int], list[tuple[float, list[float]]]], args: argparse.Namespace) -> None:
    print(f"\nRouter replicas, concurrency {args.concurrency}, {args.seconds:.0f} s x {args.rounds} rounds each")
    print(f"{'path':9s} {'replicas':>8s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for path in PATHS:
        for replicas in (1, 2):
            runs = results[(path, replicas)]
            rate = statistics.median(r for r, _ in runs)
            lat = [x * 1000 for _, lats in runs for x in lats]
            print(f"{path:9s} {replicas:8d} {rate:8.1f} {percentile(lat, 50):8.1f} {percentile(lat, 99):8.1f}")
        ratios = [two[0] / one[0] for one, two in zip(results[(path, 1)], results[(path, 2)], strict=True)]
        print(f"{path:9s} ratio two/one: {statistics.median(ratios):.2f} (spread {min(ratios):.2f}..{max(ratios):.2f})")


if __name__ == "__main__":
    main()
