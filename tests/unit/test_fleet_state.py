"""The fleet's state store without Ray: TTLs, one winner per key, fixed windows, durable snapshots on disk."""

import asyncio
import json
import logging
import math
import os
import subprocess
import sys

import pytest

from deployments import fleet_state_core
from deployments.fleet_state import FleetState
from deployments.fleet_state_core import DURABLE_NAMESPACES, SWEEP_INTERVAL_S, Consumed, FleetStateCore


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def core(clock):
    return FleetStateCore(clock=clock)


# values and TTLs


def test_get_put_delete_items(core):
    assert core.get("idempotency", "k") is None
    core.put("idempotency", "k", {"answer": 1})
    core.put("idempotency", "j", [1, 2])
    assert core.get("idempotency", "k") == {"answer": 1}
    assert core.items("idempotency") == {"k": {"answer": 1}, "j": [1, 2]}
    assert core.items("quota") == {}
    assert core.delete("idempotency", "k") is True
    assert core.delete("idempotency", "k") is False
    assert core.items("idempotency") == {"j": [1, 2]}


def test_namespaces_are_separate(core):
    core.put("a", "k", 1)
    core.put("b", "k", 2)
    assert (core.get("a", "k"), core.get("b", "k")) == (1, 2)


def test_value_expires_at_its_ttl(core, clock):
    core.put("idempotency", "k", "v", ttl_s=10)
    clock.now += 9.999
    assert core.get("idempotency", "k") == "v"
    clock.now += 0.001
    assert core.get("idempotency", "k") is None
    assert core.delete("idempotency", "k") is False


def test_items_never_returns_expired_values_and_prunes_them(core, clock):
    core.put("idempotency", "short", 1, ttl_s=1)
    core.put("idempotency", "long", 2, ttl_s=100)
    core.put("idempotency", "forever", 3)
    clock.now += 5
    assert core.items("idempotency") == {"long": 2, "forever": 3}
    assert core.stats() == {"idempotency": 2}


def test_put_replaces_value_and_ttl(core, clock):
    core.put("idempotency", "k", "old", ttl_s=1)
    core.put("idempotency", "k", "new")
    clock.now += 10
    assert core.get("idempotency", "k") == "new"


def test_put_if_absent_has_one_winner(core):
    assert core.put_if_absent("idempotency", "req-1", "first") == (True, "first")
    assert core.put_if_absent("idempotency", "req-1", "second") == (False, "first")
    assert core.get("idempotency", "req-1") == "first"


def test_put_if_absent_wins_again_once_the_value_expired(core, clock):
    core.put_if_absent("idempotency", "req-1", "first", ttl_s=30)
    clock.now += 30
    assert core.put_if_absent("idempotency", "req-1", "second", ttl_s=30) == (True, "second")


def test_unread_expired_keys_are_swept_on_a_later_write(core, clock):
    for i in range(50):
        core.put("idempotency", f"k{i}", i, ttl_s=1)
    core.consume("quota", "key-a", 1, 10, window_s=1)
    assert len(core._values["idempotency"]) == 50
    clock.now += SWEEP_INTERVAL_S
    core.put("idempotency", "fresh", "v", ttl_s=600)
    assert len(core._values["idempotency"]) == 1
    assert len(core._windows["quota"]) == 0


# fixed-window counters


def test_consume_within_the_limit(core):
    assert core.consume("quota", "key-a", 4, limit=10, window_s=60) == Consumed(True, 4, 6, 0)
    assert core.consume("quota", "key-a", 6, limit=10, window_s=60) == Consumed(True, 10, 0, 0)


def test_refused_consume_takes_nothing_and_says_when_the_window_resets(core, clock):
    core.consume("quota", "key-a", 8, limit=10, window_s=60)
    clock.now += 20
    refused = core.consume("quota", "key-a", 3, limit=10, window_s=60)
    assert refused == Consumed(False, 8, 2, 40)
    assert core.consume("quota", "key-a", 2, limit=10, window_s=60) == Consumed(True, 10, 0, 0)


def test_window_resets_when_it_ends(core, clock):
    core.consume("quota", "key-a", 10, limit=10, window_s=60)
    clock.now += 59.5
    assert core.consume("quota", "key-a", 1, limit=10, window_s=60).retry_after_s == pytest.approx(0.5)
    clock.now += 0.5
    assert core.consume("quota", "key-a", 1, limit=10, window_s=60) == Consumed(True, 1, 9, 0)


