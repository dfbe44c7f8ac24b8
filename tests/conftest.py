"""Hooks for the whole run, every tier."""

from __future__ import annotations

import os
import sys

import pytest

_session: pytest.Session | None = None
_FINISHED = (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.NO_TESTS_COLLECTED)


def pytest_sessionfinish(session: pytest.Session) -> None:
    global _session  # noqa: PLW0603 - read once, by the last hook of the run
    _session = session


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the process with pytest's own exit status once everything is reported, skipping the interpreter's
    teardown. The run loads torch, spaCy, vLLM's client and Ray's gRPC threads into this one process; CI once saw
    it segfault in that teardown after printing "1114 passed", which turns a finished run red (exit 139). What
    the run started is already stopped by its fixtures; a Ray driver they left connected is shut down here."""
    if _session is None or _session.exitstatus not in _FINISHED:
        return  # a usage error or an interruption: pytest still has something to print after this hook
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.stop_global_capturing()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(_session.exitstatus))
