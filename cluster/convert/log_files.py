"""The usage log's segments wherever they are (a local folder, or object storage downloaded into a scratch
folder), read with the private key or summarized without it."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cluster.convert.sealed_log import load_private_key, read_segment, segment_paths, summarize_segment
from cluster.convert.usage_scope import is_object_store
from cluster.object_store import ObjectStoreError, download_prefix


def local_segments(destination: str, scratch: Path) -> list[Path]:
    """The log's segments as local files: the folder's own, or downloaded from object storage into ``scratch``."""
    if not is_object_store(destination):
        return segment_paths(Path(destination))
    try:
        download_prefix(destination, scratch)
    except ObjectStoreError as exc:
        if str(exc).startswith("no objects under"):
            return []
        raise
    return segment_paths(scratch)


def summarize_log(destination: str, scratch: Path, key: Path | None) -> dict[str, Any]:
    """Streams, segments and frames (no key needed); with ``key``: records, cost and counts by kind."""
    paths = local_segments(destination, scratch)
    segments = [summarize_segment(path) for path in paths]
    summary: dict[str, Any] = {
        "destination": destination,
        "streams": len({s.stream for s in segments}),
        "segments": len(segments),
        "frames": sum(s.frames for s in segments),
        "bytes": sum(path.stat().st_size for path in paths),
        "truncated_tails": sum(s.truncated_tail for s in segments),
        "sealed_to": sorted({s.recipient for s in segments}),
    }
    if key is None:
        return summary
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    cost = 0.0
    for record in _records(paths, load_private_key(key)):
        for kind in ("model", "specialist", "pipeline", "escalation_reason", "error"):
            counts[kind][record.get(kind) or "-"] += 1
        cost += record.get("cost") or 0.0
    summary["records"] = sum(counts["model"].values())
    summary["cost"] = round(cost, 6)
    summary["by"] = {kind: dict(counter) for kind, counter in counts.items()}
    return summary


def _records(paths: list[Path], private: X25519PrivateKey) -> Iterator[dict[str, Any]]:
    for path in paths:
        yield from read_segment(path, private)


def read_records(destination: str, scratch: Path, private: X25519PrivateKey) -> Iterator[dict[str, Any]]:
    """Every record of the log, segment by segment (each stream's in time order)."""
    return _records(local_segments(destination, scratch), private)
