"""Local object-storage servers from PyPI (moto's S3 server, gcp-storage-emulator) for the tests, and the
environment that points boto3 and google-cloud-storage at them (their usual variables, as in production)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.ports import free_port

BIN = Path(sys.executable).parent


@contextmanager
def serving(command: list[str], url: str) -> Iterator[str]:
    """``command`` running until the block ends, once ``url`` answers."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"{command[0]} did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    """moto's S3 server on a free loopback port; yields the variables that point boto3 at it."""
    port = free_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with serving([str(BIN / "moto_server"), "-p", str(port)], env["AWS_ENDPOINT_URL"]):
        yield env


@contextmanager
def gcs_server() -> Iterator[dict[str, str]]:
    """gcp-storage-emulator in memory on a free loopback port; yields the variable google-cloud-storage reads."""
    port = free_port()
    env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"}
    command = [str(BIN / "gcp-storage-emulator"), "start", "--port", str(port), "--in-memory", "-q"]
    with serving(command, env["STORAGE_EMULATOR_HOST"]):
        yield env
