"""S3, task discovery: the curated examples clustered into tasks without being told how many, and a review file
the user edits (accept, rename, reject) before anything is trained.

The criterion, chosen so that it does not over-split (measured on 160 generated agent prompts of 4 task types,
3 seeds: adjusted Rand index 1.0 at a distance of 0.5; 0.4 split off a 2-3 prompt sliver, 0.6 merged two tasks;
a silhouette-chosen k split the 4 tasks into 6 to 8):
- average-linkage agglomerative clustering on cosine distance, stopping at ``max_distance``;
- clusters whose centroids are more similar than ``merge_similarity`` are merged (one task phrased two ways);
- clusters smaller than ``min_cluster_size`` are left unclustered: too few examples to learn or test a task.
Each task is named from the words that set its prompts apart, and shown by its most typical prompts (those
nearest its centroid).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cluster.spec import NAME_PATTERN
from cluster.spec_errors import SpecError, SpecIssue, issues_from_validation_error

REVIEW_FILE = "tasks.yaml"
CLUSTERS_FILE = "clusters.json"
TYPICAL_SHOWN = 3
MATCH_MARGIN = 0.05
"""How much farther than a task's farthest member a call (or a new round's centroid) may be and still be that task."""
_WORD = re.compile(r"[a-z][a-z_]{3,}")
_PLACEHOLDER = re.compile(r"<[A-Z_]+>")


@dataclass(frozen=True)
class DiscoverySettings:
    max_distance: float = 0.5
    merge_similarity: float = 0.8
    min_cluster_size: int = 5


def cluster_embeddings(vectors: np.ndarray, settings: DiscoverySettings = DiscoverySettings()) -> np.ndarray:
    """A label per row (0 = the largest task, -1 = unclustered), from unit-length vectors."""
    count = len(vectors)
    if count < max(2, settings.min_cluster_size):
        return np.full(count, -1)
    from sklearn.cluster import AgglomerativeClustering

    labels = AgglomerativeClustering(
        n_clusters=None, distance_threshold=settings.max_distance, metric="cosine", linkage="average"
    ).fit_predict(vectors)
    labels = _merge_near(vectors, labels, settings.merge_similarity)
    return _by_size(labels, settings.min_cluster_size)


def _centroids(vectors: np.ndarray, labels: np.ndarray) -> dict[int, np.ndarray]:
    out = {}
    for label in sorted(set(labels.tolist()) - {-1}):
        mean = vectors[labels == label].mean(axis=0)
        out[label] = mean / (np.linalg.norm(mean) or 1.0)
    return out


def _merge_near(vectors: np.ndarray, labels: np.ndarray, similarity: float) -> np.ndarray:
    """Merge the closest pair of clusters while their centroids are more similar than ``similarity``."""
    labels = labels.copy()
    while True:
        centroids = _centroids(vectors, labels)
        keys = list(centroids)
        best, pair = similarity, None
        for i, a in enumerate(keys):
            for b in keys[i + 1 :]:
                score = float(centroids[a] @ centroids[b])
                if score > best:
                    best, pair = score, (a, b)
        if pair is None:
            return labels
        labels[labels == pair[1]] = pair[0]


def _by_size(labels: np.ndarray, min_size: int) -> np.ndarray:
    sizes = Counter(labels.tolist())
    order = [label for label, size in sizes.most_common() if size >= min_size]
    mapping = {label: rank for rank, label in enumerate(order)}
    return np.array([mapping.get(label, -1) for label in labels.tolist()])


def task_name(texts: list[str], others: list[str], used: set[str]) -> str:
    """Up to three words frequent in ``texts`` and rare elsewhere, joined into a spec name (unique in ``used``)."""
    mine = Counter(w for text in texts for w in set(_words(text)))
    theirs = Counter(w for text in others for w in set(_words(text)))
    score = {w: n / len(texts) - theirs[w] / max(1, len(others)) for w, n in mine.items()}
    words = sorted(score, key=lambda w: (-score[w], w))[:3]
    base = re.sub(r"[^a-z0-9-]", "-", "-".join(words) or "task")[:50].strip("-") or "task"
    name, n = base, 2
    while name in used:
        name, n = f"{base}-{n}", n + 1
    used.add(name)
    return name


def _words(text: str) -> list[str]:
    return _WORD.findall(_PLACEHOLDER.sub(" ", text.lower()))


def discover(texts: list[str], ids: list[str], vectors: np.ndarray, settings: DiscoverySettings) -> dict[str, Any]:
    """The tasks found: per task its id, suggested name, members, centroid, radius (the lowest similarity of a
    member to the centroid) and most typical prompts."""
    labels = cluster_embeddings(vectors, settings)
    centroids = _centroids(vectors, labels)
    used: set[str] = set()
    tasks = []
    for label, centroid in centroids.items():
        members = np.flatnonzero(labels == label)
        similarity = vectors[members] @ centroid
        nearest = members[np.argsort(-similarity)][:TYPICAL_SHOWN]
        others = [texts[i] for i in np.flatnonzero(labels != label)]
        tasks.append(
            {
                "id": int(label),
                "name": task_name([texts[i] for i in members], others, used),
                "size": len(members),
                "members": [ids[i] for i in members],
                "centroid": [round(float(x), 6) for x in centroid],
                "radius": round(float(similarity.min()), 6),  # its farthest member's similarity to the centroid
                "typical": [texts[i] for i in nearest],
            }
        )
    return {"tasks": tasks, "unclustered": [ids[i] for i in np.flatnonzero(labels == -1)]}


class TaskReview(BaseModel):
    """One task in the review file: the user may rename it or set ``decision: reject``."""

    model_config = ConfigDict(extra="forbid")
    id: int
    name: str = Field(pattern=NAME_PATTERN, description="the specialist's name if it is trained")
    decision: Literal["accept", "reject"] = "accept"
    size: int = 0
    typical: list[str] = []


class ReviewFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: list[TaskReview]


REVIEW_HEADER = """\
# Tasks found in the LLM tier's logged calls. For each: keep 'decision: accept' to consider it for a specialist,
# set 'decision: reject' to leave it to the LLM, or change 'name' (it becomes the specialist's name).
# 'size' and 'typical' are for reading only. The next stage reads this file back.
"""


def same_task(previous: dict[str, Any], centroid: np.ndarray) -> float | None:
    """How close ``centroid`` is to a task of an earlier round (cosine similarity), when it is as close as that
    task's farthest member was, less :data:`MATCH_MARGIN`; None when it is farther (or the task kept no radius)."""
    if "radius" not in previous:
        return None
    similarity = float(np.asarray(previous["centroid"]) @ centroid)
    return similarity if similarity >= previous["radius"] - MATCH_MARGIN else None


