"""Adapter affinity's rule (pure): holders first, unless they are hot; the Serve side is in the integration tier."""

from __future__ import annotations

import pytest
from ray._common.utils import import_attr

from cluster.adapter_affinity import affinity_candidates
from cluster.deploy_options import ADAPTER_ROUTER_CLASS
from deployments.model.adapter_router import AdapterAffinityRouter


@pytest.mark.parametrize(
    ("holders", "queues", "ranks"),
    [
        ({"a"}, {"a": 0, "b": 0}, [["a"], ["b"]]),  # quiet: the holder, the other only when it is full
        ({"a"}, {"a": 2, "b": 0}, [["a"], ["b"]]),  # 2 <= 2 x 0 + 2
        ({"a"}, {"a": 5, "b": 1}, [["b"], ["a"]]),  # 5 > 2 x 1 + 2: hot, the others first
        ({"a", "b"}, {"a": 9, "b": 1, "c": 2}, [["b"], ["a", "c"]]),  # the cool holder first
        ({"a", "b"}, {"a": 9, "b": 9, "c": 1}, [["c"], ["a", "b"]]),  # both holders hot
        ({"a", "b"}, {"b": 9, "a": 0}, [["b", "a"]]),  # everyone holds it: everyone, in the given order
        (set(), {"a": 0, "b": 5}, [["a", "b"]]),  # nobody holds it: everyone (the chosen one loads it)
        ({"gone"}, {"a": 0}, [["a"]]),  # a holder that is no longer a candidate
        ({"a"}, {"a": None, "b": None}, [["a"], ["b"]]),  # not measured yet: counted as empty
    ],
)
def test_affinity_candidates(holders: set[str], queues: dict, ranks: list[list[str]]) -> None:
    assert affinity_candidates(list(queues), holders, queues) == ranks


def test_replica_ids_need_not_be_ordered() -> None:
    class Unordered:  # Serve's ReplicaID has no ordering
        def __init__(self, name: str) -> None:
            self.name = name

    a, b = Unordered("a"), Unordered("b")
    assert affinity_candidates([a, b], {a}, {a: 9, b: 0}) == [[b], [a]]
    assert affinity_candidates([a, b], {a}, {a: 1, b: 0}) == [[a], [b]]


def test_the_rendered_router_class_path_names_the_router() -> None:
    assert import_attr(ADAPTER_ROUTER_CLASS) is AdapterAffinityRouter