def test_amount_zero_reads_the_counter(core):
    core.consume("budget", "llm", 2.5, limit=10, window_s=3600)
    assert core.consume("budget", "llm", 0, limit=10, window_s=3600) == Consumed(True, 2.5, 7.5, 0)


def test_amount_above_the_limit_never_fits(core):
    result = core.consume("budget", "llm", 11, limit=10, window_s=3600)
    assert (result.allowed, result.used, result.remaining, result.retry_after_s) == (False, 0, 10, 3600)


def test_float_sums_fit_their_limit(core):
    for _ in range(3):
        assert core.consume("budget", "llm", 0.1, limit=0.3, window_s=60).allowed
    assert not core.consume("budget", "llm", 0.01, limit=0.3, window_s=60).allowed


def test_counters_are_per_key_and_apart_from_values(core):
    core.consume("quota", "key-a", 10, limit=10, window_s=60)
    assert core.consume("quota", "key-b", 10, limit=10, window_s=60).allowed
    assert core.items("quota") == {}


def test_delete_resets_a_counter(core):
    core.consume("quota", "key-a", 10, limit=10, window_s=60)
    assert core.delete("quota", "key-a") is True
    assert core.consume("quota", "key-a", 10, limit=10, window_s=60).allowed


# leases: requests in flight


def test_leases_up_to_the_limit_then_refused_until_one_is_released(core):
    first, second = core.acquire("flight", "app", 2, ttl_s=60), core.acquire("flight", "app", 2, ttl_s=60)
    assert first.lease_id and second.lease_id and first.lease_id != second.lease_id and second.held == 2
    assert core.acquire("flight", "app", 2, ttl_s=60) == fleet_state_core.Leased(None, 2)
    assert core.acquire("flight", "other", 2, ttl_s=60).lease_id  # per key
    assert core.release("flight", "app", first.lease_id) is True
    assert core.release("flight", "app", first.lease_id) is False  # once
    assert core.acquire("flight", "app", 2, ttl_s=60).held == 2
    assert core.acquire("flight", "app", 0, ttl_s=60) == fleet_state_core.Leased(None, 2)  # limit 0 reads


def test_a_lease_never_released_frees_its_slot_at_its_ttl(core, clock):
    lost = core.acquire("flight", "app", 1, ttl_s=30)
    clock.now += 29.9
    assert core.acquire("flight", "app", 1, ttl_s=30).lease_id is None
    clock.now += 0.1
    assert core.acquire("flight", "app", 1, ttl_s=30).lease_id is not None
    assert core.release("flight", "app", lost.lease_id) is False


def test_expired_leases_are_swept_from_the_store(core, clock):
    core.acquire("flight", "app", 1, ttl_s=5)
    assert core.stats() == {"flight": 1}
    clock.now += 5
    assert core.stats() == {"flight": 0}


@pytest.mark.parametrize(
    ("args", "says"),
    [(("adapters", "a", 1, 5.0), "durable"), (("f", "a", -1, 5.0), "limit"), (("f", "a", 1.5, 5.0), "limit"),
     (("f", "a", True, 5.0), "limit"), (("f", "a", 1, 0), "ttl_s"), (("f", "", 1, 5.0), "key")],
)  # fmt: skip
def test_bad_lease_arguments_are_named(core, args, says):
    with pytest.raises(ValueError, match=says):
        core.acquire(*args)


# durable namespaces: snapshot, restore, file


def test_snapshot_holds_the_durable_namespaces_only(core):
    core.put("adapters", "support-lora", {"base": "smol", "path": "/adapters/support"})
    core.put("idempotency", "k", "v")
    core.consume("budget", "llm", 1, limit=10, window_s=60)
    assert core.snapshot() == {
        "adapters": {"support-lora": {"base": "smol", "path": "/adapters/support"}},
        "promotions": {},
    }
    assert set(core.snapshot()) == DURABLE_NAMESPACES


def test_snapshot_is_a_copy(core):
    core.put("promotions", "triage", {"to": "smol"})
    core.snapshot()["promotions"]["triage"]["to"] = "changed"
    assert core.get("promotions", "triage") == {"to": "smol"}


