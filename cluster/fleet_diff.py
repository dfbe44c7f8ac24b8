"""What applying a rendered Serve config to a running fleet would change, and whether replicas restart.

``diff_serve_configs(current, desired)`` compares two Serve configs as data (the one running, as rendered or as
Serve reports it, and ``cluster.render.serve_config.build_serve_config(spec, plan)``) and says, per application
and deployment and at leaf paths, what changes and with which effect:

- ``live``: Serve applies it to the running replicas (target state, ``reconfigure()``, long-poll broadcast);
- ``restart``: Serve replaces the replicas, and so their engines (a rolling update of the deployment, or a
  rebuild of the whole app when its code version changes);
- ``add`` / ``remove``: a whole application appears or goes;
- ``ignored``: a running Serve does not apply it (options read only when Serve starts);
- ``keep``: runtime fleet state that is not in the spec (registered adapters, promotions) and that ``apply``
  keeps, shown so the user sees it is not dropped.

The rules are data (:data:`DEPLOYMENT_OPTION_RULES`, :data:`APPLICATION_OPTION_RULES`,
:data:`SERVE_OPTION_RULES`), each with the Ray 2.60 source lines it rests on (paths under ``ray/``), so they can
be checked against a new Ray release; ``tests/unit/test_fleet_diff.py`` compares them with Serve's own
``DeploymentConfig`` update types. Pure Python: no Ray import.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

Effect = Literal["live", "restart", "add", "remove", "keep", "ignored"]
SERVE_SCOPE = ""  # Change.app of options that belong to the Serve instance, not to an application
_MARKERS = {"live": "~", "restart": "!", "add": "+", "remove": "-", "keep": "=", "ignored": "?"}
_SHOW_CHARS = 60


class _Unset:
    """A key absent on one side: Serve then uses the value in the app's code (or its default)."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "(unset)"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class Rule:
    """How Serve applies a change of one option: ``scope`` "app" means the whole app is rebuilt."""

    effect: Literal["live", "restart", "ignored"]
    why: str
    evidence: str
    scope: Literal["deployment", "app"] = "deployment"


def _live(why: str, evidence: str) -> Rule:
    return Rule("live", why, evidence)


def _rebuild(why: str, evidence: str) -> Rule:
    return Rule("restart", why, evidence, scope="app")


_CODE_VERSION = "serve/_private/deploy_utils.py:158-198 (get_app_code_version)"
_REBUILD = (
    f"{_CODE_VERSION}; serve/_private/application_state.py:693-694 (same version: options only), "
    "739-824 (else rebuild), 1801 (code version becomes each deployment's version); "
    "serve/_private/version.py:75 (new code version -> actor restart)"
)
_VERSION_RESTART = (
    "serve/_private/version.py:70-82 (requires_actor_restart); serve/_private/deployment_state.py:4134-4140"
)
_ACTOR_RECONFIGURE = "serve/_private/version.py:84-88,131-138; serve/_private/deployment_state.py:1280-1290,4141-4165"

