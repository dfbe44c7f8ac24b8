"""A model that scales to zero, through the router as users see it: probes never wake it, a call that may escalate
is answered by the LLM tier while the model wakes (and says so), a call that may not waits for that wake within its
deadline, and after its idle delay the model is back at zero. The e2e fleet's ``cold`` model starts at zero."""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CLIENT_TIMEOUT_S = 130  # a little longer than the router's own deadline (server.request_timeout_s, 120 s)
EXTRACT = "Alice Martin is 34 and lives in Lyon."


def cold_state(fleet) -> tuple[int, dict]:
    resp = httpx.get(f"{fleet.url}/healthz", timeout=15)
    return resp.status_code, resp.json()["models"]["cold"]


def wait_for_state(fleet, state: str, within_s: float) -> float:
    """Seconds until /healthz reports ``cold`` in ``state`` (the router stays 200 throughout)."""
    start = time.monotonic()
    while time.monotonic() - start < within_s:
        code, report = cold_state(fleet)
        assert code == 200, report  # idle or waking is not down
        if report["state"] == state:
            return time.monotonic() - start
        time.sleep(1)
    pytest.fail(f"model 'cold' never reached {state!r} within {within_s} s (last: {report})")


def chat(fleet, model: str, timeout: float = 180) -> tuple[httpx.Response, float]:
    body = {"model": model, "messages": [{"role": "user", "content": EXTRACT}]}
    start = time.monotonic()
    resp = httpx.post(f"{fleet.url}/v1/chat/completions", json=body, timeout=timeout)
    return resp, time.monotonic() - start


def test_scale_to_zero_wake_escalate_wait_and_back(fleet):
    wait_for_state(fleet, "scaled_to_zero", within_s=60)
    for _ in range(5):  # probes read Serve's state, they never call the model
        assert cold_state(fleet)[1] == {"state": "scaled_to_zero", "running": 0, "target": 0}
        time.sleep(1)

    # At zero, a call that may escalate is answered by the LLM tier at once, labelled, and wakes the model.
    resp, took = chat(fleet, "extract-cold")
    assert resp.status_code == 200, resp.text
    report = resp.json()["slmfleet"]
    assert report["served_by"] == "big", report
    (escalation,) = report["escalations"]
    assert escalation["from_model"] == "cold" and escalation["reason"] == "unavailable"
    assert "cold_start" in escalation["detail"] and "scaled to zero" in escalation["detail"], escalation

    # A call with no escalation target, sent during that wake, waits for it within its deadline (one cold start
    # serves both cases: each costs about a minute here).
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(chat, fleet, "cold", CLIENT_TIMEOUT_S)
        woke_in = wait_for_state(fleet, "ready", within_s=240)  # the router stays 200 while the model wakes
        resp, waited = waiting.result()
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["slmfleet"]["served_by"] == "cold" and body["slmfleet"]["escalations"] == []
    assert body["choices"][0]["message"]["content"]
    print(f"FIGURE: escalated answer during a cold start in {took:.1f} s; model ready {woke_in:.1f} s later")
    print(f"FIGURE: a call that waited for the wake answered in {waited:.1f} s")

    # Idle past its delay, it goes back to zero.
    back_in = wait_for_state(fleet, "scaled_to_zero", within_s=180)
    print(f"FIGURE: back at zero {back_in:.1f} s after the last call")
