"""S2 and S3's heavy work on a Ray cluster, through Ray Data: scrubbing each record and embedding each prompt.

Both are independent per record, so they scale with the cluster: ``map_batches`` runs them in a pool of actors,
each loading its models once (presidio and spaCy; the embedding model). What must see every record stays on the
driver: repeats are found after scrubbing, in log order (``curate.collect``), and clustering needs all vectors.
Records cross as JSON text, not as Arrow structs, because a message's ``content`` is a string in one record and
a list of parts in the next, which one Arrow column cannot hold. Without a cluster the stages run in this process
(``curate.curate``, ``embed.Embedder``); the results are the same either way (tested).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

from cluster.convert.curate import CurationReport, Scrubbed, collect

ROWS_PER_BATCH = 32
DEFAULT_ACTORS = 2


class _ScrubBatch:
    """One actor of the scrubbing pool: presidio and spaCy load once, in ``__init__``."""

    def __init__(self) -> None:
        from cluster.convert.pii import PiiScrubber

        self.scrubber = PiiScrubber()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        from cluster.convert.curate import scrub_record

        out: dict[str, list[Any]] = {"n": [], "problem": [], "example": [], "pii": []}
        for n, text in zip(batch["n"], batch["record"], strict=True):
            problem, example, pii = scrub_record(json.loads(text), self.scrubber)
            out["n"].append(int(n))
            out["problem"].append(problem or "")
            out["example"].append(json.dumps(example) if example is not None else "")
            out["pii"].append(json.dumps(dict(pii)))
        return out


class _EmbedBatch:
    """One actor of the embedding pool: the model loads once."""

    def __init__(self) -> None:
        from cluster.convert.embed import Embedder

        self.embedder = Embedder()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"n": batch["n"], "vector": self.embedder.embed([str(t) for t in batch["text"]])}


def curate_on_ray(
    records: Iterable[dict[str, Any]], actors: int = DEFAULT_ACTORS
) -> tuple[list[dict[str, Any]], CurationReport]:
    """``curate.curate`` with the scrubbing shared out over a pool of ``actors`` on the connected Ray cluster."""
    import ray.data

    rows = [{"n": n, "record": json.dumps(record)} for n, record in enumerate(records)]
    if not rows:
        return collect([])
    scrubbed = ray.data.from_items(rows).map_batches(_ScrubBatch, concurrency=actors, batch_size=ROWS_PER_BATCH)
    return collect(_scrubbed(row) for row in sorted(scrubbed.take_all(), key=lambda row: row["n"]))


def _scrubbed(row: dict[str, Any]) -> Scrubbed:
    example = json.loads(row["example"]) if row["example"] else None
    return row["problem"] or None, example, Counter(json.loads(row["pii"]))


def embed_on_ray(texts: list[str], actors: int = DEFAULT_ACTORS) -> np.ndarray:
    """``Embedder().embed(texts)`` over a pool of ``actors`` on the connected Ray cluster, rows in order."""
    import ray.data

    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    rows = [{"n": n, "text": text} for n, text in enumerate(texts)]
    embedded = ray.data.from_items(rows).map_batches(_EmbedBatch, concurrency=actors, batch_size=ROWS_PER_BATCH)
    ordered = sorted(embedded.take_all(), key=lambda row: row["n"])
    return np.stack([np.asarray(row["vector"], dtype=np.float32) for row in ordered])
