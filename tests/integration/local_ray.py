"""A private local Ray for integration tests that need a real cluster but no fleet."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def private_ray(prefix: str, num_cpus: int) -> Iterator[None]:
    """``ray.init(address="local")`` in its own temp dir (short: Ray's socket paths have a length limit): it never
    joins another Ray on this machine, and its detached actors end with it. ``RAY_ADDRESS`` is restored after."""
    import ray

    saved_address = os.environ.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _temp_dir=temp_dir, logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        if saved_address is not None:
            os.environ["RAY_ADDRESS"] = saved_address
