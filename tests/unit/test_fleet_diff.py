"""Running Serve config -> desired one: what changes, and whether Serve restarts replicas (cluster/fleet_diff.py).

Specs are fleet.yaml with one edit, planned and rendered the way `slmfleet render serve` does, so the tests follow
what today's render puts where (an edit that lands in an app's ``args`` rebuilds that app). The rule table itself
is checked against Ray Serve's own code: the update type of each ``DeploymentConfig`` field, the app code version,
and ``DeploymentVersion.requires_actor_restart`` (pure objects, no cluster).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.fleet_diff import (
    APPLICATION_OPTION_RULES,
    DEPLOYMENT_OPTION_RULES,
    SERVE_OPTION_RULES,
    UNSET,
    Change,
    FleetDiff,
    diff_serve_configs,
    leaf_diff,
    rule_for,
)
from cluster.placement import plan_fleet
from cluster.render.common import APP_NAME, ROUTER_DEPLOYMENT
from cluster.render.serve_config import build_serve_config
from cluster.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]
FLEET = yaml.safe_load((ROOT / "fleet.yaml").read_text())
SMOL, BIG = "model-smol", "model-big"


def render(data: dict[str, Any]) -> dict[str, Any]:
    spec = parse_spec(data)
    return build_serve_config(spec, plan_fleet(spec))


def edited(edit) -> dict[str, Any]:
    data = copy.deepcopy(FLEET)
    edit(data)
    return data


def app(config: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [a for a in config["applications"] if a["name"] == name]
    return found


def apps_touched(diff: FleetDiff) -> set[str]:
    return {c.app for c in diff.changes}


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return render(FLEET)


def router_restart_expected(config: dict[str, Any]) -> set[tuple[str, str | None]]:
    """Where today's render keeps the spec for the router: in its app's args (a spec edit rebuilds the router
    app) or in its deployment's user_config (a spec edit reaches running routers through reconfigure())."""
    return {(APP_NAME, None)} if "spec" in app(config, APP_NAME)["args"] else set()


# ---------------------------------------------------------------------------------------------------------------
# Spec edits, rendered


def test_identical_specs_give_an_empty_diff(base):
    diff = diff_serve_configs(base, render(FLEET))
    assert diff.is_empty()
    assert diff.changes == ()
    assert diff.restarts() == set()
    assert diff.render_text().startswith("No changes")


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda d: d["specialists"]["intent"].update(instructions="Answer with one label."), id="spec"),
        pytest.param(lambda d: d["specialists"]["intent"]["sampling"].update(max_tokens=9), id="specialist-sampling"),
        pytest.param(lambda d: d["pipelines"]["support-triage"].update(step_timeout_s=45), id="pipeline"),
    ],
)
def test_specialist_or_pipeline_edit_touches_only_the_router(base, edit):
    desired = render(edited(edit))
    diff = diff_serve_configs(base, desired)
    assert apps_touched(diff) == {APP_NAME}
    assert diff.restarts() == router_restart_expected(desired)
    changed = {c.field for c in diff.changes}
    assert all(".spec.specialists." in f or ".spec.pipelines." in f for f in changed), changed


def test_router_spec_edit_effect_follows_where_the_render_puts_the_spec(base):
    desired = render(edited(lambda d: d["specialists"]["intent"]["sampling"].update(max_tokens=9)))
    (change,) = diff_serve_configs(base, desired).changes
    assert change.field.endswith("spec.specialists.intent.sampling.max_tokens")
    assert (change.before, change.after) == (8, 9)
    if router_restart_expected(desired):  # spec in the router app's args: the app is rebuilt
        assert (change.deployment, change.effect, change.field) == (None, "restart", change.field)
        assert change.field.startswith("args.")
    else:  # spec in the router deployment's user_config: reconfigure() on the running replicas
        assert (change.deployment, change.effect) == (ROUTER_DEPLOYMENT, "live")
        assert change.field.startswith("user_config.")


def test_max_replicas_is_live_on_that_models_deployment(base):
    desired = render(edited(lambda d: d["models"]["smol"]["autoscaling"].update(max_replicas=2)))
    diff = diff_serve_configs(base, desired)
    assert BIG not in apps_touched(diff)
    live = [c for c in diff.changes if c.app == SMOL and c.effect == "live"]
    assert [(c.deployment, c.field, c.before, c.after) for c in live] == [
        (SMOL, "autoscaling_config.max_replicas", 1, 2)
    ]
    smol_args_carry_autoscaling = "autoscaling" in app(desired, SMOL)["args"]["spec"]
    expected = {(SMOL, None)} if smol_args_carry_autoscaling else set()
    assert diff.restarts() == expected | router_restart_expected(desired)


