"""Engines that share a GPU start one after another.

vLLM sizes its KV cache by profiling free GPU memory at start-up. Two engines profiling one card at once have
miscounted each other's memory (vllm#4242, #14376), and one aborted when a neighbour freed memory mid-profile
(vllm#56830). A per-GPU file lock on the node, held from engine creation until the engine is up (its KV cache
allocated), serialises start-ups on a card while engines on different cards still start in parallel.
"""

from __future__ import annotations

import contextlib
import fcntl
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path


def default_lock_dir() -> Path:
    return Path(tempfile.gettempdir()) / "slmfleet-gpu-locks"


@contextlib.contextmanager
def gpu_start_lock(gpu_ids: Sequence[str], lock_dir: Path | None = None) -> Iterator[None]:
    """Hold every given GPU's start-up lock (taken in sorted order, so two engines never deadlock)."""
    folder = lock_dir or default_lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        for gpu in sorted(set(gpu_ids)):
            handle = stack.enter_context(open(folder / f"gpu-{gpu}.lock", "a+"))
            fcntl.flock(handle, fcntl.LOCK_EX)
            stack.callback(fcntl.flock, handle, fcntl.LOCK_UN)
        yield
