"""Drift: whether the LLM tier's calls since the last round hold a task the last round did not find.

A round (curate, discover, the user's review, and the fleet stages) works on the log as it was. Traffic moves on:
a new agent feature brings a new kind of call, and a promotion that is rolled back sends its task's calls back to
the LLM tier. ``slmfleet convert drift`` reads the calls logged since the round (those not in its
``curated.jsonl``), curates them in memory, and matches each to the round's accepted tasks by the same embedding
and each task's own radius (how far its farthest member was from its centroid); the calls that match none are
clustered with the discovery settings, and any cluster of at least ``min_cluster_size`` is a new task: drift, so
a new round is due (``--run`` starts it). The
report also counts the new calls of each known task, so a task whose calls keep reaching the LLM (never promoted,
or rolled back) shows. Nothing is written: the new calls stay sealed in the log until a round curates them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cluster.convert.discover import MATCH_MARGIN, DiscoverySettings, cluster_embeddings


@dataclass
class DriftReport:
    """The calls since the last round, by the known task they match, and the new tasks among the rest."""

    new_calls: int = 0
    by_task: Counter[str] = field(default_factory=Counter)  # accepted task name -> new calls that match it
    unmatched: int = 0
    new_tasks: list[int] = field(default_factory=list)  # sizes of the clusters no known task covers, largest first

    @property
    def drift(self) -> bool:
        return bool(self.new_tasks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "new_calls": self.new_calls,
            "by_task": dict(self.by_task),
            "unmatched": self.unmatched,
            "new_tasks": self.new_tasks,
            "drift": self.drift,
        }


@dataclass(frozen=True)
class KnownTask:
    """An accepted task of the last round: its centroid, and the similarity its farthest member had to it."""

    centroid: np.ndarray
    radius: float


def drift_report(
    known: dict[str, KnownTask], vectors: np.ndarray, settings: DiscoverySettings | None = None
) -> DriftReport:
    """``known``: the accepted tasks by name; ``vectors``: the new calls' unit-length embeddings. A call matches
    the nearest known task when it is as close to its centroid as the task's own farthest member was, less
    :data:`~cluster.convert.discover.MATCH_MARGIN`; the rest are clustered with ``settings`` (discovery's)."""
    settings = settings or DiscoverySettings()
    report = DriftReport(new_calls=len(vectors))
    if not len(vectors):
        return report
    names = list(known)
    if names:
        centroids = np.stack([known[n].centroid / np.linalg.norm(known[n].centroid) for n in names])
        bars = np.array([known[n].radius - MATCH_MARGIN for n in names])
        similarity = vectors @ centroids.T
        best = similarity.argmax(axis=1)
        matched = similarity[np.arange(len(vectors)), best] >= bars[best]
        report.by_task.update(names[i] for i in best[matched])
        rest = vectors[~matched]
    else:
        rest = vectors
    report.unmatched = len(rest)
    labels = cluster_embeddings(rest, settings)
    report.new_tasks = sorted(Counter(labels[labels >= 0].tolist()).values(), reverse=True)
    return report
