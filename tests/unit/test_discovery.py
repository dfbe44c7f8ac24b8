"""S3, task discovery: tasks found without being told how many (the real embedding model on generated agent
traffic, PII removed first as the loop does), and the review file the user edits and the CLI reads back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from sklearn.metrics import adjusted_rand_score

from cluster.cli import main
from cluster.convert.curate import curate, write_curated
from cluster.convert.discover import (
    CLUSTERS_FILE,
    REVIEW_FILE,
    DiscoverySettings,
    _merge_near,
    accepted_tasks,
    cluster_embeddings,
)
from cluster.convert.pii import PiiScrubber
from cluster.spec_errors import SpecError
from tests.conversion_traffic import TASKS, TrafficGenerator, llm_tier_records

pytestmark = pytest.mark.timeout(180)


def blob(center: np.ndarray, count: int, rng: np.random.Generator, spread: float = 0.05) -> np.ndarray:
    points = center + rng.normal(0, spread, (count, len(center)))
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def test_small_groups_stay_unclustered_and_labels_follow_size():
    rng = np.random.default_rng(0)
    axes = np.eye(16)
    vectors = np.vstack([blob(axes[0], 12, rng), blob(axes[1], 30, rng), blob(axes[2], 3, rng)])
    labels = cluster_embeddings(vectors, DiscoverySettings(min_cluster_size=5))
    assert set(labels[:12]) == {1} and set(labels[12:42]) == {0} and set(labels[42:]) == {-1}
    assert set(cluster_embeddings(vectors[:3], DiscoverySettings())) == {-1}  # too few to say anything


def test_clusters_with_near_centroids_merge_into_one_task():
    rng = np.random.default_rng(1)
    a = np.eye(8)[0]
    near = (a + 0.4 * np.eye(8)[1]) / np.linalg.norm(a + 0.4 * np.eye(8)[1])  # cosine 0.93 with a
    vectors = np.vstack([blob(a, 10, rng), blob(near, 10, rng), blob(np.eye(8)[2], 10, rng)])
    labels = np.array([0] * 10 + [1] * 10 + [2] * 10)
    merged = _merge_near(vectors, labels, similarity=0.8)
    assert len(set(merged[:20])) == 1 and set(merged[20:]).isdisjoint(set(merged[:20]))


@pytest.fixture(scope="module")
def discovered(tmp_path_factory):
    """Generated traffic of 4 task types with PII, curated and discovered through the CLI."""
    work = tmp_path_factory.mktemp("convert")
    prompts = TrafficGenerator(seed=7).prompts(per_task=15)
    records = llm_tier_records(prompts)
    examples, report = curate(records, PiiScrubber())
    write_curated(work, examples, report)
    assert main(["convert", "discover", "--work", str(work)]) == 0
    truth = {f"r{i}": p.task for i, p in enumerate(prompts)}
    return work, truth


def test_tasks_match_the_generators_task_types(discovered):
    work, truth = discovered
    found = json.loads((work / CLUSTERS_FILE).read_text())
    assigned = {member: task["id"] for task in found["tasks"] for member in task["members"]}
    ids = sorted(truth)
    score = adjusted_rand_score([truth[i] for i in ids], [assigned.get(i, -1) for i in ids])
    assert score >= 0.9, (score, [(t["name"], t["size"]) for t in found["tasks"]])
    assert len(found["tasks"]) == len(TASKS)
    assert all(len(task["centroid"]) == 384 and task["typical"] for task in found["tasks"])


def test_the_review_file_renames_and_rejects_and_bad_edits_name_their_path(discovered, tmp_path):
    work, _ = discovered
    assert [t["name"] for t in accepted_tasks(work)] == [
        t["name"] for t in yaml.safe_load((work / REVIEW_FILE).read_text())["tasks"]
    ]  # untouched: every task is accepted under its suggested name
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / CLUSTERS_FILE).write_text((work / CLUSTERS_FILE).read_text())
    review = yaml.safe_load((work / REVIEW_FILE).read_text())
    review["tasks"][0]["name"] = "intent-router"
    review["tasks"][1]["decision"] = "reject"
    (edited / REVIEW_FILE).write_text(yaml.safe_dump(review))
    kept = accepted_tasks(edited)
    assert kept[0]["name"] == "intent-router" and len(kept) == len(review["tasks"]) - 1
    assert review["tasks"][1]["id"] not in [t["id"] for t in kept]

    review["tasks"][2]["decision"] = "maybe"
    (edited / REVIEW_FILE).write_text(yaml.safe_dump(review))
    with pytest.raises(SpecError) as caught:
        accepted_tasks(edited)
    assert "tasks.2.decision" in str(caught.value) and "'maybe'" in str(caught.value)


def test_task_takes_only_the_named_accepted_tasks_and_an_unknown_name_is_a_usage_error(discovered, capsys):
    from argparse import Namespace

    from cluster.convert.fleet_stages import _tasks_to_take

    work, _ = discovered
    names = [t["name"] for t in accepted_tasks(work)]
    assert [t["name"] for t in _tasks_to_take(Namespace(task=None), work)] == names
    assert [t["name"] for t in _tasks_to_take(Namespace(task=[names[1]]), work)] == [names[1]]
    command = ["convert", "choose", "--spec", "fleet.yaml", "--work", str(work), "--url", "http://127.0.0.1:9"]
    assert main([*command, "--task", "no-such-task"]) == 2  # refused before any call to the fleet
    assert "no-such-task: not an accepted task" in capsys.readouterr().err
