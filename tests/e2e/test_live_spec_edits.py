"""Spec edits reach the running fleet without restarting anything: `slmfleet diff` says so and `slmfleet apply`
deploys the edited spec's rendered config (what `slmfleet up` deployed, declaratively), while a request is in
flight; a driver attached to the fleet's Ray reads the replica ids before and after."""

import json
import os
import subprocess
import sys
import threading

import httpx
import pytest
import yaml

from tests.e2e.conftest import e2e_spec

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

REPLICA_IDS = r"""
import json, sys
import ray
from ray.serve.context import _get_global_client

ray.init(address=sys.argv[1], logging_level="ERROR")
details = _get_global_client().get_serve_details()
print(json.dumps({
    f"{app}/{name}": sorted(r["replica_id"] for r in deployment["replicas"])
    for app, app_details in details["applications"].items()
    for name, deployment in app_details["deployments"].items()
}))
"""


def run(args, timeout=300):
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def replica_ids(address):
    return json.loads(run([sys.executable, "-c", REPLICA_IDS, address]).strip().splitlines()[-1])


def edited_spec(path):
    """The fleet's own spec plus a new specialist, a new price and a larger queue bound on smol."""
    data = yaml.safe_load(e2e_spec(path).read_text())
    data["specialists"]["yes-no"] = {
        "model": "smol",
        "instructions": "Answer the question with yes or no.",
        "output": {"choice": ["yes", "no"]},
        "sampling": {"max_tokens": 4},
    }
    data["models"]["smol"]["price_per_1k_tokens"] = 0.0002
    data["models"]["smol"]["max_queued_requests"] = 40
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_specialist_price_and_queue_bound_apply_live_with_no_replica_restart(fleet, tmp_path):
    in_flight = {}

    def long_call():
        body = {"model": "smol", "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 96}
        in_flight["response"] = httpx.post(f"{fleet.url}/v1/chat/completions", json=body, timeout=300)

    address, spec = fleet.ray_address(), str(edited_spec(tmp_path / "edited.yaml"))
    before = replica_ids(address)
    diff = run([sys.executable, "-m", "cluster.cli", "diff", spec, "--address", address])
    assert "0 app(s) restart replicas" in diff and "! restart" not in diff, diff  # every change is live
    assert "user_config.spec.specialists.yes-no" in diff and "max_queued_requests: 32 -> 40" in diff, diff

    caller = threading.Thread(target=long_call)
    caller.start()
    run([sys.executable, "-m", "cluster.cli", "apply", spec, "--address", address])
    caller.join(300)
    assert replica_ids(address) == before, "a replica was restarted by a live edit"
    assert before["slmfleet/router"] and before["model-smol/model-smol"]

    assert in_flight["response"].status_code == 200, in_flight["response"].text  # unharmed by the edit
    body = {"model": "yes-no", "messages": [{"role": "user", "content": "Is Paris in France?"}]}
    reply = httpx.post(f"{fleet.url}/v1/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] in ("yes", "no")
    assert reply.json()["slmfleet"]["cost"]["total"] == pytest.approx(
        0.0002 * reply.json()["usage"]["total_tokens"] / 1000
    )
