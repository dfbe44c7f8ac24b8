"""The fleet's shared state as plain logic: namespaced values with TTLs, put-if-absent, fixed-window counters,
expiring leases and the durable namespaces' snapshot file. No Ray: :mod:`deployments.fleet_state` serves it from one
actor (why, and what survives what, is told there); tested here with a fake clock.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DURABLE_NAMESPACES = frozenset({"adapters", "promotions"})
SNAPSHOT_FORMAT = 1
SWEEP_INTERVAL_S = 60.0
# relative slack when comparing float sums with a limit, so 0.1 + 0.2 fits a limit of 0.3
_FLOAT_SLACK = 1e-9


@dataclass(frozen=True)
class Consumed:
    """One ``consume`` answer: whether it was taken, the window's total after it, what is left, when to retry."""

    allowed: bool
    used: float
    remaining: float
    retry_after_s: float


@dataclass(frozen=True)
class Leased:
    """One ``acquire`` answer: the new lease's id (None when refused) and the leases held after it."""

    lease_id: str | None
    held: int


@dataclass(slots=True)
class _Entry:
    value: Any
    expires_at: float | None


@dataclass(slots=True)
class _Window:
    ends_at: float
    used: float


def _check_name(arg: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{arg} must be a non-empty string, got {value!r}")


def check_number(arg: str, value: object, *, positive: bool) -> None:
    """Finite, not negative (and not zero when ``positive``); bools are refused though Python counts them as ints."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{arg} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{arg} must be {'> 0' if positive else '>= 0'}, got {value!r}")


def _json_copy(ns: str, key: str, value: Any) -> Any:
    """``value`` as the snapshot file would give it back, or a ValueError naming ``ns/key``."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"value of {ns}/{key}: durable namespaces hold JSON values only ({exc})") from exc


def _parse_snapshot(data: object) -> dict[str, dict[str, Any]]:
    """A snapshot (``{namespace: {key: value}}``, durable namespaces only) checked and copied, or a ValueError."""
    if not isinstance(data, Mapping):
        raise ValueError(f"snapshot must map namespaces to entries, got {type(data).__name__}")
    parsed: dict[str, dict[str, Any]] = {}
    for ns, entries in data.items():
        if ns not in DURABLE_NAMESPACES:
            raise ValueError(f"snapshot namespace {ns!r} is not durable (durable: {sorted(DURABLE_NAMESPACES)})")
        if not isinstance(entries, Mapping):
            raise ValueError(f"snapshot namespace {ns!r} must map keys to values, got {type(entries).__name__}")
        for key in entries:
            _check_name(f"snapshot key in {ns!r}", key)
        parsed[ns] = {key: _json_copy(ns, key, value) for key, value in entries.items()}
    return parsed


class FleetStateCore:
    """Namespaced key/value with TTLs, put-if-absent and fixed-window counters: the store's logic, without Ray.

    ``snapshot_path`` makes the durable namespaces persistent: the file is loaded here when present (a corrupt one
    is renamed ``<path>.corrupt`` and the store starts empty; one that cannot be read at all, a permission error,
    raises: better no store than one silently without its registrations) and rewritten atomically on every durable
    write.
    ``snapshot`` restores from :meth:`snapshot`'s output instead of the file (and is written to the file, if any).
    """

    def __init__(
        self,
        snapshot_path: str | os.PathLike[str] | None = None,
        *,
        snapshot: Mapping[str, Mapping[str, Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._path = Path(snapshot_path) if snapshot_path else None
        self._values: dict[str, dict[str, _Entry]] = {}
        self._windows: dict[str, dict[str, _Window]] = {}
        self._leases: dict[str, dict[str, dict[str, float]]] = {}  # ns -> key -> lease id -> expiry
        self._next_sweep = clock() + SWEEP_INTERVAL_S
        restored = _parse_snapshot(snapshot) if snapshot is not None else self._load_file()
        for ns, entries in restored.items():
            self._values[ns] = {key: _Entry(value, None) for key, value in entries.items()}
        if snapshot is not None:
            self._persist(self.snapshot())

    @classmethod
    def from_snapshot(
        cls,
        snapshot: Mapping[str, Mapping[str, Any]],
        *,
        snapshot_path: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> FleetStateCore:
        """A store holding ``snapshot``'s durable namespaces (the other namespaces are never snapshotted)."""
        return cls(snapshot_path, snapshot=snapshot, clock=clock)

    # reads

    def get(self, ns: str, key: str) -> Any | None:
        """The live value under ``ns/key``, or None (an expired value is dropped here)."""
        _check_name("ns", ns)
        _check_name("key", key)
        entry = self._live_entry(ns, key, self._clock())
        return None if entry is None else entry.value

    def items(self, ns: str) -> dict[str, Any]:
        """Every live value of ``ns`` (expired ones are pruned, never returned); counters are not values."""
        _check_name("ns", ns)
        self._prune_values(ns, self._clock())
        return {key: entry.value for key, entry in self._values.get(ns, {}).items()}

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The durable namespaces as ``{namespace: {key: value}}``: what the file holds and ``diff`` shows."""
        return {
            ns: {key: copy.deepcopy(entry.value) for key, entry in self._values.get(ns, {}).items()}
            for ns in sorted(DURABLE_NAMESPACES)
        }

    def stats(self) -> dict[str, int]:
        """Entries held per namespace (values, counters, keys with leases), after pruning what has expired."""
        self._sweep(self._clock())
        counts: dict[str, int] = {}
        for table in (self._values, self._windows, self._leases):
            for ns, entries in table.items():
                counts[ns] = counts.get(ns, 0) + len(entries)
        return counts

    # writes

    def put(self, ns: str, key: str, value: Any, ttl_s: float | None = None) -> None:
        """Store ``value`` under ``ns/key``, replacing any; ``ttl_s`` bounds its life (not in durable namespaces)."""
        stored = self._checked_value(ns, key, value, ttl_s)
        now = self._clock()
        self._maybe_sweep(now)
        self._store(ns, key, _Entry(stored, None if ttl_s is None else now + ttl_s))

    def put_if_absent(self, ns: str, key: str, value: Any, ttl_s: float | None = None) -> tuple[bool, Any]:
        """(True, value) when stored; (False, the live value) when ``ns/key`` holds one: one winner per key."""
        stored = self._checked_value(ns, key, value, ttl_s)
        now = self._clock()
        self._maybe_sweep(now)
        existing = self._live_entry(ns, key, now)
        if existing is not None:
            return False, existing.value
        self._store(ns, key, _Entry(stored, None if ttl_s is None else now + ttl_s))
        return True, stored

    def delete(self, ns: str, key: str) -> bool:
        """Forget ``ns/key``, its value and its counter alike; True when there was a live one."""
        _check_name("ns", ns)
        _check_name("key", key)
        now = self._clock()
        had_value = self._live_entry(ns, key, now) is not None
        window = self._windows.get(ns, {}).pop(key, None)
        if had_value and ns in DURABLE_NAMESPACES:
            self._persist(self._snapshot_with(ns, {k: e for k, e in self._values[ns].items() if k != key}))
        if had_value:
            del self._values[ns][key]
        return had_value or (window is not None and window.ends_at > now)

    def consume(self, ns: str, key: str, amount: float, limit: float, window_s: float) -> Consumed:
        """Take ``amount`` from ``ns/key``'s fixed window (``limit`` per ``window_s``), or nothing if it does not fit.

        A window opens at the first consume after the last one ended. A refused consume takes nothing and says how
        long until the window resets (an ``amount`` above ``limit`` never fits). ``amount=0`` reads the counter.
        """
        self._check_counter(ns, key, amount, limit, window_s)
        now = self._clock()
        self._maybe_sweep(now)
        windows = self._windows.setdefault(ns, {})
        window = windows.get(key)
        if window is None or now >= window.ends_at:
            window = windows[key] = _Window(ends_at=now + window_s, used=0.0)
        if window.used + amount > limit + _FLOAT_SLACK * max(1.0, limit):
            return Consumed(False, window.used, max(limit - window.used, 0.0), window.ends_at - now)
        window.used += amount
        return Consumed(True, window.used, max(limit - window.used, 0.0), 0.0)

    def acquire(self, ns: str, key: str, limit: int, ttl_s: float) -> Leased:
        """One of ``limit`` concurrent leases on ``ns/key``, or none when all are held.

        A lease ends at :meth:`release` or, failing that, ``ttl_s`` after it was taken: a holder that crashed frees
        its slot by itself. ``limit=0`` reads how many are held.
        """
        self._check_lease_args(ns, key, limit, ttl_s)
        now = self._clock()
        self._maybe_sweep(now)
        held = self._live_leases(ns, key, now)
        if len(held) >= limit:
            return Leased(None, len(held))
        lease_id = uuid.uuid4().hex  # never reused, even by a restarted store: an old holder frees only its own
        held[lease_id] = now + ttl_s
        return Leased(lease_id, len(held))

    def release(self, ns: str, key: str, lease_id: str) -> bool:
        """End a lease; False when it had already ended (released, or expired)."""
        _check_name("ns", ns)
        _check_name("key", key)
        _check_name("lease_id", lease_id)
        return self._live_leases(ns, key, self._clock()).pop(lease_id, None) is not None

    # internals

    @staticmethod
    def _check_lease_args(ns: str, key: str, limit: int, ttl_s: float) -> None:
        _check_name("ns", ns)
        _check_name("key", key)
        if ns in DURABLE_NAMESPACES:
            raise ValueError(f"ns {ns!r} is durable: leases live in non-durable namespaces")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be an integer >= 0, got {limit!r}")
        check_number("ttl_s", ttl_s, positive=True)

    def _live_leases(self, ns: str, key: str, now: float) -> dict[str, float]:
        """``ns/key``'s unexpired leases (expired ones dropped), as the live dict."""
        held = self._leases.setdefault(ns, {}).setdefault(key, {})
        for lease_id in [lid for lid, ends in held.items() if now >= ends]:
            del held[lease_id]
        return held

    @staticmethod
    def _check_counter(ns: str, key: str, amount: float, limit: float, window_s: float) -> None:
        _check_name("ns", ns)
        _check_name("key", key)
        if ns in DURABLE_NAMESPACES:
            raise ValueError(f"ns {ns!r} is durable: counters live in non-durable namespaces (no disk on a hot path)")
        check_number("amount", amount, positive=False)
        check_number("limit", limit, positive=False)
        check_number("window_s", window_s, positive=True)

    @staticmethod
    def _checked_value(ns: str, key: str, value: Any, ttl_s: float | None) -> Any:
        """The value to store: checked arguments, and in a durable namespace the value as JSON would reload it."""
        _check_name("ns", ns)
        _check_name("key", key)
        if ttl_s is not None:
            check_number("ttl_s", ttl_s, positive=True)
        if ns not in DURABLE_NAMESPACES:
            return value
        if ttl_s is not None:
            raise ValueError(f"ttl_s must be None in durable namespace {ns!r}: its registrations do not expire")
        return _json_copy(ns, key, value)

    def _live_entry(self, ns: str, key: str, now: float) -> _Entry | None:
        entries = self._values.get(ns)
        if not entries:
            return None
        entry = entries.get(key)
        if entry is not None and entry.expires_at is not None and now >= entry.expires_at:
            del entries[key]
            return None
        return entry

    def _store(self, ns: str, key: str, entry: _Entry) -> None:
        """Write ``entry``; a durable namespace reaches the file first, so a failed write changes nothing."""
        if ns in DURABLE_NAMESPACES:
            self._persist(self._snapshot_with(ns, {**self._values.get(ns, {}), key: entry}))
        self._values.setdefault(ns, {})[key] = entry

    def _snapshot_with(self, ns: str, entries: Mapping[str, _Entry]) -> dict[str, dict[str, Any]]:
        durable = self.snapshot()
        durable[ns] = {key: entry.value for key, entry in entries.items()}
        return durable

    def _prune_values(self, ns: str, now: float) -> None:
        entries = self._values.get(ns)
        if entries:
            for key in [k for k, e in entries.items() if e.expires_at is not None and now >= e.expires_at]:
                del entries[key]

    def _maybe_sweep(self, now: float) -> None:
        """Drop expired values, ended windows and expired leases at most once a ``SWEEP_INTERVAL_S``: keys nobody
        reads again."""
        if now >= self._next_sweep:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        for ns in list(self._values):
            self._prune_values(ns, now)
        for windows in self._windows.values():
            for key in [k for k, w in windows.items() if now >= w.ends_at]:
                del windows[key]
        for ns, keys in self._leases.items():
            for key in list(keys):
                if not self._live_leases(ns, key, now):
                    del keys[key]
        self._next_sweep = now + SWEEP_INTERVAL_S

    def _load_file(self) -> dict[str, dict[str, Any]]:
        """The snapshot file's namespaces; a file that does not parse is kept aside as ``.corrupt`` and ignored."""
        if self._path is None or not self._path.exists():
            return {}
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
                raise ValueError(f"not a format-{SNAPSHOT_FORMAT} fleet state snapshot")
            return _parse_snapshot(data.get("namespaces"))
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
            corrupt = self._path.with_name(self._path.name + ".corrupt")
            os.replace(self._path, corrupt)
            logger.warning(
                "fleet state snapshot %s is unreadable (%s): starting empty, kept as %s", self._path, exc, corrupt
            )
            return {}

    def _persist(self, durable: dict[str, dict[str, Any]]) -> None:
        """Write the durable namespaces to the snapshot file: a temporary file beside it, fsynced, then renamed."""
        if self._path is None:
            return
        text = json.dumps({"format": SNAPSHOT_FORMAT, "namespaces": durable}, indent=1, sort_keys=True)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self._path.name}.", suffix=".tmp", dir=self._path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