def test_max_model_len_restarts_only_that_models_app(base):
    desired = render(edited(lambda d: d["models"]["smol"].update(max_model_len=4096)))
    diff = diff_serve_configs(base, desired)
    assert BIG not in apps_touched(diff)
    (engine,) = [c for c in diff.changes if c.app == SMOL]
    assert (engine.deployment, engine.field, engine.before, engine.after) == (
        None,
        "args.spec.max_model_len",
        2048,
        4096,
    )
    assert engine.effect == "restart"
    assert "engines restart" in engine.why
    assert diff.restarts() == {(SMOL, None)} | router_restart_expected(desired)


def serve_details(config: dict[str, Any], running: dict[str, int]) -> dict[str, Any]:
    """Serve's details for ``config`` deployed, with ``running[app]`` RUNNING replicas (and one STOPPING)."""
    apps = {}
    for a in config["applications"]:
        replicas = [{"state": "RUNNING"}] * running.get(a["name"], 1) + [{"state": "STOPPING"}]
        deployments = {d["name"]: {"replicas": replicas} for d in a["deployments"]}
        apps[a["name"]] = {"deployed_app_config": a, "deployments": deployments}
    return {"applications": apps}


@pytest.mark.parametrize(("running", "cautioned"), [(1, True), (2, False)])
def test_a_restart_of_a_models_only_running_replica_is_called_out(base, running, cautioned):
    desired = render(edited(lambda d: d["models"]["smol"].update(max_model_len=4096)))
    diff = diff_serve_configs(serve_details(base, {SMOL: running}), desired)
    assert (SMOL, None) in diff.restarts()
    assert (diff.gaps == (SMOL,)) is cautioned and diff.as_dict()["no_replica_while_restarting"] == list(diff.gaps)
    assert (f"Caution: {SMOL} has one running replica" in diff.render_text()) is cautioned
    live_only = diff_serve_configs(
        serve_details(base, {}), render(edited(lambda d: d["models"]["smol"].update(price_per_1k_tokens=0.5)))
    )
    assert live_only.gaps == ()  # nothing restarts: nothing to call out


def test_adding_and_removing_a_model_adds_and_removes_its_app(base):
    with_tiny = render(edited(lambda d: d["models"].update(tiny=copy.deepcopy(FLEET["models"]["big"]))))
    added = diff_serve_configs(base, with_tiny)
    (add,) = [c for c in added.changes if c.effect == "add"]
    assert (add.app, add.deployment, add.before) == ("model-tiny", None, UNSET)
    assert apps_touched(added) == {"model-tiny", APP_NAME}
    assert "+ add app model-tiny" in added.render_text()

    removed = diff_serve_configs(with_tiny, base)
    (remove,) = [c for c in removed.changes if c.effect == "remove"]
    assert (remove.app, remove.after) == ("model-tiny", UNSET)
    assert "- remove app model-tiny" in removed.render_text()
    assert ("model-tiny", None) not in removed.restarts()
    data = json.loads(json.dumps(removed.as_dict()))  # what `slmfleet diff --json` prints
    assert data["apps"]["remove"] == ["model-tiny"] and data["apps"]["restart"] == []
    (entry,) = [c for c in data["changes"] if c["effect"] == "remove"]
    assert entry["after"] is None and entry["app"] == "model-tiny"


def test_runtime_state_is_shown_as_kept(base):
    runtime = {"adapter:intent-v2": "LoRA on smol", "promotion:extract": ""}
    diff = diff_serve_configs(base, render(FLEET), runtime=runtime)
    assert diff.is_empty()
    assert [(c.field, c.effect) for c in diff.changes] == [("adapter:intent-v2", "keep"), ("promotion:extract", "keep")]
    text = diff.render_text()
    assert "= keep  adapter:intent-v2: LoRA on smol  (runtime state, kept by apply)" in text
    assert "= keep  promotion:extract  (runtime state, kept by apply)" in text


def test_server_port_is_ignored_by_a_running_serve(base):
    desired = render(edited(lambda d: d["server"].update(port=8001)))
    diff = diff_serve_configs(base, desired)
    (port,) = [c for c in diff.changes if c.app == ""]
    assert (port.field, port.effect, port.before, port.after) == ("http_options.port", "ignored", 8000, 8001)
    assert not diff.is_empty()


