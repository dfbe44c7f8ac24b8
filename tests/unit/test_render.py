"""Rendered deploy artifacts: drift against the committed files, and validation by the schemas that consume them.

- the Serve config by Ray Serve's own ``ServeDeploySchema``;
- the RayService and its RayCluster by KubeRay's CRD openAPIV3Schema (from ../shared/kuberay-crds), and by the
  KubeRay autoscaler's own reading of the worker groups;
- Service, NetworkPolicy and pod templates (Secret references) by Kubernetes' schemas (kubernetes-validate);
- ray-cluster.yaml by the cluster launcher's JSON schema shipped inside the ray package;
- ``kubectl kustomize k8s/`` when kubectl is installed.
"""

from __future__ import annotations

import copy
import json
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from cluster import render
from cluster.cli import main
from cluster.cost import replica_hourly_prices
from cluster.deploy_options import deployment_options, engine_overrides, node_resources, pool_resource
from cluster.placement import plan_from_store
from cluster.render import rayservice as rs
from cluster.render.serve_config import ENGINE_FIELDS
from cluster.spec import ModelSpec, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / ".." / "shared" / "kuberay-crds"
PRODUCTION = "examples/production.yaml"
COMMITTED = {"k8s": REPO / "k8s", "ray-cluster": REPO / "ray-cluster.yaml"}
K8S_VERSION = "1.30"


@pytest.fixture(scope="module")
def production():
    spec = load_spec(REPO / PRODUCTION)
    return spec, plan_from_store(spec)


@pytest.fixture(scope="module")
def rayservice_doc(production) -> dict[str, Any]:
    return render.build_rayservice(*production)


