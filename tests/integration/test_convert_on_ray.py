"""S2 and S3's batch work through Ray Data on a real (private, local) Ray: the same curated examples, report and
embeddings as in one process, and the CLI stages with ``--address`` writing the same files."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

from cluster.cli import main
from cluster.convert.batch import curate_on_ray, embed_on_ray
from cluster.convert.curate import CURATED_FILE, REPORT_FILE, curate
from cluster.convert.embed import Embedder, task_text
from cluster.convert.pii import PiiScrubber
from deployments.router.usage_log import UsageLog
from tests.conversion_traffic import TrafficGenerator, llm_tier_records
from tests.integration.local_ray import private_ray
from tests.unit.test_curation import PLANTED, records
from tests.unit.test_usage_log import FLEET, settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[str]:
    with private_ray("scr", num_cpus=4):
        yield ray.get_runtime_context().gcs_address


def log_records() -> list[dict]:
    """The curation test's six records (PII of every kind, a repeat, a contract break, a failure, a tool call)
    and 24 generated calls of four tasks."""
    return records() + llm_tier_records(TrafficGenerator(seed=5).prompts(6), start=100)


def test_curation_and_embeddings_on_ray_data_equal_the_local_ones(local_ray):
    local_examples, local_report = curate(log_records(), PiiScrubber())
    examples, report = curate_on_ray(log_records())
    assert examples == local_examples and report.as_dict() == local_report.as_dict()
    assert report.as_dict()["dropped"] == {"duplicate": 1, "invalid": 1, "failed": 1}
    assert not [kind for kind, value in PLANTED.items() if value in json.dumps(examples)]

    texts = [task_text(example) for example in examples]
    vectors = embed_on_ray(texts)
    assert vectors.shape == (len(texts), 384)
    np.testing.assert_allclose(vectors, Embedder().embed(texts), atol=1e-5)
    nothing, empty = curate_on_ray([])
    assert nothing == [] and empty.as_dict() == {"read": 0, "kept": 0, "dropped": {}, "pii_removed": {}}
    assert embed_on_ray([]).shape == (0, 384)


def test_curate_and_discover_commands_with_an_address_write_what_local_ones_write(local_ray, tmp_path):
    assert main(["convert", "keygen", "--out", str(tmp_path / "k")]) == 0
    public = (tmp_path / "k" / "usage-log.pub").read_text().strip()
    log = UsageLog(settings(public, tmp_path / "log"), "router-a", home=tmp_path)
    for record in log_records():
        log.record(record)
    log.close()
    spec = tmp_path / "fleet.yaml"
    spec.write_text(json.dumps({**FLEET, "usage_log": {"public_key": public, "destination": str(tmp_path / "log")}}))
    key = ["--spec", str(spec), "--key", str(tmp_path / "k" / "usage-log.key")]
    assert main(["convert", "curate", *key, "--work", str(tmp_path / "here")]) == 0
    assert main(["convert", "curate", *key, "--work", str(tmp_path / "ray"), "--address", local_ray]) == 0
    for name in (CURATED_FILE, REPORT_FILE):
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "here" / name).read_text(), name
    on_ray = ["--spec", str(spec), "--work", str(tmp_path / "ray"), "--address", local_ray]
    assert main(["convert", "discover", *on_ray]) == 0
    assert json.loads((tmp_path / "ray" / "clusters.json").read_text())["tasks"]