# ---------------------------------------------------------------------------------------------------------------
# Config shapes: leaf paths, Serve's own report, imperative apps


def model_app(**deployment: Any) -> dict[str, Any]:
    entry = {"name": SMOL, "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}, **deployment}
    return {"name": SMOL, "import_path": "deployments.app:model_app", "args": {"model": "smol"}, "deployments": [entry]}


def config(*apps: dict[str, Any]) -> dict[str, Any]:
    return {"applications": list(apps)}


def test_options_only_change_is_live_without_restart():
    before = config(model_app(max_ongoing_requests=16, health_check_period_s=5))
    after = config(
        model_app(
            autoscaling_config={"min_replicas": 0, "max_replicas": 3},
            max_ongoing_requests=8,
            health_check_period_s=10,
            user_config={"x": 1},
        )
    )
    diff = diff_serve_configs(before, after)
    assert diff.restarts() == set()
    assert {c.effect for c in diff.changes} == {"live"}
    assert [c.field for c in diff.changes] == [
        "autoscaling_config.min_replicas",
        "autoscaling_config.max_replicas",
        "max_ongoing_requests",
        "health_check_period_s",
        "user_config.x",
    ]


def test_nested_differences_are_reported_at_leaf_paths_with_list_indexes():
    bundles = [{"CPU": 1, "GPU": 1}, {"GPU": 1}]
    before = config(model_app(placement_group_bundles=bundles))
    after = config(model_app(placement_group_bundles=[{"CPU": 1, "GPU": 1}, {"GPU": 1}, {"GPU": 1}]))
    (change,) = diff_serve_configs(before, after).changes
    assert (change.field, change.before, change.after, change.effect) == (
        "placement_group_bundles[2].GPU",
        UNSET,
        1,
        "restart",
    )
    assert list(leaf_diff({"a": {"b": [1, {"c": 2}]}}, {"a": {"b": [1, {"c": 3}]}}, "x")) == [("x.a.b[1].c", 2, 3)]


def test_actor_options_restart_the_deployment_and_app_scope_rules_the_app():
    before = config(model_app(ray_actor_options={"num_cpus": 1}))
    after = config(
        model_app(ray_actor_options={"num_cpus": 2}, request_router_config={"request_routing_stats_period_s": 5})
    )
    diff = diff_serve_configs(before, after)
    assert diff.restarts() == {(SMOL, SMOL), (SMOL, None)}
    router_cfg = next(c for c in diff.changes if "request_router_config" in c.field)
    assert router_cfg.field == f"deployments[{SMOL}].request_router_config.request_routing_stats_period_s"


def test_an_entry_dropped_from_deployments_hands_its_options_back_to_the_code():
    before = config(model_app(max_queued_requests=32))
    after = config({**model_app(), "deployments": []})
    diff = diff_serve_configs(before, after)
    assert {(c.field, c.after) for c in diff.changes} == {
        ("autoscaling_config.min_replicas", UNSET),
        ("autoscaling_config.max_replicas", UNSET),
        ("max_queued_requests", UNSET),
    }
    assert diff.restarts() == set()


def test_serve_reported_applications_are_read_like_rendered_ones(base):
    """What ``GET /api/serve/applications/`` answers: each app's ``deployed_app_config`` as Serve parsed and dumped
    it (``exclude_unset``), and the instance's http_options with every default filled in."""
    schema = pytest.importorskip("ray.serve.schema")
    parsed = schema.ServeDeploySchema.model_validate(base)
    reported = {
        "proxy_location": "EveryNode",
        "http_options": parsed.http_options.model_dump(),
        "applications": {
            a.name: {"deployed_app_config": a.model_dump(exclude_unset=True), "status": "RUNNING"}
            for a in parsed.applications
        },
    }
    assert diff_serve_configs(reported, render(FLEET)).is_empty()
    assert diff_serve_configs({"applications": reported["applications"]}, render(FLEET)).is_empty()


def test_apps_deployed_by_serve_run_are_rebuilt_and_never_deleted_by_apply(base):
    reported = {"applications": {a["name"]: {"deployed_app_config": None} for a in base["applications"]}}
    reported["applications"]["model-old"] = {"deployed_app_config": None}
    diff = diff_serve_configs(reported, base)
    assert diff.restarts() == {(a["name"], None) for a in base["applications"]}
    (old,) = [c for c in diff.changes if c.app == "model-old"]
    assert old.effect == "ignored"
    assert "serve.delete" in old.why


def test_render_text_groups_by_app_and_deployment():
    before = config(model_app())
    after = config({**model_app(autoscaling_config={"min_replicas": 1, "max_replicas": 2}), "args": {"model": "x"}})
    text = diff_serve_configs(before, after).render_text()
    assert text.splitlines()[:4] == [
        f"app {SMOL}",
        '    ! restart  args.model: "smol" -> "x"  (the app\'s args changed: Serve rebuilds its deployments, '
        "engines restart)",
        f"    deployment {SMOL}",
        "        ~ live  autoscaling_config.max_replicas: 1 -> 2  (autoscaling bounds: the controller's target; "
        "replicas only re-read metrics_interval_s/look_back_period_s)",
    ]
    assert text.splitlines()[-1].startswith(
        "Plan: 0 app(s) to add, 0 to remove, 1 app(s) restart replicas (model-smol)"
    )


def test_long_values_are_cut_on_one_line():
    change = Change("a", None, "args.text", "x" * 200, "y\nz", "restart", "why")
    line = FleetDiff((change,)).render_text().splitlines()[1]
    assert "…" in line
    assert '"y\\nz"' in line


# ---------------------------------------------------------------------------------------------------------------
# The rule table against Ray Serve's own code


def test_rule_lookup_takes_the_longest_prefix():
    assert rule_for("autoscaling_config.max_replicas", DEPLOYMENT_OPTION_RULES).effect == "live"
    assert rule_for("autoscaling_config.policy.policy_function", DEPLOYMENT_OPTION_RULES).effect == "restart"
    assert rule_for("placement_group_bundles[0].GPU", DEPLOYMENT_OPTION_RULES).effect == "restart"
    assert rule_for("something_new", DEPLOYMENT_OPTION_RULES).effect == "restart"


def test_every_serve_schema_field_has_a_rule():
    schema = pytest.importorskip("ray.serve.schema")
    assert set(schema.DeploymentSchema.model_fields) - {"name"} == set(DEPLOYMENT_OPTION_RULES) - {
        "autoscaling_config.policy"
    }
    assert set(schema.ServeApplicationSchema.model_fields) - {"name", "deployments"} == set(APPLICATION_OPTION_RULES)
    assert set(schema.ServeDeploySchema.model_fields) - {"applications"} == set(SERVE_OPTION_RULES)


def test_rules_agree_with_deployment_config_update_types():
    """Serve's own update type per option: LightWeight / NeedsReconfigure / NeedsActorReconfigure never restart a
    replica, HeavyWeight does; app-scope rules are those the app's code version overrides."""
    config_module = pytest.importorskip("ray.serve._private.config")
    for name, field in config_module.DeploymentConfig.model_fields.items():
        update_type = (field.json_schema_extra or {}).get("update_type")
        if name not in DEPLOYMENT_OPTION_RULES or update_type is None:
            continue
        rule = DEPLOYMENT_OPTION_RULES[name]
        expected = "restart" if update_type == "HeavyWeight" or rule.scope == "app" else "live"
        assert rule.effect == expected, (name, update_type)


POLICY = "ray.serve.autoscaling_policy:replica_queue_length_autoscaling_policy"  # importable, not the default
LIVE_SAMPLES = {
    "num_replicas": (1, 2),
    "autoscaling_config": ({"min_replicas": 1, "max_replicas": 1}, {"min_replicas": 0, "max_replicas": 4}),
    "max_ongoing_requests": (16, 8),
    "max_queued_requests": (32, 4),
    "user_config": ({"a": 1}, {"a": 2}),
    "graceful_shutdown_timeout_s": (20.0, 5.0),
    "graceful_shutdown_wait_loop_s": (2.0, 1.0),
    "health_check_period_s": (5.0, 10.0),
    "health_check_timeout_s": (30.0, 60.0),
    "logging_config": ({"log_level": "INFO"}, {"log_level": "DEBUG"}),
    "rolling_update_percentage": (0.2, 0.5),
    "max_surge_percent": (0, 50),
}
RESTART_SAMPLES = {
    "ray_actor_options": ({"num_cpus": 1}, {"num_cpus": 2}),
    "placement_group_bundles": ([{"GPU": 1}], [{"GPU": 1}, {"GPU": 1}]),
    "placement_group_strategy": ("PACK", "STRICT_PACK"),
    "placement_group_bundle_label_selector": ([{"zone": "a"}], [{"zone": "b"}]),
    "max_replicas_per_node": (1, 2),
}


def _version(option: str, value: Any):
    version_module = pytest.importorskip("ray.serve._private.version")
    config_module = pytest.importorskip("ray.serve._private.config")
    replica = {option: value} if option in RESTART_SAMPLES and option != "ray_actor_options" else {}
    actor = value if option == "ray_actor_options" else {}
    deployment = {} if option in RESTART_SAMPLES else {option: value}
    return version_module.DeploymentVersion("code", config_module.DeploymentConfig(**deployment), actor, **replica)


@pytest.mark.parametrize("option", sorted(LIVE_SAMPLES))
def test_live_rules_never_restart_a_replica_in_ray(option):
    before, after = LIVE_SAMPLES[option]
    assert DEPLOYMENT_OPTION_RULES[option].effect == "live"
    assert not _version(option, before).requires_actor_restart(_version(option, after))


@pytest.mark.parametrize("option", sorted(RESTART_SAMPLES))
def test_restart_rules_restart_the_replicas_in_ray(option):
    before, after = RESTART_SAMPLES[option]
    assert DEPLOYMENT_OPTION_RULES[option].effect == "restart"
    assert _version(option, before).requires_actor_restart(_version(option, after))


APP_SAMPLES = {
    "args": ({"a": 1}, {"a": 2}),
    "import_path": ("a:b", "a:c"),
    "runtime_env": ({}, {"env_vars": {"X": "1"}}),
    "autoscaling_policy": (None, {"policy_function": "m:f"}),
    "route_prefix": ("/", "/v2"),
    "logging_config": ({"log_level": "INFO"}, {"log_level": "DEBUG"}),
    "external_scaler_enabled": (False, True),
}


@pytest.mark.parametrize("option", sorted(APP_SAMPLES))
def test_app_rules_agree_with_the_app_code_version(option):
    """An app option restarts replicas exactly when it changes Serve's code version for the app."""
    schema = pytest.importorskip("ray.serve.schema")
    deploy_utils = pytest.importorskip("ray.serve._private.deploy_utils")
    before, after = APP_SAMPLES[option]

    def code_version(value: Any) -> str:
        fields = {"name": "x", "import_path": "a:b", option: value}
        return deploy_utils.get_app_code_version(schema.ServeApplicationSchema(**fields))

    rebuilds = code_version(before) != code_version(after)
    assert APPLICATION_OPTION_RULES[option].effect == ("restart" if rebuilds else "live")


@pytest.mark.parametrize("option", ["request_router_config", "autoscaling_config.policy"])
def test_deployment_options_in_the_app_code_version_rebuild_the_app(option):
    schema = pytest.importorskip("ray.serve.schema")
    deploy_utils = pytest.importorskip("ray.serve._private.deploy_utils")
    values = {
        "request_router_config": {"request_routing_stats_period_s": 5},
        "autoscaling_config.policy": {"policy": {"policy_function": POLICY}},
    }
    key = option.split(".")[0]

    def code_version(entry: dict[str, Any]) -> str:
        app_config = {"name": "x", "import_path": "a:b", "deployments": [{"name": "d", **entry}]}
        return deploy_utils.get_app_code_version(schema.ServeApplicationSchema(**app_config))

    assert code_version({}) != code_version({key: values[option]})
    assert DEPLOYMENT_OPTION_RULES[option].scope == "app"


def test_policy_kwargs_rebuild_the_app_in_ray_and_in_the_diff():
    """A per-model objective passed as ``policy_kwargs`` is part of the app's code version: editing it rebuilds the
    model's app (its engines restart), although the rest of ``autoscaling_config`` is live."""
    schema = pytest.importorskip("ray.serve.schema")
    deploy_utils = pytest.importorskip("ray.serve._private.deploy_utils")

    def scaled(kwargs: dict[str, Any]) -> dict[str, Any]:
        policy = {"policy_function": POLICY, "policy_kwargs": kwargs}
        return model_app(autoscaling_config={"min_replicas": 1, "max_replicas": 1, "policy": policy})

    before, after = scaled({"ttft_s": 1.0}), scaled({"ttft_s": 0.5})
    versions = {deploy_utils.get_app_code_version(schema.ServeApplicationSchema(**a)) for a in (before, after)}
    assert len(versions) == 2
    (change,) = diff_serve_configs(config(before), config(after)).changes
    assert change.field == f"deployments[{SMOL}].autoscaling_config.policy.policy_kwargs.ttft_s"
    assert (change.deployment, change.effect) == (None, "restart")
