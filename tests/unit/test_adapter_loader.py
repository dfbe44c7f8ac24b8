"""A model replica's adapters: fetched into its own cache, loaded once, unloaded LRU only when no request uses
them (a fake engine records the calls; the real engine's side is in the e2e tier)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from cluster.adapter_files import AdapterFileError
from cluster.spec import AdapterSpec
from deployments.model.adapters import (
    AdapterLoader,
    AdapterSlots,
    LoadedAdapter,
    adapter_int_id,
    adapter_key,
    fetch_adapter,
)


def peft_folder(path: Path, marker: str = "a") -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (path / "adapter_model.safetensors").write_text(marker)
    return path


class FakeEngine:
    def __init__(self, refuse: set[str] | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.refuse = refuse or set()

    async def add_adapter(self, adapter: LoadedAdapter) -> None:
        await asyncio.sleep(0.01)  # a real load takes a while: concurrent requests must not load twice
        if adapter.path.name in self.refuse or adapter.name in self.refuse:
            raise RuntimeError("LoRA rank 32 is greater than max_lora_rank 16.")
        self.calls.append(("add", adapter.int_id))

    async def remove_adapter(self, adapter: LoadedAdapter) -> None:
        self.calls.append(("remove", adapter.int_id))


def test_identity_is_source_and_version() -> None:
    one, two = AdapterSpec(source="/a"), AdapterSpec(source="/a", version="2")
    assert adapter_key(one) != adapter_key(two)
    assert adapter_key(one) == adapter_key(AdapterSpec(source="/a"))
    assert 1 <= adapter_int_id(adapter_key(one)) < 2**31


def test_fetch_copies_once_and_the_copy_outlives_the_source(tmp_path: Path) -> None:
    source = peft_folder(tmp_path / "src")
    spec = AdapterSpec(source=f"file://{source}")
    copy = fetch_adapter(spec, tmp_path / "home")
    assert copy.parent == tmp_path / "home" / "adapters" and (copy / "adapter_model.safetensors").read_text() == "a"
    (source / "adapter_model.safetensors").write_text("overwritten")
    assert fetch_adapter(spec, tmp_path / "home") == copy
    assert (copy / "adapter_model.safetensors").read_text() == "a"  # same version: the cached copy
    with pytest.raises(AdapterFileError, match="no folder"):
        fetch_adapter(AdapterSpec(source=str(tmp_path / "absent")), tmp_path / "home")
    assert [p.name for p in (tmp_path / "home" / "adapters").iterdir()] == [copy.name]  # no half copies left


def test_object_store_sources_go_through_their_downloader(tmp_path: Path) -> None:
    seen: list[str] = []

    def download(uri: str, into: Path) -> None:
        seen.append(uri)
        peft_folder(into / "unused")  # a download that lacks the config at its top is refused
        (into / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))

    folder = fetch_adapter(AdapterSpec(source="s3://bucket/tuned"), tmp_path, {"s3": download})
    assert seen == ["s3://bucket/tuned"] and (folder / "adapter_config.json").is_file()

    def empty(uri: str, into: Path) -> None:
        return None

    with pytest.raises(AdapterFileError, match=r"no adapter_config\.json"):
        fetch_adapter(AdapterSpec(source="gs://bucket/empty"), tmp_path, {"gs": empty})


def test_slots_unload_least_recently_used_and_never_one_in_use() -> None:
    slots = AdapterSlots(capacity=2)
    for adapter_id in (1, 2, 3):
        slots.add(adapter_id)
    slots.use(1)  # 1 is busy and now most recent: 2 is the one to go
    assert slots.surplus() == [2]
    slots.use(2)
    slots.use(3)
    assert slots.surplus() == []  # all busy: over capacity until one finishes
    slots.done(3)
    assert slots.surplus() == [3]


def test_loader_loads_once_under_concurrency_and_unloads_surplus_after_use(tmp_path: Path) -> None:
    reported: list[list[str]] = []

    async def scenario() -> FakeEngine:
        engine = FakeEngine()
        loader = AdapterLoader(engine, capacity=1, home=tmp_path / "home", on_change=reported.append)
        first = AdapterSpec(source=str(peft_folder(tmp_path / "one")))
        second = AdapterSpec(source=str(peft_folder(tmp_path / "two")))
        loaded = await asyncio.gather(*(loader.load(first) for _ in range(5)))
        assert len({item.int_id for item in loaded}) == 1
        async with loader.using(loaded[0]):
            other = await loader.load(second)
            async with loader.using(other):
                pass  # over capacity, but `first` is in use: `second`, now idle, is the one unloaded
            assert engine.calls[-1] == ("remove", other.int_id)
        async with loader.using(None):
            pass
        return engine

    engine = asyncio.run(scenario())
    assert [call for call, _ in engine.calls] == ["add", "add", "remove"]
    # what Serve's routing is told the replica holds: first, both, then first again after the unload
    assert [len(keys) for keys in reported] == [1, 2, 1] and reported[0] == reported[2]


def test_an_adapter_refused_by_the_check_or_engine_is_never_counted_as_loaded(tmp_path: Path) -> None:
    async def scenario() -> None:
        def check(folder: Path, adapter: AdapterSpec) -> None:
            if (folder / "adapter_model.safetensors").read_text() == "narrow":
                raise AdapterFileError("the adapter was trained on another model")

        engine = FakeEngine()
        loader = AdapterLoader(engine, capacity=4, check=check, home=tmp_path / "home")
        with pytest.raises(AdapterFileError, match="another model"):
            await loader.load(AdapterSpec(source=str(peft_folder(tmp_path / "narrow", "narrow"))))
        spec = AdapterSpec(source=str(peft_folder(tmp_path / "r32")))
        engine.refuse.add(adapter_key(spec))
        with pytest.raises(RuntimeError, match="rank 32"):
            await loader.load(spec)
        assert loader.slots.in_use == {} and engine.calls == []

    asyncio.run(scenario())