def test_restore_from_a_snapshot(core, clock):
    core.put("adapters", "a1", {"base": "smol"})
    core.put("promotions", "p1", ["triage", "smol"])
    core.put("idempotency", "k", "v")
    restored = FleetStateCore.from_snapshot(core.snapshot(), clock=clock)
    assert restored.snapshot() == core.snapshot()
    assert restored.get("adapters", "a1") == {"base": "smol"}
    assert restored.get("idempotency", "k") is None
    assert FleetStateCore(snapshot=core.snapshot()).items("promotions") == {"p1": ["triage", "smol"]}


def test_restore_refuses_a_non_durable_namespace():
    with pytest.raises(ValueError, match="'idempotency' is not durable"):
        FleetStateCore.from_snapshot({"idempotency": {"k": "v"}})


def test_durable_write_persists_atomically_and_reloads(tmp_path, clock):
    path = tmp_path / "state" / "fleet-state.json"
    store = FleetStateCore(path, clock=clock)
    store.put("adapters", "a1", {"base": "smol"})
    store.put("promotions", "p1", "smol")
    store.put("promotions", "p2", "smol")
    assert store.delete("promotions", "p2") is True
    on_disk = json.loads(path.read_text())
    assert on_disk == {"format": 1, "namespaces": {"adapters": {"a1": {"base": "smol"}}, "promotions": {"p1": "smol"}}}
    assert sorted(os.listdir(path.parent)) == ["fleet-state.json"]  # no temporary file left behind
    reloaded = FleetStateCore(str(path), clock=clock)
    assert reloaded.snapshot() == {"adapters": {"a1": {"base": "smol"}}, "promotions": {"p1": "smol"}}


def test_non_durable_writes_never_touch_the_disk(tmp_path, monkeypatch):
    path = tmp_path / "fleet-state.json"
    store = FleetStateCore(path)
    monkeypatch.setattr(fleet_state_core.os, "replace", lambda *_: pytest.fail("disk touched"))
    store.put("idempotency", "k", "v", ttl_s=60)
    store.put_if_absent("idempotency", "j", "v")
    store.consume("quota", "key-a", 1, limit=10, window_s=60)
    store.delete("idempotency", "k")
    assert not path.exists()


def test_failed_durable_write_changes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "fleet-state.json"
    store = FleetStateCore(path)
    store.put("adapters", "a1", "v1")
    before = path.read_text()

    def broken_replace(*_):
        raise OSError("disk full")

    monkeypatch.setattr(fleet_state_core.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.put("adapters", "a2", "v2")
    assert path.read_text() == before
    assert store.get("adapters", "a2") is None
    assert sorted(os.listdir(tmp_path)) == ["fleet-state.json"]


def test_restore_with_a_path_writes_the_file(tmp_path):
    path = tmp_path / "fleet-state.json"
    FleetStateCore.from_snapshot({"adapters": {"a1": 1}}, snapshot_path=path)
    assert FleetStateCore(path).get("adapters", "a1") == 1


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        b"\xff\xfe\x00garbage",
        '["a list"]',
        '{"format": 99, "namespaces": {}}',
        '{"format": 1, "namespaces": {"idempotency": {"k": "v"}}}',
        '{"format": 1, "namespaces": {"adapters": ["not", "a", "map"]}}',
    ],
    ids=["bad-json", "not-utf8", "not-an-object", "unknown-format", "non-durable-ns", "bad-entries"],
)
def test_corrupt_file_is_kept_aside_and_the_store_starts_empty(tmp_path, caplog, content):
    path = tmp_path / "fleet-state.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="deployments.fleet_state_core"):
        store = FleetStateCore(path)
    assert store.snapshot() == {"adapters": {}, "promotions": {}}
    assert "unreadable" in caplog.text
    assert (tmp_path / "fleet-state.json.corrupt").exists()
    assert not path.exists()
    store.put("adapters", "a1", "v")
    assert FleetStateCore(path).get("adapters", "a1") == "v"


def test_unreadable_file_raises_rather_than_starting_without_registrations(tmp_path):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(OSError):
        FleetStateCore(folder)
    assert folder.is_dir()


def test_durable_value_must_be_json(core):
    with pytest.raises(ValueError, match=r"adapters/a1.*JSON"):
        core.put("adapters", "a1", {"when": object()})
    with pytest.raises(ValueError, match=r"promotions/p1.*JSON"):
        core.put_if_absent("promotions", "p1", math.nan)
    assert core.snapshot() == {"adapters": {}, "promotions": {}}


def test_durable_value_is_stored_as_json_reloads_it(core):
    assert core.put_if_absent("adapters", "a1", {"ranks": (8, 16)}) == (True, {"ranks": [8, 16]})
    assert core.get("adapters", "a1") == {"ranks": [8, 16]}


