"""LoRA adapters on one model replica: copied into the replica's own cache folder, loaded into the engine before
any request names them, and unloaded least-recently-used once no request is using them.

Why load explicitly: a generate call naming an adapter vLLM cannot load kills the engine core (vLLM 0.32 CPU,
measured: a missing folder, then every request after it failed with EngineDeadError), while ``add_lora`` of the
same adapter fails alone and leaves the engine healthy. So the engine only ever sees adapters that loaded, from
folders this module keeps (a source deleted or overwritten later cannot reach a running engine).

Identity: an adapter is its ``source`` and ``version``; both name its cache folder and its vLLM id, so a new version
is a new adapter, and requests already running finish on the version they started with.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cluster.adapter_files import AdapterFileError, read_adapter_config
from cluster.model_store import slmfleet_home
from cluster.object_store import ObjectStoreError, download_prefix
from cluster.spec import AdapterSpec

log = logging.getLogger(__name__)
MAX_ADAPTER_ID = 2**31 - 1


@dataclass(frozen=True)
class LoadedAdapter:
    """An adapter as the engine knows it: a name for logs, vLLM's integer id, and the folder it loads from."""

    name: str
    int_id: int
    path: Path


def adapter_key(adapter: AdapterSpec) -> str:
    """A short stable name for one source at one version (its cache folder and log name)."""
    return hashlib.sha256(adapter.label().encode()).hexdigest()[:16]


def adapter_int_id(key: str) -> int:
    """vLLM's id for an adapter (positive, 31 bits), derived from its key so every replica agrees."""
    return int(key[:8], 16) % MAX_ADAPTER_ID + 1


Downloader = Callable[[str, Path], None]


def fetch_adapter(
    adapter: AdapterSpec, home: Path | None = None, downloaders: dict[str, Downloader] | None = None
) -> Path:
    """The adapter's files in ``<home>/adapters/<key>``: copied from a local folder or downloaded from object
    storage once, written into a temporary folder and renamed into place (a crash never leaves half a copy)."""
    target = (home or slmfleet_home()) / "adapters" / adapter_key(adapter)
    if (target / "adapter_config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        if adapter.is_local():
            source = adapter.local_path()
            read_adapter_config(source)  # a clear error before anything is copied
            shutil.copytree(source, tmp, dirs_exist_ok=True)
        else:
            scheme = adapter.source.split("://", 1)[0]
            (downloaders or DOWNLOADERS)[scheme](adapter.source, tmp)
            read_adapter_config(tmp)
        tmp.chmod(0o755)
        try:
            os.rename(tmp, target)
        except OSError:  # another replica on this node finished first: use its copy
            if not (target / "adapter_config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def download_from_store(uri: str, into: Path) -> None:
    """An adapter's files from s3:// or gs:// (see :mod:`cluster.object_store`)."""
    try:
        download_prefix(uri, into)
    except ObjectStoreError as exc:
        raise AdapterFileError(str(exc)) from None


DOWNLOADERS: dict[str, Downloader] = {"s3": download_from_store, "gs": download_from_store}


class AdapterSlots:
    """Which adapters the engine holds, least recently used first, and how many requests use each.

    Pure bookkeeping: :meth:`use` says whether an adapter must be loaded, :meth:`surplus` which loaded ones may be
    unloaded (beyond ``capacity``, never one in use).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use: OrderedDict[int, int] = OrderedDict()

    def holds(self, int_id: int) -> bool:
        return int_id in self.in_use

    def add(self, int_id: int) -> None:
        """A newly loaded adapter, most recently used, with no request yet."""
        self.in_use[int_id] = self.in_use.get(int_id, 0)
        self.in_use.move_to_end(int_id)

    def use(self, int_id: int) -> None:
        self.in_use[int_id] = self.in_use.get(int_id, 0) + 1
        self.in_use.move_to_end(int_id)

    def done(self, int_id: int) -> None:
        if int_id in self.in_use:
            self.in_use[int_id] = max(0, self.in_use[int_id] - 1)

    def surplus(self) -> list[int]:
        idle = [i for i, users in self.in_use.items() if users == 0]
        extra = len(self.in_use) - self.capacity
        return idle[: max(0, extra)]

    def forget(self, int_id: int) -> None:
        self.in_use.pop(int_id, None)


class AdapterEngine(Protocol):
    async def add_adapter(self, adapter: LoadedAdapter) -> None: ...
    async def remove_adapter(self, adapter: LoadedAdapter) -> None: ...


class AdapterLoader:
    """Gets an adapter into the engine for the length of one request (see the module docstring)."""

    def __init__(
        self,
        engine: AdapterEngine,
        capacity: int,
        check: Callable[[Path, AdapterSpec], None] | None = None,
        home: Path | None = None,
        on_change: Callable[[list[str]], None] | None = None,
    ) -> None:
        """``check(folder, adapter)`` raises AdapterFileError for files that do not fit the model: vLLM 0.32 loads an
        adapter shaped for another base without a word (measured: hidden size 64 on a 576-wide model)."""
        self.engine = engine
        self.check = check
        self.on_change = on_change  # told the held adapters' keys after each load and unload (Serve's routing)
        self.slots = AdapterSlots(capacity)
        self.home = home
        self.known: dict[int, LoadedAdapter] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    async def load(self, adapter: AdapterSpec) -> LoadedAdapter:
        """Fetch and load ``adapter`` unless the engine holds it; raises AdapterFileError or the engine's error."""
        key = adapter_key(adapter)
        int_id = adapter_int_id(key)
        async with self._locks.setdefault(int_id, asyncio.Lock()):
            if self.slots.holds(int_id):
                return self.known[int_id]
            path = await asyncio.to_thread(fetch_adapter, adapter, self.home)
            if self.check is not None:
                await asyncio.to_thread(self.check, path, adapter)
            loaded = LoadedAdapter(key, int_id, path)
            await self.engine.add_adapter(loaded)
            self.known[int_id] = loaded
            self.slots.add(int_id)
            self._changed()
            log.info("adapter %s (%s) loaded", key, adapter.label())
        return loaded

    @asynccontextmanager
    async def using(self, adapter: LoadedAdapter | None) -> AsyncIterator[None]:
        """Marks a loaded adapter in use while a request runs (never unloaded then); idle surplus goes after."""
        if adapter is None:
            yield
            return
        self.slots.use(adapter.int_id)
        try:
            yield
        finally:
            self.slots.done(adapter.int_id)
            await self._unload_surplus()

    async def _unload_surplus(self) -> None:
        surplus = self.slots.surplus()
        for int_id in surplus:
            self.slots.forget(int_id)
            gone = self.known.pop(int_id)
            await _quietly(self.engine.remove_adapter(gone), f"unloading adapter {gone.name}")
        if surplus:
            self._changed()

    def held(self) -> list[str]:
        """Keys of the adapters the engine holds."""
        return sorted(self.known[i].name for i in self.slots.in_use)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.held())


async def _quietly(call: Awaitable[None], what: str) -> None:
    try:
        await call
    except Exception as exc:  # an adapter the engine already dropped: nothing left to free
        log.warning("%s failed: %r", what, exc)