def crd_schema(name: str) -> dict[str, Any]:
    path = CRDS / name
    if not path.is_file():
        pytest.skip(f"KubeRay CRD {name} not found at {CRDS.resolve()} (the shared CRD folder is absent here)")
    crd = yaml.safe_load(path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def k8s_validate(doc: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


# ---------------------------------------------------------------------------------------------------------------
# Drift: the committed files are what `render` gives now


@pytest.mark.parametrize(("kind", "output"), [("k8s", "k8s"), ("ray-cluster", "ray-cluster.yaml")])
def test_committed_artifacts_match_a_fresh_render(kind: str, output: str, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    rendered = render.render_files(kind, PRODUCTION, output)
    for path, text in rendered.items():
        committed = REPO / path
        fix = f"re-render with: slmfleet render {kind} {PRODUCTION} -o {output}"
        assert committed.is_file(), f"{path} is missing; {fix}"
        assert committed.read_text() == text, f"{path} drifted from {PRODUCTION}; {fix}"
    if kind == "k8s":
        assert {p.name for p in (REPO / "k8s").iterdir()} == {p.name for p in rendered}, "stray files in k8s/"


def test_every_generated_file_says_how_it_was_generated(monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    for kind, output in (("k8s", "k8s"), ("ray-cluster", "ray-cluster.yaml"), ("serve", "serve.yaml")):
        for text in render.render_files(kind, PRODUCTION, output).values():
            assert text.startswith(f"# GENERATED FILE, do not edit by hand. Source: {PRODUCTION}\n")
            assert f"slmfleet render {kind} {PRODUCTION} -o {output}" in text.splitlines()[1]


def test_rendering_is_deterministic(production) -> None:
    spec, plan = production
    first = render.k8s_files(spec, plan, PRODUCTION, "cmd")
    again = render.k8s_files(load_spec(REPO / PRODUCTION), plan_from_store(spec), PRODUCTION, "cmd")
    assert first == again
    assert "&id" not in first["rayservice.yaml"], "YAML anchors make diffs unreadable"


# ---------------------------------------------------------------------------------------------------------------
# Serve config


def serve_apps(spec, plan) -> dict[str, dict[str, Any]]:
    return {app["name"]: app for app in render.build_serve_config(spec, plan)["applications"]}


def test_serve_config_parses_with_ray_serves_own_schema(production) -> None:
    from ray.serve.schema import ServeDeploySchema

    spec, plan = production
    config = ServeDeploySchema.model_validate(yaml.safe_load(render.dump_yaml(render.build_serve_config(spec, plan))))
    assert (config.http_options.host, config.http_options.port) == ("0.0.0.0", 8000)
    apps = {app.name: app for app in config.applications}
    assert list(apps) == [*(f"model-{m}" for m in spec.models), "slmfleet"]
    router = apps.pop("slmfleet")
    assert (router.import_path, router.route_prefix) == ("deployments.app:router_app", "/")
    assert [d.name for d in router.deployments] == ["router"]
    for name, app in apps.items():  # a model's app is reachable only through the router, never over HTTP
        assert (app.import_path, app.route_prefix) == ("deployments.app:model_app", None)
        assert [d.name for d in app.deployments] == [name]


def test_router_gets_the_spec_as_its_user_config_and_it_round_trips(production) -> None:
    """The spec lives in the router deployment's user_config (applied live by reconfigure), not in its args."""
    spec, plan = production
    router = serve_apps(spec, plan)["slmfleet"]
    assert router["args"] == {}
    (deployment,) = router["deployments"]
    config = deployment["user_config"]
    assert parse_spec(config["spec"]) == spec
    assert config["replica_per_hour"] == replica_hourly_prices(spec, plan) != {}


def test_model_apps_carry_only_their_engines_settings_and_the_plans_engine_arguments(production) -> None:
    spec, plan = production
    apps = serve_apps(spec, plan)
    for model in spec.models:
        args = apps[f"model-{model}"]["args"]
        assert args["model"] == model
        assert set(args["spec"]) <= set(ENGINE_FIELDS) and "source" in args["spec"]
        engine_view = ModelSpec.model_validate(args["spec"])
        for field in ENGINE_FIELDS:
            assert getattr(engine_view, field) == getattr(spec.models[model], field)
        assert args["engine"] == engine_overrides(plan, model)


def test_editing_a_models_price_bounds_autoscaling_or_policy_leaves_its_app_args_unchanged(production) -> None:
    """Those are deployment options or the router's config: Serve applies them without restarting the engine."""
    spec, plan = production
    raw = yaml.safe_load((REPO / PRODUCTION).read_text())
    name = "qwen2-5-0-5b"
    raw["models"][name].update(
        price_per_1k_tokens=0.5,
        max_queued_requests=7,
        autoscaling={"min_replicas": 1, "max_replicas": raw["models"][name]["autoscaling"]["max_replicas"]},
        escalation={"to": "llama-3-3-70b"},
    )
    edited = parse_spec(raw)
    before, after = serve_apps(spec, plan), serve_apps(edited, plan_from_store(edited))
    assert before[f"model-{name}"]["args"] == after[f"model-{name}"]["args"]
    assert before[f"model-{name}"]["deployments"] != after[f"model-{name}"]["deployments"]  # the queue bound


def test_editing_pipelines_and_specialists_leaves_every_model_app_unchanged(production) -> None:
    """Serve restarts an app's replicas when its args change: a pipeline edit must not restart the engines."""
    spec, plan = production
    raw = yaml.safe_load((REPO / PRODUCTION).read_text())
    name, specialist = next(iter(raw["specialists"].items()))
    specialist["instructions"] = "Answer in French. " + specialist.get("instructions", "")
    raw["pipelines"] = {"one-step": {"steps": {"only": {"specialist": name}}}}
    edited = parse_spec(raw)
    before, after = serve_apps(spec, plan), serve_apps(edited, plan_from_store(edited))
    assert before["slmfleet"] != after["slmfleet"]
    for model in spec.models:
        assert before[f"model-{model}"] == after[f"model-{model}"]


def test_serve_config_deployments_carry_the_plan_options(production) -> None:
    spec, plan = production
    deployments = {d["name"]: d for app in serve_apps(spec, plan).values() for d in app["deployments"]}
    for model in spec.models:
        expected = deployment_options(plan, spec, model)
        entry = deployments[f"model-{model}"]
        assert {k: entry[k] for k in expected} == expected
    llm = deployments["model-llama-3-3-70b"]
    assert llm["placement_group_strategy"] == "STRICT_PACK"
    assert len(llm["placement_group_bundles"]) == 4
    assert deployments["model-qwen2-5-0-5b"]["ray_actor_options"]["resources"] == {pool_resource("l4"): 1}
    assert deployments["router"]["max_ongoing_requests"] == spec.server.max_ongoing_requests
    # stopped replicas drain first: a model's for up to one call, the router's for up to one whole stream
    assert all(
        deployments[f"model-{m}"]["graceful_shutdown_timeout_s"] == spec.server.request_timeout_s for m in spec.models
    )
    assert deployments["router"]["graceful_shutdown_timeout_s"] == spec.server.stream_timeout_s


def test_app_builders_take_the_configs_args(production) -> None:
    from deployments.app import model_app, router_app

    spec, plan = production
    apps = serve_apps(spec, plan)
    router = router_app(apps["slmfleet"]["args"])._bound_deployment
    assert router.name == "router"
    assert router.init_args == ()  # the spec arrives as user_config, through reconfigure
    model = model_app(apps["model-qwen2-5-0-5b"]["args"])._bound_deployment
    assert model.name == "model-qwen2-5-0-5b"
    name, engine_view, overrides = model.init_args
    assert (name, overrides) == ("qwen2-5-0-5b", engine_overrides(plan, "qwen2-5-0-5b"))
    assert all(getattr(engine_view, f) == getattr(spec.models[name], f) for f in ENGINE_FIELDS)
    with pytest.raises(ValueError, match="takes no args"):
        router_app({"spec": {"models": {}}})


# ---------------------------------------------------------------------------------------------------------------
# RayService / RayCluster against KubeRay's CRDs


def test_rayservice_validates_against_the_kuberay_crd(rayservice_doc) -> None:
    jsonschema.validate(rayservice_doc, crd_schema("ray.io_rayservices.yaml"))


def test_embedded_raycluster_validates_against_the_kuberay_crd(rayservice_doc) -> None:
    cluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "slmfleet-cluster"},
        "spec": rayservice_doc["spec"]["rayClusterConfig"],
    }
    jsonschema.validate(cluster, crd_schema("ray.io_rayclusters.yaml"))


def pruned_fields(doc: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the API server would silently drop: keys a structural schema does not declare."""
    if isinstance(doc, list):
        return [f for i, item in enumerate(doc) for f in pruned_fields(item, schema.get("items", {}), f"{path}[{i}]")]
    if not isinstance(doc, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    props = schema.get("properties")
    if props is None:
        extra = schema.get("additionalProperties")
        sub = extra if isinstance(extra, dict) else {}
        return [f for key, value in doc.items() for f in pruned_fields(value, sub, f"{path}.{key}")]
    unknown = [f"{path}.{key}" for key in doc if key not in props]
    known = [f for key, value in doc.items() if key in props for f in pruned_fields(value, props[key], f"{path}.{key}")]
    return unknown + known


def test_no_rayservice_field_would_be_pruned_by_the_api_server(rayservice_doc) -> None:
    schema = crd_schema("ray.io_rayservices.yaml")
    assert pruned_fields(rayservice_doc, schema) == []
    typo = copy.deepcopy(rayservice_doc)
    typo["spec"]["rayClusterConfig"]["enableInTreeAutoscalling"] = True
    assert pruned_fields(typo, schema) == [".spec.rayClusterConfig.enableInTreeAutoscalling"]


def test_crd_validation_catches_a_broken_manifest(rayservice_doc) -> None:
    """The schema check has teeth: a non-string rayStartParams value is refused."""
    broken = copy.deepcopy(rayservice_doc)
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["rayStartParams"]["num-gpus"] = 4
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, crd_schema("ray.io_rayservices.yaml"))


def test_head_serves_no_models_and_pools_pin_their_nodes(production, rayservice_doc) -> None:
    spec, _ = production
    cluster = rayservice_doc["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["num-gpus"] == "0"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == set(spec.pools)
    for name, pool in spec.pools.items():
        group = groups[name]
        assert (group["minReplicas"], group["maxReplicas"]) == (pool.min_nodes, pool.max_nodes)
        assert group["rayStartParams"]["num-gpus"] == str(pool.gpus_per_node)
        pod = group["template"]["spec"]
        assert pod["nodeSelector"] == {rs.POOL_LABEL: name}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == str(pool.gpus_per_node)
        # The value is pasted into a shell line: after shell quoting it must be the pool's resources as JSON.
        (word,) = shlex.split(group["rayStartParams"]["resources"])
        assert json.loads(word) == node_resources(name)


def test_kuberay_autoscaler_reads_the_pool_resources(production, rayservice_doc) -> None:
    """Ray's KubeRay autoscaler derives node types from the groups; it must see GPUs and pool resources."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    spec, _ = production
    ray_cr = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "slmfleet", "namespace": "default"},
        "spec": rayservice_doc["spec"]["rayClusterConfig"],
    }
    node_types = _derive_autoscaling_config_from_ray_cr(ray_cr)["available_node_types"]
    assert node_types["headgroup"]["resources"]["CPU"] == 0
    assert node_types["headgroup"]["resources"].get("GPU", 0) == 0
    for name, pool in spec.pools.items():
        resources = node_types[name]["resources"]
        assert resources["GPU"] == pool.gpus_per_node
        assert resources[pool_resource(name)] == node_resources(name)[pool_resource(name)]
        assert (node_types[name]["min_workers"], node_types[name]["max_workers"]) == (pool.min_nodes, pool.max_nodes)


def test_serve_config_v2_is_the_rendered_serve_config(production, rayservice_doc) -> None:
    spec, plan = production
    assert yaml.safe_load(rayservice_doc["spec"]["serveConfigV2"]) == render.build_serve_config(spec, plan)


# ---------------------------------------------------------------------------------------------------------------
# Core objects against Kubernetes' schemas


def test_serve_service_is_a_valid_service_on_the_router_port(production, rayservice_doc) -> None:
    spec, _ = production
    service = rayservice_doc["spec"]["serveService"]
    k8s_validate(service)
    assert service["spec"]["ports"] == [
        {"name": "serve", "port": spec.server.port, "targetPort": spec.server.port, "protocol": "TCP"}
    ]
    assert "selector" not in service["spec"], "KubeRay sets the selector to the cluster that is ready"


def test_pod_templates_are_valid_and_read_api_keys_from_the_secret(production, rayservice_doc) -> None:
    spec, _ = production
    cluster = rayservice_doc["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        template = group["template"]
        k8s_validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template})
        assert template["metadata"]["labels"][rs.FLEET_LABEL] == "slmfleet"
        env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
        ref = env[spec.server.api_keys_env]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": rs.API_KEYS_SECRET, "key": rs.API_KEYS_SECRET_KEY, "optional": False}
        assert "value" not in env[spec.server.api_keys_env]


