"""A client that goes away mid-stream frees its place in the engine: the router cancels the model call and vLLM
aborts the request, read from the engine's own count of unfinished requests."""

import time

import httpx
import pytest

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(180)]
LONG = {
    "model": "smol",
    "messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}],
    "max_tokens": 1500,
    "min_tokens": 1500,  # no early stop: only the abort can end it within the test
    "stream": True,
}


def wait_for_engine_requests(smol_load, want: int, within_s: float) -> dict:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        load = smol_load.read()
        if load["engine_requests"] == want:
            return load
        time.sleep(0.5)
    pytest.fail(f"the engine still holds {load['engine_requests']} requests after {within_s} s (want {want})")


def test_a_client_that_disconnects_mid_stream_frees_its_engine_request(fleet, smol_load):
    wait_for_engine_requests(smol_load, 0, within_s=90)  # earlier tests' work has drained
    with httpx.stream("POST", f"{fleet.url}/v1/chat/completions", json=LONG, timeout=60) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()  # kept open: closing this iterator closes the connection
        data: list[str] = []
        for line in lines:
            data += [line] if line.startswith("data:") else []
            if len(data) >= 5:
                break
        assert smol_load.read()["engine_requests"] == 1, data  # decoding for this client
        lines.close()  # the client goes away, hundreds of tokens before the answer would end
    wait_for_engine_requests(smol_load, 0, within_s=15)