# Options of one entry of an app's ``deployments`` list. Keys may be dotted sub-paths; the longest match wins.
DEPLOYMENT_OPTION_RULES: dict[str, Rule] = {
    "num_replicas": _live(
        "replica count: the controller's target only, running replicas stay",
        "serve/_private/config.py:177-178 (LightWeight); serve/_private/deployment_state.py:3711-3736",
    ),
    "autoscaling_config": _live(
        "autoscaling bounds: the controller's target; replicas only re-read metrics_interval_s/look_back_period_s",
        "serve/_private/config.py:217-218; serve/_private/version.py:251-258; deployment_state.py:3711-3729",
    ),
    "autoscaling_config.policy": _rebuild(
        "a custom autoscaling policy is part of the app's code version: Serve rebuilds the app",
        f"{_CODE_VERSION}: lines 173-177,190-192",
    ),
    "max_ongoing_requests": _live(
        "replica reconfigure() and a long-poll broadcast to the handles, no restart",
        f"serve/_private/config.py:180-183; serve/_private/version.py:90-98; {_ACTOR_RECONFIGURE}",
    ),
    "max_queued_requests": _live(
        "the handles' queue bound: target state only", "serve/_private/config.py:184-187 (LightWeight)"
    ),
    "backpressure_config": _live("replica reconfigure()", f"serve/_private/config.py:191-194; {_ACTOR_RECONFIGURE}"),
    "user_config": _live(
        "passed to the replica's reconfigure(), no restart", f"serve/_private/config.py:195-196; {_ACTOR_RECONFIGURE}"
    ),
    "graceful_shutdown_timeout_s": _live(
        "controller-side replica setting", "serve/_private/config.py:199-201 (NeedsReconfigure)"
    ),
    "graceful_shutdown_wait_loop_s": _live(
        "replica reconfigure()", f"serve/_private/config.py:203-205; {_ACTOR_RECONFIGURE}"
    ),
    "health_check_period_s": _live(
        "controller-side replica setting", "serve/_private/config.py:208-210 (NeedsReconfigure)"
    ),
    "health_check_timeout_s": _live(
        "controller-side replica setting", "serve/_private/config.py:212-214 (NeedsReconfigure)"
    ),
    "logging_config": _live("replica reconfigure()", f"serve/_private/config.py:239-241; {_ACTOR_RECONFIGURE}"),
    "rolling_update_percentage": _live("rollout pacing: target only", "serve/_private/config.py:258-262"),
    "max_surge_percent": _live("rollout pacing: target only", "serve/_private/config.py:265-269"),
    "request_router_config": _rebuild(
        "a request_router_config in the config is part of the app's code version: Serve rebuilds the app "
        "(its NeedsActorReconfigure type in DeploymentConfig never gets the chance)",
        f"{_CODE_VERSION}: lines 168-172,193; serve/_private/config.py:221-223",
    ),
    "deployment_actors": _rebuild(
        "deployment actors are part of the app's code version: Serve rebuilds the app",
        f"{_CODE_VERSION}: lines 178-182,194; serve/_private/config.py:253-255 (HeavyWeight)",
    ),
    "gang_scheduling_config": Rule(
        "restart",
        "gang scheduling changed: Serve replaces the replicas",
        f"serve/_private/config.py:248-250; {_VERSION_RESTART}",
    ),
    "ray_actor_options": Rule(
        "restart", "actor resources changed: Serve replaces the replicas (rolling)", f"{_VERSION_RESTART}, 102-103"
    ),
    "placement_group_bundles": Rule(
        "restart", "placement group changed: Serve replaces the replicas (rolling)", f"{_VERSION_RESTART}, 104-120"
    ),
    "placement_group_strategy": Rule(
        "restart", "placement group changed: Serve replaces the replicas (rolling)", f"{_VERSION_RESTART}, 104-120"
    ),
    "placement_group_bundle_label_selector": Rule(
        "restart", "placement group changed: Serve replaces the replicas (rolling)", f"{_VERSION_RESTART}, 104-120"
    ),
    "max_replicas_per_node": Rule(
        "restart", "replica spreading changed: Serve replaces the replicas (rolling)", f"{_VERSION_RESTART}, 79"
    ),
}

# Options of one application (``deployments`` is diffed per deployment with the rules above).
APPLICATION_OPTION_RULES: dict[str, Rule] = {
    "args": _rebuild("the app's args changed: Serve rebuilds its deployments, engines restart", _REBUILD),
    "import_path": _rebuild("the app's code changed: Serve rebuilds its deployments, engines restart", _REBUILD),
    "runtime_env": _rebuild("the app's runtime_env changed: Serve rebuilds its deployments", _REBUILD),
    "autoscaling_policy": _rebuild("the app's autoscaling policy is part of its code version", _REBUILD),
    "route_prefix": _live(
        "ingress replicas are reconfigured, not restarted",
        "serve/_private/version.py:127-138 (reconfigure hash), 70-82 (not a restart)",
    ),
    "logging_config": _live(
        "becomes each deployment's logging_config: replica reconfigure()",
        "serve/_private/application_state.py:1083-1089; serve/_private/config.py:239-241",
    ),
    "external_scaler_enabled": _live(
        "target state only, not in the code version", "serve/_private/application_state.py:720; " + _CODE_VERSION
    ),
    "host": Rule("ignored", "read only when Serve starts (deprecated per-app field)", "serve/schema.py:840-857"),
    "port": Rule("ignored", "read only when Serve starts (deprecated per-app field)", "serve/schema.py:840-857"),
}

