"""LoRA adapter specialists on the real fleet: served through the openai client, batched with the base model and
each other without changing anyone's answer, hot-loaded at runtime with no restart, kept across a router restart.

smol has LoRA slots in the e2e spec, ``tuned-a`` and ``tuned-b`` are adapter specialists on it, and the adapters
were made by peft in the package's setup (random LoRA weights, so each visibly changes the model).
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import yaml

from cluster.cli import local_state_path
from deployments.router.adapter_registry import REFRESH_S
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


def upload(folder, bucket: str, prefix: str) -> None:
    """An adapter's files to s3://bucket/prefix and gs://bucket/prefix (the local servers of ``object_stores``)."""
    import boto3
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    gcs = storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket(bucket)
    for path in folder.iterdir():
        s3.upload_file(str(path), bucket, f"{prefix}/{path.name}")
        gcs.blob(f"{prefix}/{path.name}").upload_from_filename(str(path))


def test_adapters_from_s3_and_gcs_register_and_serve_through_the_fleet(fleet: Fleet, client, adapters) -> None:
    """tuned-a's files, uploaded to both object stores, registered at runtime from there: the replica downloads
    them (probe included) and each answers exactly as tuned-a does from its local folder. The prefix is new each
    run: replicas cache an adapter by source and version (the contract: new files, new version), and that cache
    outlives a run on this machine, while tuned-a is made anew each run (a cached copy of an earlier run's tuned-a
    answered differently in CI)."""
    prefix = f"tuned-a/{uuid.uuid4().hex[:12]}"
    upload(adapters["tuned-a"], "adapters", prefix)
    http = httpx.Client(base_url=fleet.url, timeout=300)
    local = ask(client, "tuned-a")
    try:
        for name, source in (("from-s3", f"s3://adapters/{prefix}"), ("from-gcs", f"gs://adapters/{prefix}")):
            registered = http.put(f"/admin/adapters/{name}", json={"model": "smol", "adapter": {"source": source}})
            assert registered.status_code == 201, registered.text
            assert ask(client, name) == local, name
        missing = {"model": "smol", "adapter": {"source": "s3://adapters/nothing/here"}}
        refused = http.put("/admin/adapters/from-nowhere", json=missing)
        assert refused.status_code == 422, refused.text
    finally:
        http.delete("/admin/adapters/from-s3")
        http.delete("/admin/adapters/from-gcs")


def router_pids_of(fleet: Fleet, specialist: str) -> set[int]:
    """The router processes that served calls to ``specialist``, from the trace file: each engine span names its
    specialist, and its trace's root span was recorded by the router replica that took the request."""
    spans = [json.loads(line) for line in fleet.trace_file.read_text().splitlines() if line.strip()]
    traces = {
        s["context"]["trace_id"]
        for s in spans
        if s["name"] == "engine.generate" and s["attributes"].get("slmfleet.specialist") == specialist
    }
    return {
        s["resource"]["attributes"]["process.pid"]
        for s in spans
        if s["context"]["trace_id"] in traces and s["name"] == "POST /v1/chat/completions"
    }


def test_a_runtime_adapter_reaches_a_second_router_replica_through_the_shared_registry(
    fleet: Fleet, adapters, tmp_path
) -> None:
    """The router scaled to two replicas by a live spec edit; an adapter registered through one of them (whichever
    Serve's proxy picked) is served by both within the registry's refresh, with one answer, never registered twice.
    Every call must be a 200: a new replica once answered 404 while its first read of the registry was under way."""
    from tests.e2e.test_live_spec_edits import cli, replica_ids, write_spec

    address = fleet.ray_address()
    base = yaml.safe_load(fleet.spec.read_text())
    two = copy.deepcopy(base)
    two["server"]["router"] = {"min_replicas": 2, "max_replicas": 2}
    http = httpx.Client(base_url=fleet.url, timeout=300)
    cli("apply", str(write_spec(tmp_path / "two-routers.yaml", two)), "--address", address)
    try:
        deadline = time.monotonic() + 180
        while len(replica_ids(address)["slmfleet/router"]) < 2 and time.monotonic() < deadline:
            time.sleep(2)
        assert len(replica_ids(address)["slmfleet/router"]) == 2
        body = {"model": "smol", "adapter": {"source": str(adapters["late"])}}
        assert http.put("/admin/adapters/two-routers", json=body).status_code == 201
        time.sleep(2 * REFRESH_S)  # every router replica re-reads the registry within REFRESH_S
        answers: list[str] = []
        deadline, pids = time.monotonic() + 120, set()
        while len(pids) < 2 and time.monotonic() < deadline:  # until spans (exported in batches) show both
            with ThreadPoolExecutor(4) as pool:
                answers += pool.map(lambda _: chat(http, "two-routers"), range(8))
            time.sleep(2)
            pids = router_pids_of(fleet, "two-routers")
        assert len(pids) == 2, f"{len(answers)} calls were served by router processes {pids}; both should serve"
        assert len(set(answers)) == 1 and answers[0] != chat(http, "smol"), answers
    finally:
        http.delete("/admin/adapters/two-routers")
        cli("apply", str(write_spec(tmp_path / "one-router.yaml", base)), "--address", address)


def chat(http: httpx.Client, model: str) -> str:
    answer = http.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["choices"][0]["message"]["content"]
