"""A small real tool for the demo pipeline: order status over an in-memory table.

Registered in fleet.yaml as ``python: deployments.demo_tools:order_status``. An unknown order id
raises, on purpose: the pipeline result then shows a failing tool (``steps.lookup.error``) instead of hiding it.
"""

from __future__ import annotations

from typing import Any

ORDERS: dict[str, dict[str, Any]] = {
    "A1001": {"status": "shipped", "carrier": "DHL", "eta_days": 2, "refundable": False},
    "A1002": {"status": "processing", "carrier": None, "eta_days": 5, "refundable": True},
    "A1003": {"status": "delivered", "carrier": "UPS", "eta_days": 0, "refundable": True},
    "B2001": {"status": "cancelled", "carrier": None, "eta_days": None, "refundable": False},
}


def order_status(order_id: str, issue: str = "") -> dict[str, Any]:
    """Look an order up by id (case and surrounding spaces ignored); raise LookupError when it does not exist."""
    key = order_id.strip().upper().lstrip("#")
    if key not in ORDERS:
        raise LookupError(f"no order {order_id!r}; known orders: {', '.join(ORDERS)}")
    return {"order_id": key, **ORDERS[key], "issue": issue}