_STARTUP_ONLY = "dashboard/modules/serve/serve_head.py:171-186,286-299 (a running Serve keeps its options, warns)"
# Top-level options of the Serve config (the Serve instance, not an app).
SERVE_OPTION_RULES: dict[str, Rule] = {
    "http_options": Rule("ignored", "read only when Serve starts: restart Serve to change it", _STARTUP_ONLY),
    "grpc_options": Rule("ignored", "read only when Serve starts: restart Serve to change it", _STARTUP_ONLY),
    "proxy_location": Rule("ignored", "read only when Serve starts: restart Serve to change it", _STARTUP_ONLY),
    "controller_options": Rule("ignored", "read only when Serve starts: restart Serve to change it", _STARTUP_ONLY),
    "logging_config": _live(
        "global logging config, pushed to running replicas",
        "dashboard/modules/serve/serve_head.py:188-190; serve/_private/controller.py:1281-1285",
    ),
    "tracing_config": Rule(
        "ignored",
        "taken by replicas and proxies started later; running ones keep theirs",
        "serve/_private/controller.py:1273-1279",
    ),
    "target_capacity": _live("scales every app's target, no restart", "serve/_private/controller.py:1263-1273"),
}

UNKNOWN_OPTION = Rule("restart", "not in the rule table: assumed to restart replicas", "none: check Ray")
_KEEP_WHY = "runtime state, kept by apply"
_IMPERATIVE = "serve.run (no deployed config)"


@dataclass(frozen=True)
class Change:
    """One leaf difference (or a whole app added/removed, or runtime state kept) and what applying it does."""

    app: str
    deployment: str | None
    field: str
    before: Any
    after: Any
    effect: Effect
    why: str


@dataclass(frozen=True)
class FleetDiff:
    """Every change between the running Serve config and the desired one."""

    changes: tuple[Change, ...]
    gaps: tuple[str, ...] = ()  # restarting apps left with no running replica while the new one starts

    def restarts(self) -> set[tuple[str, str | None]]:
        """(app, deployment) pairs whose replicas restart; deployment ``None``: the app is rebuilt, every
        deployment of it restarts."""
        return {(c.app, c.deployment) for c in self.changes if c.effect == "restart"}

    def as_dict(self) -> dict[str, Any]:
        """The diff as data (``slmfleet diff --json``): every change, and the apps each effect touches."""
        changes = [{**asdict(c), "before": _plain(c.before), "after": _plain(c.after)} for c in self.changes]
        touched = {effect: sorted({c.app for c in self.changes if c.effect == effect}) for effect in _MARKERS}
        return {"changes": changes, "apps": touched, "no_replica_while_restarting": list(self.gaps)}

    def is_empty(self) -> bool:
        """True when applying changes nothing (runtime state shown as kept does not count)."""
        return all(c.effect == "keep" for c in self.changes)

    def render_text(self) -> str:
        """A readable plan, grouped per app and deployment, like ``terraform plan``."""
        if not self.changes:
            return "No changes: the running fleet matches the spec."
        lines: list[str] = []
        for app, changes in _grouped(self.changes):
            lines.extend(_app_lines(app, changes))
        lines.extend(["", self._summary()])
        lines.extend(
            f"Caution: {app} has one running replica, which Serve stops before it starts the new one: for about "
            "a start-up it has none. Meanwhile a small model's calls that may escalate go to the LLM tier; every "
            "other call to it waits."
            for app in self.gaps
        )
        return "\n".join(lines)

    def _summary(self) -> str:
        counts = {effect: sum(c.effect == effect for c in self.changes) for effect in _MARKERS}
        apps = sorted({app or "serve" for app, _ in self.restarts()})
        restarting = f"{len(apps)} app(s) restart replicas" + (f" ({', '.join(apps)})" if apps else "")
        return (
            f"Plan: {counts['add']} app(s) to add, {counts['remove']} to remove, {restarting}, "
            f"{counts['live']} live change(s), {counts['ignored']} ignored, {counts['keep']} runtime entr(ies) kept."
        )


# ---------------------------------------------------------------------------------------------------------------
# Diff