def carried_decisions(tasks: list[dict[str, Any]], previous: list[dict[str, Any]]) -> dict[int, tuple[str, str]]:
    """Task id -> (name, decision) carried over from the nearest task of the last round's review, so a new round
    keeps what the user renamed and rejected (each earlier task is carried to one new task at most)."""
    carried: dict[int, tuple[str, str]] = {}
    for task in tasks:
        centroid = np.asarray(task["centroid"])
        near = [(s, p) for p in previous if (s := same_task(p, centroid)) is not None]
        if near:
            _, best = max(near, key=lambda pair: pair[0])
            if (best["name"], best["decision"]) not in carried.values():
                carried[task["id"]] = (best["name"], best["decision"])
    return carried


def write_discovery(
    folder: Path, found: dict[str, Any], settings: DiscoverySettings, model: str, previous: list[dict[str, Any]]
) -> None:
    """``clusters.json`` (members and centroids, for later stages) and ``tasks.yaml`` (for the user), where a task
    that an earlier review (``previous``) named or rejected keeps that name and decision."""
    folder.mkdir(parents=True, exist_ok=True)
    machine = {"embedding_model": model, "settings": settings.__dict__, **found}
    (folder / CLUSTERS_FILE).write_text(json.dumps(machine, indent=1) + "\n")
    carried = carried_decisions(found["tasks"], previous)
    review = []
    for t in found["tasks"]:
        name, decision = carried.get(t["id"], (t["name"], "accept"))
        review.append({"id": t["id"], "name": name, "decision": decision, "size": t["size"], "typical": t["typical"]})
    body = yaml.safe_dump({"tasks": review}, sort_keys=False, width=120, allow_unicode=True)
    (folder / REVIEW_FILE).write_text(REVIEW_HEADER + body)


def accepted_tasks(folder: Path) -> list[dict[str, Any]]:
    """The tasks the review file accepts, under the names it gives, with their members and centroids; a bad edit
    raises SpecError naming the path in the file."""
    return [task for task in reviewed_tasks(folder) if task["decision"] == "accept"]


def reviewed_tasks(folder: Path) -> list[dict[str, Any]]:
    """Every task of the review file, with its ``decision`` and the name it gives; a bad edit raises SpecError
    naming the path in the file."""
    path = folder / REVIEW_FILE
    try:
        review = ReviewFile.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as exc:
        raise SpecError(str(path), issues_from_validation_error(exc, ReviewFile)) from None
    found = {t["id"]: t for t in json.loads((folder / CLUSTERS_FILE).read_text())["tasks"]}
    issues = [
        SpecIssue(f"tasks.{i}.id", t.id, "no task with this id was found", f"use one of {sorted(found)}")
        for i, t in enumerate(review.tasks)
        if t.id not in found
    ]
    names = Counter(t.name for t in review.tasks if t.decision == "accept")
    issues += [
        SpecIssue(f"tasks.{i}.name", t.name, "two accepted tasks have this name", "rename one")
        for i, t in enumerate(review.tasks)
        if names[t.name] > 1 and t.decision == "accept"
    ]
    if issues:
        raise SpecError(str(path), issues)
    return [{**found[t.id], "name": t.name, "decision": t.decision} for t in review.tasks]
