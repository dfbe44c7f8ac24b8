"""Inputs that crashed, hung or 500'd vLLM's or Ray Serve's OpenAI servers in public reports (collected in
``crash_corpus.json``, each with its source): on the real fleet each gets a 4xx in OpenAI's error shape or a
valid 200, never a 5xx, and the fleet is healthy after every one."""

import json
from pathlib import Path

import httpx
import pytest
from openai.types.chat import ChatCompletion

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(180)]
CORPUS = json.loads((Path(__file__).parent / "crash_corpus.json").read_text())


def send(fleet, case):
    content_type = case.get("content_type", "application/json")
    data = case["raw"].encode("utf-8", "surrogatepass") if "raw" in case else json.dumps(case["body"]).encode()
    return httpx.post(f"{fleet.url}{case['path']}", content=data, headers={"Content-Type": content_type}, timeout=120)


def test_the_corpus_is_large_enough_and_sourced():
    assert len(CORPUS) >= 30
    assert len({c["id"] for c in CORPUS}) == len(CORPUS)
    assert all(c["source"].startswith("https://") and c["broke"] for c in CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=[c["id"] for c in CORPUS])
def test_each_input_gets_a_4xx_or_a_valid_200_and_the_fleet_stays_healthy(fleet, case):
    resp = send(fleet, case)
    assert resp.status_code < 500, f"{case['id']}: {resp.status_code} {resp.text[:500]}"
    if resp.status_code >= 400:
        error = resp.json()["error"]
        assert error["message"] and error["type"], error
    elif "text/event-stream" in resp.headers.get("content-type", ""):
        assert resp.text.rstrip().endswith("data: [DONE]") or case["path"] == "/v1/responses", resp.text[-300:]
    elif case["path"] == "/v1/chat/completions":
        ChatCompletion.model_validate(resp.json())
    assert httpx.get(f"{fleet.url}/healthz", timeout=30).status_code == 200