def diff_serve_configs(
    current: Mapping[str, Any], desired: Mapping[str, Any], runtime: Mapping[str, Any] | None = None
) -> FleetDiff:
    """Changes from ``current`` to ``desired``, both Serve configs as data (``applications`` a list of app
    configs, or Serve's ``GET /api/serve/applications/`` answer: a mapping of name -> ``deployed_app_config``);
    ``runtime`` maps fleet state not in the spec (name -> description) to "keep" entries."""
    now, want = applications_of(current), applications_of(desired)
    changes: list[Change] = []
    for name, app in want.items():
        changes.extend(_app_changes(name, now.get(name, UNSET), app))
    changes.extend(_removed_app(name, app) for name, app in now.items() if name not in want)
    changes.extend(_serve_changes(current, desired))
    changes.extend(Change(SERVE_SCOPE, None, n, d, d, "keep", _KEEP_WHY) for n, d in (runtime or {}).items())
    restarting = {c.app for c in changes if c.effect == "restart" and c.app in now}
    return FleetDiff(tuple(changes), tuple(sorted(a for a in restarting if _running_replicas(current, a) == 1)))


def _running_replicas(current: Mapping[str, Any], app: str) -> int | None:
    """RUNNING replicas of ``app``'s deployments together, when ``current`` is Serve's details (None otherwise).
    Serve's rolling update stops max(1, 20%) of a deployment's replicas at a time before starting their
    replacements (``deployment_state.py``, ``_rollout_size``): with one, nothing serves in between."""
    apps = current.get("applications")
    details = apps.get(app) if isinstance(apps, Mapping) else None
    if not isinstance(details, Mapping) or not isinstance(details.get("deployments"), Mapping):
        return None
    replicas = [r for d in details["deployments"].values() for r in d.get("replicas") or []]
    return sum(r.get("state") == "RUNNING" for r in replicas)


def applications_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """Name -> app config; an app Serve reports without a deployed config (deployed by ``serve.run``, as
    ``slmfleet up`` does) maps to ``None``."""
    apps = config.get("applications") or []
    if isinstance(apps, Mapping):
        return {name: details.get("deployed_app_config") for name, details in apps.items()}
    return {app["name"]: app for app in apps}


def _app_changes(name: str, before: Any, after: Mapping[str, Any]) -> Iterator[Change]:
    if before is UNSET:
        yield Change(name, None, "app", UNSET, after.get("import_path"), "add", "new app: Serve builds it")
        return
    if before is None:
        why = "deployed by serve.run: no code version to match, so Serve rebuilds the app on a declarative apply"
        yield Change(name, None, "app", _IMPERATIVE, after.get("import_path"), "restart", why)
        return
    for key in _keys(before, after, skip={"name", "deployments"}):
        yield from _changes(
            name, None, key, before.get(key, UNSET), after.get(key, UNSET), rules=APPLICATION_OPTION_RULES
        )
    yield from _deployments_changes(name, before.get("deployments") or [], after.get("deployments") or [])


def _removed_app(name: str, before: Any) -> Change:
    if before is None:
        why = "deployed by serve.run: a declarative apply deletes only apps it deployed; use serve.delete"
        return Change(name, None, "app", _IMPERATIVE, UNSET, "ignored", why)
    return Change(name, None, "app", before.get("import_path"), UNSET, "remove", "not in the spec: Serve deletes it")


def _deployments_changes(app: str, before: list[Any], after: list[Any]) -> Iterator[Change]:
    """Per deployment entry, by name; an entry gone from the config gives its options back to the app's code."""
    old = {entry["name"]: entry for entry in before}
    new = {entry["name"]: entry for entry in after}
    for name in [*new, *(n for n in old if n not in new)]:
        entry_old, entry_new = old.get(name, {}), new.get(name, {})
        for key in _keys(entry_old, entry_new, skip={"name"}):
            old_value, new_value = entry_old.get(key, UNSET), entry_new.get(key, UNSET)
            yield from _changes(app, name, key, old_value, new_value, rules=DEPLOYMENT_OPTION_RULES)


def _serve_changes(current: Mapping[str, Any], desired: Mapping[str, Any]) -> Iterator[Change]:
    """Serve-instance options both sides give, at the leaves the desired config sets (Serve reports them with
    every default filled in)."""
    for key in SERVE_OPTION_RULES:
        if key in desired and key in current:
            for path, old, new in leaf_diff(current.get(key, UNSET), desired[key], key):
                if new is not UNSET:
                    yield _change(SERVE_SCOPE, None, path, old, new, rules=SERVE_OPTION_RULES)


def _changes(
    app: str, deployment: str | None, key: str, old: Any, new: Any, *, rules: Mapping[str, Rule]
) -> Iterator[Change]:
    for path, before, after in leaf_diff(old, new, key):
        yield _change(app, deployment, path, before, after, rules=rules)


