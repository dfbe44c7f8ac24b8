"""One real fleet for the reliability tier: the default fleet cut to its small model (one ~3 GB engine), started
with ``slmfleet up`` once for the package, and a driver attached to its Ray that reads the engine's own counts."""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.common import small_spec
from tests.fleet_process import Fleet, driver_env, start_fleet, stop

# Reads one model replica's load() (vLLM's own unfinished-request count, the batch queue) per line on stdin.
LOAD_READER = """
import json, sys, ray
from ray import serve
ray.init(address=sys.argv[1], log_to_driver=False)
handle = serve.get_deployment_handle(sys.argv[2], sys.argv[2])
print("attached", flush=True)
for _ in sys.stdin:
    print(json.dumps(handle.load.remote().result(timeout_s=30)), flush=True)
"""


class LoadReader:
    """``read()`` -> the model replica's ``load()``: what its engine and batch slots hold right now."""

    def __init__(self, address: str, deployment: str) -> None:
        env = driver_env()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LOAD_READER, address, deployment],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout.readline().strip() == "attached", "could not attach a driver to the fleet's Ray"

    def read(self) -> dict[str, Any]:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="package")
def fleet(tmp_path_factory) -> Iterator[Fleet]:
    work: Path = tmp_path_factory.mktemp("reliability")
    running = start_fleet(work, small_spec(work / "fleet.yaml"))
    try:
        yield running
    finally:
        stop(running)


@pytest.fixture(scope="package")
def smol_load(fleet: Fleet) -> Iterator[LoadReader]:
    reader = LoadReader(fleet.ray_address(), "model-smol")
    try:
        yield reader
    finally:
        reader.close()
