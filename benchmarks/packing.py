"""How many GPUs the planner uses, against one-model-per-GPU and the lower bounds. Run by hand:

    .venv/bin/python -m benchmarks.packing [--fleets 100] [--seed 0]

On examples/production.yaml and on random fleets (seeded, reproducible): planner GPUs / lower bound
(ceil(sum of engine GiB / usable GPU GiB) plus whole-GPU groups), planner GPUs / packing bound (Martello-Toth L2 on
the shares: no packing of them can do better), and one-model-per-GPU / planner GPUs (what sharing saves).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cluster.memory import estimate_engine_memory  # noqa: E402
from cluster.placement import HEADROOM, PlacementError, Plan, plan_fleet  # noqa: E402
from cluster.spec import FleetSpec, ModelSpec, load_spec, parse_spec  # noqa: E402

SLM_SIZES_B = [0.36, 0.49, 1.24, 1.54, 1.71, 2.61, 3.09, 3.21, 3.82, 4.19, 7.62, 8.03]
LLM_SIZES_B = [32.8, 70.6, 72.7]
L4_USABLE_GIB = 22.5 * HEADROOM


def random_slm(rng: random.Random) -> dict:
    """A small model that fits one L4 (draws again until it does): the benchmark measures packing, not errors."""
    while True:
        max_replicas = rng.randint(1, 4)
        model = {
            "source": "org/slm",
            "params_b": rng.choice(SLM_SIZES_B),
            "max_model_len": rng.choice([2048, 4096, 8192]),
            "concurrent_seqs": rng.choice([2, 4, 8, 16]),
            "autoscaling": {"min_replicas": rng.randint(0, max_replicas), "max_replicas": max_replicas},
        }
        if estimate_engine_memory("slm", ModelSpec.model_validate(model)).total_gib <= L4_USABLE_GIB:
            return model


def random_fleet(rng: random.Random) -> FleetSpec:
    """10-30 SLMs on an L4 pool and 0-2 LLMs on an H100 pool, sized like production fleets."""
    models = {}
    for i in range(rng.randint(10, 30)):
        models[f"slm-{i}"] = random_slm(rng)
    for i in range(rng.randint(0, 2)):
        models[f"llm-{i}"] = {
            "source": "org/llm",
            "tier": "llm",
            "params_b": rng.choice(LLM_SIZES_B),
            "max_model_len": 8192,
            "concurrent_seqs": rng.choice([8, 16]),
        }
    pools = {
        "l4": {"accelerator": "L4", "gpus_per_node": 4, "gpu_memory_gib": 22.5, "max_nodes": 40, "tiers": ["slm"]},
        "h100": {"accelerator": "H100", "gpus_per_node": 8, "gpu_memory_gib": 79.6, "max_nodes": 4, "tiers": ["llm"]},
    }
    return parse_spec({"models": models, "pools": pools})


def ratios(plan: Plan) -> tuple[float, float, float]:
    t = plan.totals()
    return (
        t["gpus_used"] / t["lower_bound"],
        t["gpus_used"] / t["packing_bound"],
        t["one_model_per_gpu"] / t["gpus_used"],
    )


def report_production() -> None:
    plan = plan_fleet(load_spec(ROOT / "examples" / "production.yaml"))
    t = plan.totals()
    vs_lower, vs_packing, saved = ratios(plan)
    print("examples/production.yaml")
    for pool in plan.pools:
        print(
            f"  pool {pool.pool}: {pool.gpus_used} GPUs; one-model-per-GPU {pool.one_model_per_gpu}; "
            f"lower bound {pool.lower_bound}; packing bound {pool.packing_bound}; memory floor {pool.memory_floor}"
        )
    print(
        f"  total: planner {t['gpus_used']} GPUs, one-model-per-GPU {t['one_model_per_gpu']}, "
        f"lower bound {t['lower_bound']}, packing bound {t['packing_bound']}, memory floor {t['memory_floor']}"
    )
    print(
        f"  planner / lower bound = {vs_lower:.3f}  planner / packing bound = {vs_packing:.3f}  "
        f"one-model-per-GPU / planner = {saved:.2f}x"
    )


def report_random(count: int, seed: int) -> None:
    rng = random.Random(seed)
    rows, failed, started = [], 0, time.perf_counter()
    for _ in range(count):
        try:
            rows.append(ratios(plan_fleet(random_fleet(rng))))
        except PlacementError:
            failed += 1
    elapsed = time.perf_counter() - started
    print(f"\n{count} random fleets (seed {seed}): {len(rows)} planned, {failed} impossible, {elapsed:.2f} s in all")
    labels = (("planner / lower bound", max), ("planner / packing bound", max), ("one-model-per-GPU / planner", min))
    for (label, worst), values in zip(labels, zip(*rows, strict=True), strict=True):
        print(
            f"  {label:28s} mean {statistics.mean(values):.3f}  median {statistics.median(values):.3f}  "
            f"worst {worst(values):.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleets", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    report_production()
    report_random(args.fleets, args.seed)


if __name__ == "__main__":
    main()
