"""Object storage, against local servers from PyPI started here (moto's S3 server, gcp-storage-emulator) with the
clients the fleet uses (boto3, google-cloud-storage) pointed at them by their usual environment variables: a
replica's fetch of ``s3://`` and ``gs://`` adapters, and a router's usage log shipped to ``s3://``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.adapter_files import AdapterFileError
from cluster.convert.log_files import summarize_log
from cluster.convert.sealed_log import generate_key_pair
from cluster.spec import AdapterSpec, UsageLogSpec
from deployments.model.adapters import fetch_adapter
from deployments.router.usage_log import UsageLog
from tests.object_stores import gcs_server, s3_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
FILES = {"adapter_config.json": b'{"peft_type": "LORA", "r": 8}', "adapter_model.safetensors": b"weights" * 1000}


@pytest.fixture
def s3(monkeypatch) -> Iterator[dict[str, str]]:
    with s3_server() as env:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        yield env


@pytest.fixture
def gcs(monkeypatch) -> Iterator[dict[str, str]]:
    with gcs_server() as env:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        yield env


def test_an_s3_adapter_is_downloaded_whole_and_a_missing_prefix_is_a_clear_error(s3, tmp_path: Path) -> None:
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket="adapters")
    for name, data in FILES.items():
        client.put_object(Bucket="adapters", Key=f"intent/v3/{name}", Body=data)
    client.put_object(Bucket="adapters", Key="intent/v30/adapter_config.json", Body=b"{}")  # a sibling prefix
    folder = fetch_adapter(AdapterSpec(source="s3://adapters/intent/v3", version="3"), tmp_path)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == FILES
    with pytest.raises(AdapterFileError, match="no objects under s3://adapters/intent/v4"):
        fetch_adapter(AdapterSpec(source="s3://adapters/intent/v4"), tmp_path)


def test_a_gcs_adapter_is_downloaded_whole(gcs, tmp_path: Path) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test", credentials=AnonymousCredentials())
    bucket = client.create_bucket("adapters")
    for name, data in FILES.items():
        bucket.blob(f"intent/{name}").upload_from_string(data)
    folder = fetch_adapter(AdapterSpec(source="gs://adapters/intent"), tmp_path)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == FILES


def test_usage_log_segments_reach_s3_and_read_back_with_the_key(s3, tmp_path: Path) -> None:
    import boto3

    boto3.client("s3").create_bucket(Bucket="usage")
    private, public = generate_key_pair(tmp_path / "keys")
    settings = UsageLogSpec(public_key=public, destination="s3://usage/fleet-a", segment_max_age_s=0.3)
    log = UsageLog(settings, "router-a", home=tmp_path)
    log.record({"model": "big", "specialist": None, "pipeline": None, "escalation_reason": None, "error": None})
    time.sleep(1.0)  # the first segment closes at its age and is uploaded
    log.record({"model": "big", "specialist": "s", "pipeline": None, "escalation_reason": None, "error": None})
    log.close()
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="usage")["Contents"]]
    assert len(keys) == 2 and all(k.startswith("fleet-a/router-a/") and k.endswith(".slog") for k in keys)
    assert not list((tmp_path / "usage-log-staging" / "router-a").iterdir())  # uploaded copies are deleted
    summary = summarize_log("s3://usage/fleet-a", tmp_path / "read", private)
    assert (summary["streams"], summary["segments"], summary["records"]) == (1, 2, 2)
