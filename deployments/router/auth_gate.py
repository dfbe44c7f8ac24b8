"""The one auth gate: whether a fleet may be exposed, which keys exist, who each belongs to and what it may do.

Every launch path asks this module: ``slmfleet up`` before it starts anything, the router replica when its spec
arrives (so ``serve run`` of a rendered config and a KubeRay RayService refuse exactly as ``slmfleet up`` does),
and the KubeRay render (which never renders a Service without keys). A router bound beyond loopback with no keys
does not start, whichever way it is launched.

Keys come from the environment variable ``server.api_keys_env`` names, comma-separated. Each entry is
``<key>`` (identity ``key-<hash>``, scope ``serving``), ``<identity>=<key>`` (scope ``serving``), or
``<identity>:<scope>+<scope>=<key>`` with scopes from :data:`SCOPES`. Identities name a key in logs, quotas
and admin routes without revealing it. Every route needs a key with its scope, except ``/healthz``.

Per identity, ``server.keys`` sets a request rate (``requests_per_min``, counted across every router replica in the
shared store: beyond it 429 with ``Retry-After``), a cap on requests in flight (``max_concurrent_requests``, held as
expiring leases in the shared store, so a router replica that dies frees its slots when they expire) and a priority
class, which a request may lower with the ``X-Slmfleet-Priority`` header but never raise. The class travels with
every model call the request makes (:data:`CALLER_PRIORITY`), and a model replica under pressure refuses low before
normal before high.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

from cluster.spec import FleetSpec, KeyPolicySpec, is_loopback
from cluster.spec_errors import SpecIssue
from deployments.fleet_state_core import Consumed, Leased

log = logging.getLogger(__name__)

SCOPES = ("serving", "admin", "logs")
"""serving: the OpenAI and pipeline routes; admin: fleet changes (adapters, promotions); logs: the usage log."""
OPEN_PATHS = frozenset({"/healthz"})
ADMIN_PREFIX = "/admin/"
LOGS_PREFIX = "/v1/logs"
PRIORITY_HEADER = "X-Slmfleet-Priority"
PRIORITIES = ("high", "normal", "low")
QUOTA_NAMESPACE, QUOTA_WINDOW_S = "key_quota", 60.0
CONCURRENCY_NAMESPACE = "key_concurrency"
CONCURRENCY_RETRY_AFTER_S = 1
"""A slot frees when one of the key's requests ends: no drain time to compute, so the shortest honest hint."""
CALLER_PRIORITY: ContextVar[str] = ContextVar("slmfleet_priority", default="normal")
"""The priority class of the request being served; asyncio copies it into the tasks the request starts."""
Consume = Callable[[str, str, float, float, float], Awaitable[Consumed]]
Acquire = Callable[[str, str, int, float], Awaitable[Leased]]
Release = Callable[[str, str, str], Awaitable[bool]]
Leave = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class LeaseStore:
    """The shared store's lease calls, and how long a lease outlives a holder that never releases it."""

    acquire: Acquire
    release: Release
    ttl_s: float


async def nothing_to_leave() -> None:
    """The leave of a request that holds no slot (no cap, or a store that did not answer)."""
    return None


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
    """The keys a router accepts; no keys means open (only ever on loopback: see :func:`exposure_issues`).

    ``policies`` are ``server.keys`` by identity; ``consume`` is the shared store's windowed counter and ``leases``
    its lease calls (None: that kind of limit cannot be counted, so none applies)."""

    keys: tuple[ApiKey, ...] = ()
    policies: Mapping[str, KeyPolicySpec] = field(default_factory=dict)
    consume: Consume | None = None
    leases: LeaseStore | None = None

    def priority(self, identity: str | None, asked: str | None) -> str | None:
        """The request's class: its key's, or lower when the header asks; None when ``asked`` is no class."""
        own = self.policies[identity].priority if identity in self.policies else "normal"
        if asked is None:
            return own
        asked = asked.strip().lower()
        if asked not in PRIORITIES:
            return None
        return max(own, asked, key=PRIORITIES.index)  # later in PRIORITIES is lower: a header only lowers

    async def over_quota(self, identity: str) -> int | None:
        """Spend one request of ``identity``'s rate: None when within it, else whole seconds until there is room.
        A store that does not answer lets the request through (logged): a quota must not fail requests itself."""
        policy = self.policies.get(identity)
        if policy is None or policy.requests_per_min is None or self.consume is None:
            return None
        try:
            taken = await self.consume(QUOTA_NAMESPACE, identity, 1, policy.requests_per_min, QUOTA_WINDOW_S)
        except Exception as exc:
            log.warning("quota of %s unreadable, request let through: %r", identity, exc)
            return None
        return None if taken.allowed else max(1, math.ceil(taken.retry_after_s))

    async def enter(self, identity: str | None) -> Leave | None:
        """Take one of ``identity``'s slots for requests in flight: the call that gives it back, or None when all
        are taken. As with the rate, a store that does not answer lets the request through (logged)."""
        policy = self.policies.get(identity) if identity is not None else None
        if identity is None or policy is None or policy.max_concurrent_requests is None or self.leases is None:
            return nothing_to_leave
        leases = self.leases
        try:
            leased = await leases.acquire(CONCURRENCY_NAMESPACE, identity, policy.max_concurrent_requests, leases.ttl_s)
        except Exception as exc:
            log.warning("requests in flight of %s unreadable, request let through: %r", identity, exc)
            return nothing_to_leave
        if leased.lease_id is None:
            return None
        lease_id = leased.lease_id

        async def leave() -> None:
            try:
                await leases.release(CONCURRENCY_NAMESPACE, identity, lease_id)
            except Exception as exc:  # the lease expires by itself
                log.warning("slot of %s not released, it frees in %.0f s: %r", identity, leases.ttl_s, exc)

        return leave

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
    identities = {k.identity for k in parse_keys(environ[env])} if env else set()
    return [
        SpecIssue(
            f"server.keys.{name}",
            name,
            f"no key in {env or 'server.api_keys_env'} has this identity",
            f"name a key {name}=<key> in {env or 'the keys variable'}, or remove server.keys.{name}",
        )
        for name in spec.server.keys
        if name not in identities
    ]


def gate_for(
    spec: FleetSpec,
    environ: Mapping[str, str],
    host: str | None = None,
    consume: Consume | None = None,
    leases: tuple[Acquire, Release] | None = None,
) -> AuthGate:
    """The gate of a router serving ``spec`` on ``host`` (default the spec's); raises :class:`ExposureError`
    when :func:`exposure_issues` finds any, so the router refuses to start. A lease lives as long as the longest
    request may (a stream's deadline, or a call's), plus a minute."""
    issues = exposure_issues(spec, host or spec.server.host, environ)
    if issues:
        raise ExposureError(issues)
    env = spec.server.api_keys_env
    ttl_s = max(spec.server.stream_timeout_s, spec.server.request_timeout_s) + 60.0
    store = LeaseStore(leases[0], leases[1], ttl_s) if leases is not None else None
    return AuthGate(parse_keys(environ[env]) if env else (), dict(spec.server.keys), consume, store)


class ExposureError(RuntimeError):
    """The router must not start: it would be reachable without keys, or its keys cannot be read."""

    def __init__(self, issues: list[SpecIssue]) -> None:
        self.issues = issues
        super().__init__("; ".join(f"{i.path}: {i.problem} (fix: {i.fix})" for i in issues))
