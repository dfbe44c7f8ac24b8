"""Engines sharing a GPU start one after another; engines on different GPUs do not wait for each other."""

import itertools
import multiprocessing
import time

from deployments.model.gpu_start_lock import gpu_start_lock

HOLD_S = 0.4


def _start(gpu_ids, lock_dir, queue):
    with gpu_start_lock(gpu_ids, lock_dir):
        began = time.monotonic()
        time.sleep(HOLD_S)
        queue.put((began, time.monotonic()))


def intervals(assignments, lock_dir):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_start, args=(ids, lock_dir, queue)) for ids in assignments]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(20)
    return sorted(queue.get(timeout=5) for _ in procs)


def test_engines_on_one_gpu_start_one_after_another(tmp_path):
    spans = intervals([["0"], ["0"], ["1", "0"]], tmp_path)
    for (_, first_end), (second_start, _) in itertools.pairwise(spans):
        assert second_start >= first_end - 0.01, spans


def test_engines_on_different_gpus_start_together(tmp_path):
    (_start_a, end_a), (start_b, _) = intervals([["0"], ["1"]], tmp_path)
    assert start_b < end_a, "engines on different GPUs should not wait for each other"


def test_no_gpu_means_no_waiting(tmp_path):
    with gpu_start_lock([], tmp_path):
        assert list(tmp_path.iterdir()) == []
