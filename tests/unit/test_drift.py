"""Drift: calls logged since the last round, matched to its reviewed tasks; a cluster that none covers is a new
task, and ``convert drift --run`` starts the round that finds it, keeping the user's renames and rejections (the
real embedder, curation and sealed log)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from cluster.cli import main
from cluster.convert.discover import CLUSTERS_FILE, REVIEW_FILE, DiscoverySettings
from cluster.convert.drift import KnownTask, drift_report
from deployments.router.usage_log import UsageLog
from tests.conversion_traffic import TrafficGenerator, llm_tier_records
from tests.unit.test_discovery import blob
from tests.unit.test_usage_log import FLEET, settings

pytestmark = pytest.mark.timeout(240)


def test_calls_near_known_tasks_match_them_and_a_new_cluster_is_drift():
    rng = np.random.default_rng(3)
    axes = np.eye(16)
    known = {"intent": KnownTask(axes[0], 0.9), "extract": KnownTask(axes[1], 0.9)}
    routine = np.vstack([blob(axes[0], 10, rng), blob(axes[1], 3, rng)])
    report = drift_report(known, routine)
    assert (report.new_calls, dict(report.by_task), report.unmatched, report.drift) == (
        13,
        {"intent": 10, "extract": 3},
        0,
        False,
    )

    few_new = np.vstack([routine, blob(axes[2], 3, rng)])  # under min_cluster_size: not a task yet
    assert drift_report(known, few_new).unmatched == 3 and not drift_report(known, few_new).drift

    new = np.vstack([routine, blob(axes[2], 8, rng), blob(axes[3], 6, rng)])
    report = drift_report(known, new)
    assert report.drift and report.new_tasks == [8, 6] and report.unmatched == 14
    assert report.as_dict()["by_task"] == {"intent": 10, "extract": 3}

    assert drift_report({}, new).new_tasks == [10, 8, 6]  # nothing known yet: every cluster of 5 or more is new
    assert drift_report(known, np.zeros((0, 16))).as_dict()["new_calls"] == 0
    between = blob((axes[0] + axes[2]) / np.sqrt(2), 6, rng)  # about 0.7 from intent's centroid
    assert drift_report(known, between).new_tasks == [6]  # farther than intent's own members (0.9): new
    wide = {**known, "intent": KnownTask(axes[0], 0.6)}
    assert dict(drift_report(wide, between).by_task) == {"intent": 6}  # a task that is spread that wide covers it
    few = DiscoverySettings(min_cluster_size=3)  # discovery's settings decide what a new task is
    assert drift_report(known, few_new, few).new_tasks == [3]


def test_drift_command_reports_a_new_task_and_run_starts_the_round_that_finds_it(tmp_path, capsys):
    assert main(["convert", "keygen", "--out", str(tmp_path / "k")]) == 0
    public = (tmp_path / "k" / "usage-log.pub").read_text().strip()
    spec = tmp_path / "fleet.yaml"
    spec.write_text(json.dumps({**FLEET, "usage_log": {"public_key": public, "destination": str(tmp_path / "log")}}))
    work = tmp_path / "round"
    common = ["--spec", str(spec), "--key", str(tmp_path / "k" / "usage-log.key"), "--work", str(work)]

    def write(records: list[dict], writer: str) -> None:
        log = UsageLog(settings(public, tmp_path / "log"), writer, home=tmp_path)
        for record in records:
            log.record(record)
        log.close()

    traffic = TrafficGenerator(seed=21)
    first = traffic.prompts(12, ("intent", "extract", "sentiment"))
    write(llm_tier_records(first, 0), "router-a")
    assert main(["convert", "run", *common]) == 0
    kind = {f"r{i}": p.task for i, p in enumerate(first)}
    review = yaml.safe_load((work / REVIEW_FILE).read_text())
    clusters = {t["id"]: t for t in json.loads((work / CLUSTERS_FILE).read_text())["tasks"]}
    assert len(review["tasks"]) == 3
    for task in review["tasks"]:  # the user's review: sentiment stays with the LLM, intent gets a name
        found = {kind[m] for m in clusters[task["id"]]["members"]}
        assert len(found) == 1, found
        task["decision"] = "reject" if found == {"sentiment"} else "accept"
        task["name"] = "intent-router" if found == {"intent"} else task["name"]
    (work / REVIEW_FILE).write_text(yaml.safe_dump(review))
    capsys.readouterr()

    later = traffic.prompts(6, ("intent",)) + traffic.prompts(6, ("sentiment",)) + traffic.prompts(10, ("summary",))
    write(llm_tier_records(later, 100), "router-b")
    assert main(["convert", "drift", *common, "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["new_calls"] == 22 and report["drift"], report  # the 36 calls of the round are not new
    assert report["by_task"]["intent-router"] == 6, report
    assert sum(n for name, n in report["by_task"].items() if name.endswith("(rejected)")) == 6, report
    assert report["unmatched"] == 10 and report["new_tasks"] == [10], report  # rejected calls are not drift

    assert main(["convert", "drift", *common, "--run"]) == 0  # drift: a new round over the whole log
    assert "drift: a new round is due" in capsys.readouterr().out
    again = {t["name"]: t["decision"] for t in yaml.safe_load((work / REVIEW_FILE).read_text())["tasks"]}
    assert len(again) == 4 and again["intent-router"] == "accept", again  # the rename survives the new round
    assert sorted(again.values()) == ["accept", "accept", "accept", "reject"], again  # and so does the rejection