def _change(
    app: str, deployment: str | None, path: str, before: Any, after: Any, *, rules: Mapping[str, Rule]
) -> Change:
    """A leaf change under its rule; an app-scope rule met inside a deployment is reported on the app."""
    rule = rule_for(path, rules)
    if rule.scope == "app" and deployment is not None:
        path, deployment = f"deployments[{deployment}].{path}", None
    return Change(app, deployment, path, before, after, rule.effect, rule.why)


def rule_for(path: str, rules: Mapping[str, Rule]) -> Rule:
    """The rule of the longest dotted prefix of ``path`` (list indexes ignored) found in ``rules``."""
    parts = re.sub(r"\[[^\]]*\]", "", path).split(".")
    for end in range(len(parts), 0, -1):
        rule = rules.get(".".join(parts[:end]))
        if rule is not None:
            return rule
    return UNKNOWN_OPTION


def leaf_diff(before: Any, after: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    """(dotted path, before, after) for every leaf that differs; dicts by key (a dict on one side only is
    spelled out, so a rule on a sub-key such as ``autoscaling_config.policy`` still applies), lists by index."""
    if before == after:
        return
    maps = _pair(before, after, Mapping, {})
    if maps and any(maps):
        for key in _keys(*maps):
            yield from leaf_diff(maps[0].get(key, UNSET), maps[1].get(key, UNSET), f"{path}.{key}")
    elif isinstance(before, list) and isinstance(after, list):
        for index in range(max(len(before), len(after))):
            old = before[index] if index < len(before) else UNSET
            new = after[index] if index < len(after) else UNSET
            yield from leaf_diff(old, new, f"{path}[{index}]")
    else:
        yield path, before, after


def _pair(before: Any, after: Any, kind: type, empty: Any) -> tuple[Any, Any] | None:
    """Both sides as ``kind``, an unset side as ``empty``; ``None`` when a side is something else."""
    sides = tuple(empty if value is UNSET else value for value in (before, after))
    return sides if all(isinstance(value, kind) for value in sides) else None


def _keys(before: Mapping[str, Any], after: Mapping[str, Any], skip: Iterable[str] = ()) -> list[str]:
    """Keys of both sides, the desired order first; ``skip`` left out."""
    left_out = set(skip)
    ordered = [*after, *(key for key in before if key not in after)]
    return [key for key in ordered if key not in left_out]


# ---------------------------------------------------------------------------------------------------------------
# Text


def _grouped(changes: tuple[Change, ...]) -> list[tuple[str, list[Change]]]:
    """Changes per app in order of first appearance; Serve-instance changes, then kept runtime state, last."""
    groups: dict[str, list[Change]] = {}
    for change in changes:
        key = "\0runtime" if change.effect == "keep" else change.app or "\0serve"
        groups.setdefault(key, []).append(change)
    return sorted(groups.items(), key=lambda item: item[0].startswith("\0"))


def _app_lines(group: str, changes: list[Change]) -> list[str]:
    if len(changes) == 1 and changes[0].field == "app" and changes[0].effect in {"add", "remove", "ignored"}:
        change = changes[0]
        return [f"{_MARKERS[change.effect]} {change.effect} app {change.app}  ({change.why})"]
    title = {"\0serve": "serve instance", "\0runtime": "runtime state"}.get(group, f"app {group}")
    lines = [title]
    lines.extend(f"    {_line(c)}" for c in changes if c.deployment is None)
    deployments = dict.fromkeys(c.deployment for c in changes if c.deployment is not None)
    for deployment in deployments:
        lines.append(f"    deployment {deployment}")
        lines.extend(f"        {_line(c)}" for c in changes if c.deployment == deployment)
    return lines


def _line(change: Change) -> str:
    head = f"{_MARKERS[change.effect]} {change.effect}  {change.field}"
    if change.effect == "keep":
        described = f": {change.after}" if change.after not in (None, "", UNSET) else ""
        return f"{head}{described}  ({change.why})"
    return f"{head}: {show(change.before)} -> {show(change.after)}  ({change.why})"


def _plain(value: Any) -> Any:
    """JSON-ready: a side that does not exist is null."""
    return None if value is UNSET else value


def show(value: Any) -> str:
    """A value on one line, cut to a readable length."""
    text = repr(value) if value is UNSET else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= _SHOW_CHARS else text[: _SHOW_CHARS - 1] + "…"
