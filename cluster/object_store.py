"""Object storage in two verbs, for the places that move files to or from s3:// and gs:// (model replicas fetching
adapters, routers shipping usage-log segments, the conversion loop reading them).

boto3 takes its endpoint and credentials from the usual AWS environment variables (``AWS_ENDPOINT_URL`` included);
google-cloud-storage points at an emulator with ``STORAGE_EMULATOR_HOST``. Both are imported on first use, so
nothing here costs an import where only local folders are used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SCHEMES = ("s3", "gs")
_PACKAGES = {"s3": "boto3", "gs": "google-cloud-storage"}


class ObjectStoreError(ValueError):
    """A URI or transfer that failed; the message names the URI and what to do."""


def split_uri(uri: str) -> tuple[str, str, str]:
    """``(scheme, bucket, prefix)`` of ``s3://bucket/prefix`` or ``gs://bucket/prefix``."""
    scheme, _, rest = uri.partition("://")
    bucket, _, prefix = rest.partition("/")
    if scheme not in SCHEMES:
        raise ObjectStoreError(f"{uri}: not an s3:// or gs:// URI")
    if not bucket:
        raise ObjectStoreError(f"{uri} names no bucket")
    return scheme, bucket, prefix.strip("/")


def _client(scheme: str) -> Any:
    try:
        if scheme == "s3":
            import boto3

            return boto3.client("s3")
        from google.cloud import storage

        return storage.Client()
    except ImportError:
        package = _PACKAGES[scheme]
        raise ObjectStoreError(f"{scheme}:// needs {package} on this node: pip install {package}") from None


def _objects(scheme: str, client: Any, bucket: str, prefix: str) -> list[str]:
    under = f"{prefix}/" if prefix else ""
    if scheme == "gs":
        return [blob.name for blob in client.list_blobs(bucket, prefix=under or None)]
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=under)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def download_prefix(uri: str, into: Path) -> list[Path]:
    """Every object under the URI's prefix, into the same relative paths under ``into``; raises when there is none."""
    scheme, bucket, prefix = split_uri(uri)
    client = _client(scheme)
    written: list[Path] = []
    for name in _objects(scheme, client, bucket, prefix):
        relative = name[len(prefix) :].lstrip("/")
        if not relative or relative.endswith("/"):
            continue
        target = into / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if scheme == "s3":
            client.download_file(bucket, name, str(target))
        else:
            client.bucket(bucket).blob(name).download_to_filename(str(target))
        written.append(target)
    if not written:
        raise ObjectStoreError(f"no objects under {uri}")
    return written


def upload_file(path: Path, uri: str, relative: str) -> str:
    """``path`` stored as ``<uri>/<relative>``; the object's URI."""
    scheme, bucket, prefix = split_uri(uri)
    name = f"{prefix}/{relative}" if prefix else relative
    client = _client(scheme)
    if scheme == "s3":
        client.upload_file(str(path), bucket, name)
    else:
        client.bucket(bucket).blob(name).upload_from_filename(str(path))
    return f"{scheme}://{bucket}/{name}"
