"""Targets and their verdicts.

A target compares one measured value with a bound (`>=` or `<=`).
"""

from __future__ import annotations

from typing import Any


def target(name: str, value: float, op: str, bound: float, cross_check: float, cross_check_is: str) -> dict[str, Any]:
    """One row of the targets table (and of the JSON's `targets`)."""
    ok = value >= bound if op == ">=" else value <= bound
    return {"target": name, "value": value, "bound": f"{op} {bound:g}", "pass": ok, "cross_check": cross_check,
            "cross_check_is": cross_check_is}
