"""The rendered Serve config of the default fleet, started by Ray's own ``serve run FILE``, answers a request.

``serve run`` starts a fresh local Ray of its own (``--address local``, its files under a private RAY_TMPDIR, so it
neither joins nor disturbs another Ray on this machine) with 8 logical CPUs declared (the machine has 2 cores; an
ingress left unscheduled is the failure mode of too few). The config holds one app per model and the router's
app, which gets the spec only from its deployment's inline ``user_config``: no spec file is read. The default
fleet's two real vLLM engines (SmolLM2 on the CPU, ~3 GB each) run, and the whole process group is stopped when
the test ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from cluster import render
from cluster.model_store import resolve_source
from cluster.placement import plan_from_store
from cluster.spec import load_spec
from tests.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
SERVE = REPO / ".venv" / "bin" / "serve"
START_TIMEOUT_S = 420
STOP_TIMEOUT_S = 60
LOGICAL_CPUS = 8
Served = tuple[str, dict, Path, subprocess.Popen]  # the fleet's URL, its rendered config, the log, `serve run`


def render_default_fleet(path: Path, port: int, edit: Callable[[dict], None] | None = None) -> dict:
    """The default fleet's Serve config as `slmfleet render serve` writes it, on a free port; ``edit`` changes the
    spec (as YAML data) before rendering."""
    data = yaml.safe_load((REPO / "fleet.yaml").read_text())
    if edit is not None:
        edit(data)
    spec_path = path.with_name("fleet.yaml")
    spec_path.write_text(yaml.safe_dump(data, sort_keys=False))
    spec = load_spec(spec_path)
    for model in spec.models.values():  # convert bundled weights here once, not inside the replica's start-up
        resolve_source(model.source)
    text = render.serve_config_text(spec, plan_from_store(spec), "fleet.yaml", "slmfleet render serve fleet.yaml")
    config = yaml.safe_load(text)
    config["http_options"]["port"] = port
    path.write_text(render.dump_yaml(config))
    return config


def stop(proc: subprocess.Popen) -> None:
    """Ctrl-C to `serve run` (it shuts Serve and its Ray down), then SIGKILL whatever is left of its group."""
    pgid = proc.pid  # start_new_session: the group is the process's own
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_TIMEOUT_S)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    proc.wait(10)


@contextlib.contextmanager
def serve_run(tmp_path: Path, edit: Callable[[dict], None] | None = None) -> Iterator[Served]:
    """`serve run` of the default fleet's rendered config (edited by ``edit``): (url, config, log, process)."""
    if not SERVE.is_file():
        pytest.skip(f"{SERVE} not found: the project's virtual environment is needed")
    port = free_port()
    config_path = tmp_path / "serve.yaml"
    config = render_default_fleet(config_path, port, edit)
    ray_tmp = Path(tempfile.mkdtemp(prefix="sfr", dir="/tmp"))  # short: Ray's socket paths have a length limit
    log = tmp_path / "serve-run.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        RAY_TMPDIR=str(ray_tmp),
        RAY_OVERRIDE_RESOURCES=json.dumps({"CPU": LOGICAL_CPUS}),
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=str(REPO),
    )
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(SERVE), "run", "--address", "local", str(config_path)],
            cwd=tmp_path,  # not the repository: the app must not depend on a fleet.yaml next to it
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield f"http://127.0.0.1:{port}", config, log, proc
    finally:
        stop(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture
def served_fleet(tmp_path: Path) -> Iterator[Served]:
    with serve_run(tmp_path) as running:
        yield running


def log_tail(log: Path, lines: int = 80) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def chat(url: str, payload: dict, log: Path, proc: subprocess.Popen) -> httpx.Response:
    """Retry until the app answers (engine start-up takes ~30-60 s here), or fail with the log's tail."""
    deadline = time.monotonic() + START_TIMEOUT_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"`serve run` exited with {proc.returncode}:\n{log_tail(log)}")
        try:
            response = httpx.post(f"{url}/v1/chat/completions", json=payload, timeout=60)
            if response.status_code == 200:
                return response
            last = f"HTTP {response.status_code}: {response.text[:300]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(3)
    pytest.fail(f"the rendered Serve config did not answer in {START_TIMEOUT_S} s ({last}):\n{log_tail(log)}")


def test_rendered_serve_config_deploys_and_answers(served_fleet) -> None:
    url, config, log, proc = served_fleet
    (router,) = [app for app in config["applications"] if app["route_prefix"] == "/"]
    intent = router["deployments"][0]["user_config"]["spec"]["specialists"]["intent"]
    payload = {"model": "intent", "messages": [{"role": "user", "content": "I want my money back for this order."}]}
    response = chat(url, payload, log, proc)
    answer = response.json()["choices"][0]["message"]["content"].strip()
    assert answer in intent["output"]["choice"], f"{answer!r} is not one of {intent['output']['choice']}"
    assert "Running config file" in log.read_text(errors="replace"), "not started from the config file"


def exposed_without_keys(data: dict) -> None:
    """The router bound beyond loopback with no keys; the LLM tier (which may not scale to zero) and what escalates
    to it left out, and the small models at zero replicas, so no engine starts: the refusal is the router's."""
    data["server"] = {**data.get("server", {}), "host": "0.0.0.0"}
    data["server"].pop("api_keys_env", None)
    for name in [name for name, model in data["models"].items() if model.get("tier") == "llm"]:
        del data["models"][name]
    for model in data["models"].values():
        model["autoscaling"] = {**model.get("autoscaling", {}), "min_replicas": 0}
    data["pipelines"] = {}
    for specialist in data["specialists"].values():
        specialist.pop("escalation", None)


def test_serve_run_of_an_exposed_config_without_keys_serves_nothing(tmp_path: Path) -> None:
    """The auth gate on the `serve run` launch path: the router replica refuses its spec (the same rule and words
    as `slmfleet up`'s exit 2), so no route answers, keyless or not, on any interface."""
    with serve_run(tmp_path, exposed_without_keys) as (url, config, log, _):
        assert config["http_options"]["host"] == "0.0.0.0"
        deadline, refused = time.monotonic() + START_TIMEOUT_S, False
        while time.monotonic() < deadline and not refused:
            refused = "binding beyond loopback without API keys" in log.read_text(errors="replace")
            for path in ("/v1/models", "/healthz"):
                with contextlib.suppress(httpx.HTTPError):
                    answer = httpx.get(f"{url}{path}", timeout=10)
                    assert answer.status_code != 200, f"{path} answered 200 from an exposed router without keys"
            time.sleep(2)
        assert refused, f"the router replica never refused its spec:\n{log_tail(log)}"
