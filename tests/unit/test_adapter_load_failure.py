"""An adapter that did not load: refused for good when its files or the engine say no, tried again when fetching it
failed on the way (a spec adapter's verdict is then not kept, and a registration answers 503)."""

from __future__ import annotations

import pytest

from cluster.adapter_files import AdapterFileError
from deployments.model.server import load_failure


def error_from(module: str, name: str, *bases: type[Exception]) -> Exception:
    """An exception of a client library's own class (by module and name), without importing the library."""
    return type(name, bases or (Exception,), {"__module__": module})("boom")


SERVER_ERROR = type(error_from("google.api_core.exceptions", "ServerError"))  # google-cloud's 5xx base class


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (AdapterFileError("adapter_config.json is missing"), False),  # the files: final
        (ValueError("LoRA rank 32 is greater than max_lora_rank 16."), False),  # the engine: final
        (RuntimeError("engine refused"), False),
        (ConnectionResetError("reset by peer"), True),  # the network
        (TimeoutError("timed out"), True),
        (OSError("No space left on device"), True),  # the disk
        (error_from("botocore.exceptions", "EndpointConnectionError"), True),
        (error_from("botocore.exceptions", "ClientError"), False),  # S3's own answer, e.g. NoSuchBucket
        (error_from("google.api_core.exceptions", "ServiceUnavailable", SERVER_ERROR), True),
        (error_from("google.api_core.exceptions", "NotFound"), False),
    ],
)
def test_final_or_worth_another_try(exc: Exception, retry: bool) -> None:
    answer = load_failure(exc)
    assert answer["error"] and bool(answer.get("retry")) is retry, answer


def test_the_engines_words_are_kept_without_its_wrapper() -> None:
    wrapped = RuntimeError("Call failed with error 'LoRA rank 32 is greater than max_lora_rank 16.', please check")
    assert load_failure(wrapped) == {"error": "LoRA rank 32 is greater than max_lora_rank 16."}
