"""OpenAPI `responses=` entries: the problem+json errors each route can answer with."""

from __future__ import annotations

from typing import Any

from ephemeral_broker.errors import ERRORS, PROBLEM_CONTENT_TYPE


def problems(*codes: str) -> dict[int | str, dict[str, Any]]:
    """One OpenAPI response per status, listing the stable codes it may carry."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(ERRORS[code][0], []).append(code)
    return {
        status: {
            "description": "Problem details; `code` is one of: " + ", ".join(sorted(names)),
            "content": {
                PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetail"}}
            },
        }
        for status, names in sorted(by_status.items())
    }


# Any route may answer these: the middleware's limits, the drain gate, and auth.
COMMON = ("draining", "internal_error")
WITH_BODY = (*COMMON, "invalid_json", "too_large", "unsupported_encoding", "validation_error")
