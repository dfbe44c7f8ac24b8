"""Admin routes of promotions (``admin`` scope): list, put (a new promotion starts in shadow), remove.

A promotion is fleet state in the shared store (``promotions`` namespace), like an adapter registration: every
router replica serves a change within a second, ``slmfleet diff`` shows it and ``apply`` keeps it. One that no
longer fits the spec (its specialist or LLM gone) is set aside and listed with the reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from cluster.convert.promotion import Promotion, promotion_misfit
from cluster.spec import FleetSpec
from deployments.router.openai_api import error_response


@dataclass
class PromotionAdmin:
    served_spec: Callable[[], FleetSpec]
    set_aside: Callable[[], dict[str, str]]
    entries: Callable[[], Awaitable[dict[str, Any]]]
    put: Callable[[str, dict[str, Any]], Awaitable[None]]
    delete: Callable[[str], Awaitable[bool]]
    refresh: Callable[[], Awaitable[None]]


def add_promotion_routes(app: FastAPI, admin: PromotionAdmin) -> None:
    @app.get("/admin/promotions")
    async def list_promotions() -> dict[str, Any]:
        entries = await admin.entries()
        listed = [{k: v for k, v in e.items() if k != "centroid"} for e in entries.values()]
        return {"promotions": listed, "set_aside": admin.set_aside()}

    @app.put("/admin/promotions/{task}")
    async def put_promotion(task: str, body: Promotion) -> Response:
        if body.task != task:
            return error_response(400, f"the body's task '{body.task}' is not '{task}'", "task_mismatch", "task")
        reason = promotion_misfit(admin.served_spec(), body)
        if reason is not None:
            return error_response(400, f"cannot promote '{task}': {reason}", "not_promotable", "specialist")
        await admin.put(task, body.model_dump())
        await admin.refresh()
        return JSONResponse({"task": task, "phase": body.phase, "specialist": body.specialist}, status_code=200)

    @app.delete("/admin/promotions/{task}")
    async def remove_promotion(task: str) -> Response:
        if not await admin.delete(task):
            return error_response(404, f"no promotion of task '{task}'", "promotion_not_found", "task")
        await admin.refresh()
        return JSONResponse({"task": task, "deleted": True})
