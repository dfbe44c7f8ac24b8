"""The one auth gate: whether a fleet may be exposed, which keys exist, who each belongs to and what it may do.

Every launch path asks this module: ``slmfleet up`` before it starts anything, the router replica when its spec
arrives (so ``serve run`` of a rendered config and a KubeRay RayService refuse exactly as ``slmfleet up`` does),
and the KubeRay render (which never renders a Service without keys). A router bound beyond loopback with no keys
does not start, whichever way it is launched.

Keys come from the environment variable ``server.api_keys_env`` names, comma-separated. Each entry is
``<key>`` (identity ``key-<hash>``, scope ``serving``), ``<identity>=<key>`` (scope ``serving``), or
``<identity>:<scope>+<scope>=<key>`` with scopes from :data:`SCOPES`. Identities name a key in logs, quotas
and admin routes without revealing it. Every route needs a key with its scope, except ``/healthz``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from cluster.spec import FleetSpec, is_loopback
from cluster.spec_errors import SpecIssue

SCOPES = ("serving", "admin", "logs")
"""serving: the OpenAI and pipeline routes; admin: fleet changes (adapters, promotions); logs: the usage log."""
OPEN_PATHS = frozenset({"/healthz"})
ADMIN_PREFIX = "/admin/"
LOGS_PREFIX = "/v1/logs"
_ENTRY = re.compile(r"^(?:(?P<identity>[A-Za-z0-9_.-]+)(?::(?P<scopes>[a-z+]+))?=)?(?P<key>\S+)$")


class KeyFormatError(ValueError):
    """An entry of the keys variable that cannot be read; the message names the entry's position, not the key."""


@dataclass(frozen=True)
class ApiKey:
    identity: str
    scopes: frozenset[str]
    secret: str


@dataclass(frozen=True)
class AuthGate:
    """The keys a router accepts; no keys means open (only ever on loopback: see :func:`exposure_issues`)."""

    keys: tuple[ApiKey, ...] = ()

    @property
    def open(self) -> bool:
        return not self.keys

    def authenticate(self, authorization: str) -> ApiKey | None:
        """The key an ``Authorization: Bearer <key>`` header carries, or None (compared in constant time)."""
        token = authorization.removeprefix("Bearer ").strip() if authorization.startswith("Bearer ") else ""
        found = None
        for key in self.keys:
            if token and hmac.compare_digest(token.encode(), key.secret.encode()):
                found = key
        return found


def required_scope(path: str) -> str | None:
    """The scope a route needs (None: open to all)."""
    if path in OPEN_PATHS:
        return None
    if path.startswith(ADMIN_PREFIX):
        return "admin"
    if path.startswith(LOGS_PREFIX):
        return "logs"
    return "serving"


def parse_keys(raw: str) -> tuple[ApiKey, ...]:
    """Keys from the variable's text (see the module docstring); raises :class:`KeyFormatError`."""
    keys: list[ApiKey] = []
    for position, entry in enumerate((e.strip() for e in raw.split(",")), start=1):
        if not entry:
            continue
        match = _ENTRY.match(entry)
        if match is None:
            raise KeyFormatError(f"entry {position} is not <key>, <identity>=<key> or <identity>:<scopes>=<key>")
        scopes = frozenset((match.group("scopes") or "serving").split("+"))
        unknown = sorted(scopes - set(SCOPES))
        if unknown:
            raise KeyFormatError(f"entry {position} names unknown scopes {unknown}; scopes are {', '.join(SCOPES)}")
        secret = match.group("key")
        identity = match.group("identity") or f"key-{hashlib.sha256(secret.encode()).hexdigest()[:8]}"
        keys.append(ApiKey(identity, scopes, secret))
    identities = [k.identity for k in keys]
    if len(set(identities)) != len(identities):
        raise KeyFormatError("two entries share an identity; give each key its own name")
    return tuple(keys)


def exposure_issues(spec: FleetSpec, host: str, environ: Mapping[str, str]) -> list[SpecIssue]:
    """Why this fleet must not start as configured: a named but empty or unreadable key set, or a router bound
    beyond loopback without keys. Empty when it may start."""
    env = spec.server.api_keys_env
    if env and not environ.get(env, "").strip():
        fix = f"export {env}=<key1>,<key2> before starting, or remove server.api_keys_env"
        return [SpecIssue("server.api_keys_env", env, f"the environment variable {env} is unset or empty", fix)]
    if env:
        try:
            parse_keys(environ[env])
        except KeyFormatError as exc:
            fix = "write each entry as <key>, <identity>=<key> or <identity>:<scope>+<scope>=<key>"
            return [SpecIssue("server.api_keys_env", env, f"{env}: {exc}", fix)]
    if not env and not is_loopback(host):
        fix = "set server.api_keys_env to a variable holding keys, or use host 127.0.0.1"
        return [SpecIssue("server.host", host, "binding beyond loopback without API keys", fix)]
    return []


def gate_for(spec: FleetSpec, environ: Mapping[str, str], host: str | None = None) -> AuthGate:
    """The gate of a router serving ``spec`` on ``host`` (default the spec's); raises :class:`ExposureError`
    when :func:`exposure_issues` finds any, so the router refuses to start."""
    issues = exposure_issues(spec, host or spec.server.host, environ)
    if issues:
        raise ExposureError(issues)
    env = spec.server.api_keys_env
    return AuthGate(parse_keys(environ[env]) if env else ())


class ExposureError(RuntimeError):
    """The router must not start: it would be reachable without keys, or its keys cannot be read."""

    def __init__(self, issues: list[SpecIssue]) -> None:
        self.issues = issues
        super().__init__("; ".join(f"{i.path}: {i.problem} (fix: {i.fix})" for i in issues))