def test_durable_namespaces_refuse_ttls_and_counters(core):
    with pytest.raises(ValueError, match="ttl_s"):
        core.put("adapters", "a1", "v", ttl_s=10)
    with pytest.raises(ValueError, match="'promotions' is durable"):
        core.consume("promotions", "p", 1, limit=10, window_s=60)


# bad arguments


@pytest.mark.parametrize(
    ("call", "bad"),
    [
        (lambda s: s.get("", "k"), "ns"),
        (lambda s: s.get("idempotency", ""), "key"),
        (lambda s: s.put("idempotency", 7, "v"), "key"),
        (lambda s: s.items(""), "ns"),
        (lambda s: s.delete("quota", ""), "key"),
        (lambda s: s.put("idempotency", "k", "v", ttl_s=-1), "ttl_s"),
        (lambda s: s.put("idempotency", "k", "v", ttl_s=0), "ttl_s"),
        (lambda s: s.put_if_absent("idempotency", "k", "v", ttl_s=math.inf), "ttl_s"),
        (lambda s: s.consume("quota", "k", -1, 10, 60), "amount"),
        (lambda s: s.consume("quota", "k", math.nan, 10, 60), "amount"),
        (lambda s: s.consume("quota", "k", 1, -10, 60), "limit"),
        (lambda s: s.consume("quota", "k", 1, True, 60), "limit"),
        (lambda s: s.consume("quota", "k", 1, 10, 0), "window_s"),
        (lambda s: s.consume("quota", "k", 1, 10, -60), "window_s"),
        (lambda s: s.consume("", "k", 1, 10, 60), "ns"),
    ],
)
def test_bad_arguments_name_themselves(core, call, bad):
    with pytest.raises(ValueError, match=rf"^{bad} must"):
        call(core)


def test_refused_arguments_change_nothing(core):
    with pytest.raises(ValueError):
        core.consume("quota", "k", 1, 10, 0)
    assert core.stats() == {}


# the async client, over a stand-in handle


class FakeMethod:
    def __init__(self, fn, delay_s):
        self.fn = fn
        self.delay_s = delay_s

    def remote(self, *args):
        async def call():
            await asyncio.sleep(self.delay_s)
            return self.fn(*args)

        return call()


class FakeHandle:
    def __init__(self, core, delay_s=0.0):
        self.core = core
        self.delay_s = delay_s

    def __getattr__(self, name):
        return FakeMethod(getattr(self.core, name), self.delay_s)


def test_client_awaits_every_method(core):
    client = FleetState(FakeHandle(core))

    async def scenario():
        await client.put("idempotency", "k", "v", 60)
        won = await client.put_if_absent("idempotency", "k", "other")
        consumed = await client.consume("quota", "key-a", 3, 10, 60)
        await client.put("adapters", "a1", {"base": "smol"})
        return (
            await client.get("idempotency", "k"),
            won,
            consumed,
            await client.items("idempotency"),
            await client.snapshot(),
            await client.delete("idempotency", "k"),
        )

    assert asyncio.run(scenario()) == (
        "v",
        (False, "v"),
        Consumed(True, 3, 7, 0),
        {"k": "v"},
        {"adapters": {"a1": {"base": "smol"}}, "promotions": {}},
        True,
    )


def test_client_timeout_bounds_a_call(core):
    client = FleetState(FakeHandle(core, delay_s=5), timeout_s=0.05)
    with pytest.raises(TimeoutError):
        asyncio.run(client.get("idempotency", "k"))


def test_client_refuses_a_bad_timeout(core):
    with pytest.raises(ValueError, match="timeout_s"):
        FleetState(FakeHandle(core), timeout_s=0)


def test_importing_the_module_does_not_import_ray():
    code = "import sys, deployments.fleet_state; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_runtime_entries_list_the_durable_namespaces_for_the_diff():
    from deployments.fleet_state import runtime_entries

    state = {
        "adapters": {"b": {"description": "LoRA b on smol"}, "a": {"rank": 8}},
        "promotions": {"extract": "extract-lora"},
        "quota": {"k": 1},  # not durable: never listed
    }
    assert runtime_entries(state) == {
        "adapters:a": '{"rank": 8}',
        "adapters:b": "LoRA b on smol",
        "promotions:extract": '"extract-lora"',
    }