def test_network_policy_exposes_only_the_serve_port(production) -> None:
    spec, _ = production
    policy = render.network_policy(spec)
    k8s_validate(policy)
    ingress = policy["spec"]["ingress"]
    open_rules = [r for r in ingress if "from" not in r]
    assert open_rules == [{"ports": [{"protocol": "TCP", "port": spec.server.port}]}]
    fleet_only = {"podSelector": {"matchLabels": {rs.FLEET_LABEL: "slmfleet"}}}
    for rule in ingress:
        ports = {p["port"] for p in rule.get("ports", [])}
        if rule.get("from") == [fleet_only]:
            continue  # Ray's own traffic between the fleet's pods
        assert not (ports & {6379, 10001}), f"GCS or client port reachable from outside the fleet: {rule}"
        if 8265 in ports:
            assert rule["from"][0]["podSelector"]["matchLabels"] == rs.OPERATOR_POD_LABELS
    assert policy["spec"]["podSelector"] == fleet_only["podSelector"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]


def test_the_fleet_state_outlives_the_head_pod_on_a_claim_both_heads_of_an_upgrade_can_hold(
    rayservice_doc,
) -> None:
    """The state actor lives on the head and snapshots to the file every container names (the router replica that
    creates the actor passes its own value): the head mounts the claim there; ReadWriteMany, since during a
    NewCluster upgrade the old and the new head pod both hold it."""
    from cluster.render.common import STATE_PATH_ENV

    claim = render.state_volume()
    k8s_validate(claim)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    cluster = rayservice_doc["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    (volume,) = head["volumes"]
    assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"]}
    (mount,) = head["containers"][0]["volumeMounts"]
    assert mount["name"] == volume["name"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        (container,) = group["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env[STATE_PATH_ENV].startswith(mount["mountPath"] + "/"), group.get("groupName", "head")


def test_no_secret_value_is_ever_rendered(monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("SLMFLEET_API_KEYS", "sk-do-not-leak")
    texts = [
        *render.render_files("k8s", PRODUCTION, "k8s").values(),
        *render.render_files("ray-cluster", PRODUCTION, None).values(),
        *render.render_files("serve", PRODUCTION, None).values(),
    ]
    assert all("sk-do-not-leak" not in text for text in texts)
    assert all(doc.get("kind") != "Secret" for doc in yaml.safe_load_all(texts[0]) if doc)


def test_k8s_refuses_a_fleet_open_without_keys_or_on_loopback() -> None:
    spec = load_spec(REPO / "fleet.yaml")
    with pytest.raises(render.RenderError, match=r"0\.0\.0\.0"):
        render.k8s_files(spec, plan_from_store(spec), "fleet.yaml", "cmd")
    data = yaml.safe_load((REPO / PRODUCTION).read_text())
    data["server"].pop("api_keys_env")
    open_spec = parse_spec(data)
    with pytest.raises(render.RenderError, match="api_keys_env"):
        render.k8s_files(open_spec, plan_from_store(open_spec), PRODUCTION, "cmd")


def test_kustomize_builds_the_directory() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH")
    command = [kubectl, "kustomize", str(REPO / "k8s")]
    out = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(out.stdout) if doc)
    assert kinds == ["NetworkPolicy", "PersistentVolumeClaim", "RayService"]


# ---------------------------------------------------------------------------------------------------------------
# ray-cluster.yaml


def ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_ray_cluster_validates_against_rays_schema_and_launcher_checks(production) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "ray-cluster.yaml").read_text())
    jsonschema.validate(config, ray_schema())
    validate_config(config)  # the launcher's own extra checks (head type, sum of min_workers <= max_workers)
    validate_config(prepare_config(copy.deepcopy(config)))  # and after AWS defaults are filled in


def test_ray_cluster_node_types_follow_the_pools(production) -> None:
    spec, plan = production
    config = render.build_ray_cluster(spec, plan)
    assert config["provider"]["type"] == "aws"
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}
    for name, pool in spec.pools.items():
        node = config["available_node_types"][name]
        assert (node["min_workers"], node["max_workers"]) == (pool.min_nodes, pool.max_nodes)
        assert node["resources"]["GPU"] == pool.gpus_per_node
        assert node["resources"][pool_resource(name)] == node_resources(name)[pool_resource(name)]
    assert config["available_node_types"]["l4"]["node_config"]["InstanceType"] == "g6.12xlarge"
    assert config["available_node_types"]["h100"]["node_config"]["InstanceType"] == "p5.48xlarge"
    assert config["max_workers"] == sum(p.max_nodes for p in spec.pools.values())


