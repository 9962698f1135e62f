"""Checks on answers: problem+json bodies, and raw HTTP/1.1 responses read off a socket."""

from __future__ import annotations

from typing import Any

import httpx

PROBLEM_FIELDS = {"type", "title", "status", "detail", "code", "request_id"}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is a complete problem+json answer with this status and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert set(problem) >= PROBLEM_FIELDS, problem
    assert problem["status"] == status
    assert problem["code"] == code, problem
    assert problem["type"] == f"urn:ephemeral-broker:error:{code}"
    assert problem["request_id"] == response.headers["x-request-id"]
    assert problem["detail"] and problem["title"]
    return problem


def split_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP/1.1 response: status, headers (names lower-cased), and what follows them."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body
