"""S6, promotion: a gated specialist takes over the LLM tier's calls of its task, in two phases, as pure rules.

A promotion names the task's centroid (in the loop's embedding space), the LLM-tier model whose calls it may take,
the specialist that takes them, and the similarity a call's task text must reach to count as the task.
- ``shadow``: matching calls are still answered by the LLM; the specialist answers the same request on the side
  and agreement is counted. Once ``promote_after`` samples agree at ``min_agreement``, the promotion goes live.
- ``live``: matching calls are served by the specialist (labelled in the answer; escalation to the LLM stays the
  safety net), and a ``shadow_rate`` share is also sent to the LLM to keep measuring. When agreement or validity
  falls below the thresholds, the promotion is rolled back and the task's calls reach the LLM again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cluster.spec import NAME_PATTERN, ConversionSpec, FleetSpec

Phase = Literal["shadow", "live"]


class Promotion(BaseModel):
    """One task's promotion, as stored in the fleet state (``promotions`` namespace) and shown by ``diff``."""

    model_config = ConfigDict(extra="forbid")
    task: str = Field(pattern=NAME_PATTERN)
    specialist: str = Field(description="the gated adapter specialist that takes the task's calls")
    model: str = Field(description="the LLM-tier model whose calls it takes")
    centroid: list[float] = Field(min_length=8)
    min_similarity: float = Field(gt=0, lt=1, description="cosine similarity to the centroid a call needs")
    embedding_model: str
    phase: Phase = "shadow"


@dataclass(frozen=True)
class Agreement:
    samples: int
    agreed: int
    valid: int

    def rate(self) -> float:
        return self.agreed / self.samples if self.samples else 0.0

    def validity(self) -> float:
        return self.valid / self.samples if self.samples else 0.0


def best_match(promotions: list[Promotion], vector: np.ndarray) -> tuple[Promotion, float] | None:
    """The promotion whose centroid the (unit) vector is most similar to, if it reaches that promotion's bar."""
    best: tuple[Promotion, float] | None = None
    for promotion in promotions:
        similarity = float(np.asarray(promotion.centroid, dtype=np.float32) @ vector)
        if similarity >= promotion.min_similarity and (best is None or similarity > best[1]):
            best = (promotion, similarity)
    return best


def next_phase(phase: Phase, stats: Agreement, policy: ConversionSpec) -> Phase | Literal["rollback"]:
    """Where a promotion goes given the agreement measured in its current phase."""
    good = stats.rate() >= policy.min_agreement and stats.validity() >= policy.min_validity
    if phase == "shadow":
        return "live" if stats.samples >= policy.promote_after and good else "shadow"
    if stats.samples >= policy.min_samples_for_rollback and not good:
        return "rollback"
    return "live"


def similarity_bar(own: list[float], others: list[float], margin: float = 0.05) -> float:
    """The bar a call must reach to count as the task: just under what nearly all of the task's own examples reach
    (their 5th percentile, less a margin), or halfway between that and the other tasks' nearest example when the
    margin would let it in."""
    floor = float(np.percentile(own, 5))
    bar = floor - margin
    if others and max(others) >= bar:
        bar = (floor + max(others)) / 2
    return round(min(0.99, max(0.05, bar)), 4)


def promotion_misfit(spec: FleetSpec, promotion: Promotion) -> str | None:
    """Why a promotion cannot be served by a spec (its specialist or model is gone, or the model is no LLM)."""
    model = spec.models.get(promotion.model)
    if model is None or model.tier != "llm":
        return f"'{promotion.model}' is not an LLM-tier model of the fleet"
    if promotion.specialist not in spec.specialists:
        return f"no specialist named '{promotion.specialist}' (register its adapter first)"
    if spec.models[spec.specialists[promotion.specialist].model].tier == "llm":
        return f"specialist '{promotion.specialist}' runs on the LLM tier itself"
    return None


def promotion_for(
    task: str, specialist: str, model: str, *, own: np.ndarray, others: np.ndarray, embedding_model: str
) -> Promotion:
    """A new (shadow) promotion of a task from its examples' unit vectors and the other tasks' ones."""
    centroid = own.mean(axis=0)
    centroid = centroid / (np.linalg.norm(centroid) or 1.0)
    bar = similarity_bar((own @ centroid).tolist(), (others @ centroid).tolist() if len(others) else [])
    return Promotion(
        task=task,
        specialist=specialist,
        model=model,
        centroid=[round(float(x), 6) for x in centroid],
        min_similarity=bar,
        embedding_model=embedding_model,
    )