def test_unknown_accelerator_is_a_render_error_naming_the_pool(capsys, tmp_path) -> None:
    data = yaml.safe_load((REPO / PRODUCTION).read_text())
    data["pools"]["l4"]["accelerator"] = "TPUv9"
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["render", "ray-cluster", str(path)]) == 2
    err = capsys.readouterr().err
    assert "pools.l4" in err
    assert "TPUv9" in err


# ---------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_writes_k8s_directory_and_serve_file(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(REPO)
    assert main(["render", "k8s", PRODUCTION, "-o", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(rs.FILES)
    assert main(["render", "serve", "fleet.yaml"]) == 0
    stdout = capsys.readouterr().out
    router = yaml.safe_load(stdout)["applications"][-1]
    assert router["deployments"][0]["user_config"]["spec"]["models"]["smol"]


def test_cli_bad_spec_exits_2(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {smol: {source: x, tier: giant}}\n")
    assert main(["render", "serve", str(bad)]) == 2
    assert "models.smol.tier" in capsys.readouterr().err


def test_cli_unplaceable_spec_exits_2(tmp_path, capsys) -> None:
    data = yaml.safe_load((REPO / PRODUCTION).read_text())
    data["pools"]["h100"]["max_nodes"] = 1
    data["pools"]["h100"]["min_nodes"] = 1
    data["models"]["qwen2-5-32b"]["autoscaling"] = {"min_replicas": 1, "max_replicas": 4}
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["render", "k8s", str(path), "-o", str(tmp_path / "k8s")]) == 2
    assert "qwen2-5-32b" in capsys.readouterr().err
    assert not (tmp_path / "k8s").exists()


# ---------------------------------------------------------------------------------------------------------------
# Serve's environment: the same settings wherever a fleet runs


def test_every_ray_container_and_node_and_local_run_gets_serves_settings(rayservice_doc, production) -> None:
    from cluster.render.common import SERVE_ENV
    from deployments.local_run import apply_serve_env

    cluster = rayservice_doc["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        (container,) = group["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert {name: env.get(name) for name in SERVE_ENV} == SERVE_ENV, group.get("groupName", "head")

    launcher = render.build_ray_cluster(*production)
    for command in (launcher["head_start_ray_commands"][1], launcher["worker_start_ray_commands"][1]):
        exports = command.split(";")[0]
        assert all(f"{name}={value}" in exports for name, value in SERVE_ENV.items()), command
        assert command.index("export") < command.index("slmfleet.env")  # the env file may override them

    environ = {"RAY_SERVE_USE_GRPC_BY_DEFAULT": "0"}  # a user's own choice wins
    apply_serve_env(environ)
    assert environ == {**SERVE_ENV, "RAY_SERVE_USE_GRPC_BY_DEFAULT": "0"}


def test_only_a_local_fleets_ray_is_loopback_only_and_its_drivers_join_in_the_same_mode(
    rayservice_doc, production
) -> None:
    from deployments.fleet_deploy import driver_environ
    from deployments.local_run import LOOPBACK_ONLY_ENV, apply_local_ray_env

    environ: dict[str, str] = {}
    apply_local_ray_env(environ)
    assert environ.items() >= LOOPBACK_ONLY_ENV.items()
    chosen = {name: "1" for name in LOOPBACK_ONLY_ENV}  # a user who wants other nodes to join says so
    apply_local_ray_env(chosen)
    assert all(chosen[name] == "1" for name in LOOPBACK_ONLY_ENV)

    cluster = rayservice_doc["spec"]["rayClusterConfig"]  # multi-node renders never carry it
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        (container,) = group["template"]["spec"]["containers"]
        assert not {e["name"] for e in container["env"]} & set(LOOPBACK_ONLY_ENV)
    launcher = render.build_ray_cluster(*production)
    assert not any(name in str(launcher) for name in LOOPBACK_ONLY_ENV)

    for address, loopback in [("127.0.0.1:6379", True), ("[::1]:6379", True), ("localhost:1", True),
                              ("10.0.0.5:6379", False), ("auto", False), ("ray://head:10001", False)]:  # fmt: skip
        environ = {}
        driver_environ(address, environ)
        assert environ["RAY_AUTH_MODE"] == "token"
        assert (environ.items() >= LOOPBACK_ONLY_ENV.items()) is loopback, address


def test_lora_capacity_is_an_engine_argument_and_the_probe_threshold_is_not(production) -> None:
    """Slots and rank size the engine (a change restarts it); the probe threshold is the router's alone."""
    spec, plan = production
    raw = yaml.safe_load((REPO / PRODUCTION).read_text())
    name = "qwen2-5-0-5b"
    args = serve_apps(spec, plan)[f"model-{name}"]["args"]["spec"]
    assert args["lora"] == {"max_loras": 8, "max_lora_rank": 16, "max_cpu_loras": 32}
    raw["models"][name]["lora"]["probe_min_divergence"] = 0.5
    edited = parse_spec(raw)
    assert serve_apps(edited, plan)[f"model-{name}"]["args"] == serve_apps(spec, plan)[f"model-{name}"]["args"]
    raw["models"][name]["lora"]["max_loras"] = 2
    resized = parse_spec(raw)
    assert serve_apps(resized, plan)[f"model-{name}"]["args"]["spec"]["lora"]["max_loras"] == 2


def test_an_upgrade_keeps_the_old_cluster_until_its_longest_request_could_end(production, rayservice_doc) -> None:
    """KubeRay deletes the old cluster of a NewCluster upgrade ``rayClusterDeletionDelaySeconds`` after the switch
    (60 s by default): the render keeps it past the longest stream or request the router allows."""
    spec, plan = production
    server = spec.server
    longest = max(server.request_timeout_s, server.stream_timeout_s)
    assert rayservice_doc["spec"]["rayClusterDeletionDelaySeconds"] >= longest + 30
    patient = spec.model_copy(update={"server": server.model_copy(update={"stream_timeout_s": 900.5})})
    assert render.build_rayservice(patient, plan)["spec"]["rayClusterDeletionDelaySeconds"] == 931
