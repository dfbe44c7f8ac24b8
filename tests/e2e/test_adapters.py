"""LoRA adapter specialists on the real fleet: served through the openai client, batched with the base model and
each other without changing anyone's answer, hot-loaded at runtime with no restart, kept across a router restart.

smol has LoRA slots in the e2e spec, ``tuned-a`` and ``tuned-b`` are adapter specialists on it, and the adapters
were made by peft in the package's setup (random LoRA weights, so each visibly changes the model).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from cluster.cli import local_state_path
from tests.fleet_process import Fleet

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

PROMPT = "Name three colours and one animal."


def ask(client, model: str, prompt: str = PROMPT) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=16, temperature=0.0
    )
    return reply.choices[0].message.content


def test_an_adapter_specialist_answers_through_the_openai_client_and_differs_from_the_base(client) -> None:
    base, tuned = ask(client, "smol"), ask(client, "tuned-a")
    assert tuned and tuned != base, (base, tuned)
    cards = {card.id: card for card in client.models.list().data}
    assert cards["tuned-a"].model_extra["slmfleet"]["adapter"]["version"] == "1"
    assert cards["tuned-a"].model_extra["slmfleet"]["model"] == "smol"


def test_two_adapters_and_the_base_interleaved_each_give_their_solo_answer(client) -> None:
    """fp32 and greedy: batching adapters with each other and the base must not change a single token."""
    models = ["smol", "tuned-a", "tuned-b"]
    prompts = [PROMPT, "Write a haiku about rain.", "What is two plus two?"]
    solo = {(m, p): ask(client, m, p) for m in models for p in prompts}
    first_logprobs = {m: first_token_logprob(client, m) for m in models}
    assert len({round(value, 3) for value in first_logprobs.values()}) == len(models), first_logprobs  # 3 models
    work = [(m, p) for m in models for p in prompts]  # 9 at once; the one beyond smol's batch of 8 waits
    patient = client.with_options(max_retries=4)  # a 503 under this burst is retried after its Retry-After
    with ThreadPoolExecutor(len(work)) as pool:
        together = list(pool.map(lambda mp: ask(patient, *mp), work))
    mismatches = [(mp, got, solo[mp]) for mp, got in zip(work, together, strict=True) if got != solo[mp]]
    assert mismatches == []


def test_a_spec_adapter_is_probed_on_first_use_and_a_do_nothing_one_never_serves_the_base(fleet: Fleet, client):
    """``untrained-spec`` (peft's B = 0 init) passes ``validate`` (its files fit smol) but changes nothing: its first
    call probes it and it is refused with the reason, never answered by the base model under its name; ``tuned-a``'s
    probe passed and is listed."""
    with pytest.raises(openai.APIStatusError) as refused:
        ask(client, "untrained-spec")
    assert refused.value.status_code == 503, refused.value
    error = refused.value.body
    assert error["code"] == "adapter_refused" and "does not change the model's output" in error["message"], error
    ask(client, "tuned-a")
    listing = httpx.get(f"{fleet.url}/admin/adapters", timeout=30).json()["data"]
    by_name = {item["name"]: item for item in listing}
    untrained = by_name["untrained-spec"]
    assert untrained["active"] is False and "does not change" in untrained["reason"], untrained
    assert by_name["tuned-a"]["active"] is True and by_name["tuned-a"]["probe"]["divergence"] > 0.01, by_name


def first_token_logprob(client, model: str) -> float:
    """Greedy text can coincide (two random adapters both answer a list of colours); log-probabilities do not."""
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=1, temperature=0.0, logprobs=True
    )
    return reply.choices[0].logprobs.content[0].logprob


def smol_engine_pids(fleet: Fleet) -> tuple[int, list[int]]:
    replica = fleet.replica_process("model-smol")
    return replica.pid, sorted(child.pid for child in replica.children(recursive=True))


def test_a_runtime_registration_hot_loads_with_no_restart_and_a_do_nothing_adapter_is_refused(
    fleet: Fleet, client, adapters
) -> None:
    before = smol_engine_pids(fleet)
    admin = httpx.Client(base_url=fleet.url, timeout=300)
    refused = admin.put(
        "/admin/adapters/untrained", json={"model": "smol", "adapter": {"source": str(adapters["untrained"])}}
    )
    assert refused.status_code == 422, refused.text
    assert "does not change the model's output" in refused.json()["error"]["message"]

    started = time.perf_counter()
    registered = admin.put("/admin/adapters/late", json={"model": "smol", "adapter": {"source": str(adapters["late"])}})
    assert registered.status_code == 201, registered.text
    answer = ask(client, "late")
    hot_load_s = time.perf_counter() - started
    print(f"hot-load: registration to first answer {hot_load_s:.2f} s, probe {registered.json()['probe']}")
    try:
        assert answer != ask(client, "smol")
        assert registered.json()["probe"]["divergence"] > 0.01
        assert "late" in {card.id for card in client.models.list().data}
        snapshot = json.loads(local_state_path(str(fleet.spec)).read_text())  # `slmfleet up`'s default state file
        assert snapshot["namespaces"]["adapters"]["late"]["specialist"]["adapter"]["source"] == str(adapters["late"])
        assert smol_engine_pids(fleet) == before  # no new replica, no engine restart
        update = {"model": "smol", "adapter": {"source": str(adapters["tuned-b"]), "version": "2"}}
        assert admin.put("/admin/adapters/late", json=update).status_code == 200
        assert ask(client, "late") == ask(client, "tuned-b")  # the new version answers from the next request
    finally:
        assert admin.delete("/admin/adapters/late").status_code == 200
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        ask(client, "late")


def test_a_runtime_adapter_is_served_by_a_restarted_router_without_registering_again(fleet: Fleet, adapters) -> None:
    http = httpx.Client(base_url=fleet.url, timeout=300)
    body = {"model": "smol", "adapter": {"source": str(adapters["late"])}}
    assert http.put("/admin/adapters/router-restart", json=body).status_code == 201
    try:
        first = chat(http, "router-restart")
        router = fleet.replica_process("router", app="slmfleet")
        router.kill()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if (
                    fleet.replica_process("router", app="slmfleet").pid != router.pid
                    and http.get("/healthz").status_code == 200
                ):
                    break
            except (AssertionError, httpx.HTTPError):
                pass
            time.sleep(1)
        assert chat(http, "router-restart") == first
    finally:
        http.delete("/admin/adapters/router-restart")


def chat(http: httpx.Client, model: str) -> str:
    answer = http.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["choices"][0]["message"]["content"]
