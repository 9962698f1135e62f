"""The rules the server enforces, written into the OpenAPI document FastAPI generates.

FastAPI describes parameters and bodies by their Python types; the broker checks more than
types (names, TTL bounds, 64-bit integers, header formats, auth, limits before the app). This
adds each such rule where a client generator or a schema-driven tester looks for it:

- names (path `key`, `pool`, `worker_id`; query `prefix`, `worker_id`; body `worker_id`):
  length, a pattern without `/`, whitespace or control characters, and not `.` or `..`;
- `ttl_ms` from 1 to the broker's max_ttl, `by` and versions within signed 64 bits;
- `If-Match` / `If-None-Match`: `*` or a list of quoted versions;
- security schemes for `Authorization: Bearer` and the HMAC signature headers, required by
  every operation but the probes when the broker has a secret;
- the answers the broker gives before a route runs: 400 `bad_request`, 401 `auth_failed`, 408
  `request_timeout`, 413 `too_large`, 431 `headers_too_large`, 503 `too_many_connections`;
- response headers: `ETag` where a route sets it, `Retry-After` on every 503,
  `X-Request-ID` on every answer.
"""

from __future__ import annotations

from typing import Any, Final

from ephemeral_broker.api.schemas import INT64_MAX, INT64_MIN
from ephemeral_broker.errors import PROBLEM_CONTENT_TYPE

# No '/', no whitespace, no C0/DEL/C1 control character (ECMA-262 regex, as JSON Schema uses).
NAME_PATTERN: Final = r"^[^/\s\x00-\x1f\x7f-\x9f]+$"
PREFIX_PATTERN: Final = r"^[^/\s\x00-\x1f\x7f-\x9f]*$"
# Empty is allowed: an empty header is the same as none (an empty list of entity tags).
ETAG_LIST_PATTERN: Final = r'^(|\*|(W/)?"[0-9]{1,20}"([ \t]*,[ \t]*(W/)?"[0-9]{1,20}")*)$'
_NAME_PARAMS: Final = frozenset(
    {("path", "key"), ("path", "pool"), ("path", "worker_id"), ("query", "worker_id")}
)
_PROBES: Final = frozenset({"/healthz", "/readyz"})
_PROBLEM: Final = {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetail"}}}
_HEADER_DOCS: Final = {
    "ETag": ('`"<version>"` of the key as it is now.', {"type": "string", "pattern": '^"[0-9]+"$'}),
    "Retry-After": ("Seconds after which to try again.", {"type": "integer", "minimum": 0}),
    "X-Request-ID": (
        "The request's own id when it sent a valid one, else a new one.",
        {"type": "string", "pattern": r"^[A-Za-z0-9._:-]{1,128}$"},
    ),
}
# Answers any operation may get before its route runs, by status: the codes they carry.
_BEFORE_ROUTE: Final = {
    "400": ["bad_request"],
    "408": ["request_timeout"],
    "431": ["headers_too_large"],
    "503": ["too_many_connections"],
}
_WITH_BODY_BEFORE_ROUTE: Final = {"413": ["too_large"]}
_ETAG_STATUSES: Final = ("200", "201", "304")


def _name_schema(max_key_length: int, *, prefix: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "string",
        "maxLength": max_key_length,
        "pattern": PREFIX_PATTERN if prefix else NAME_PATTERN,
        "description": f"At most {max_key_length} bytes of UTF-8 (max_key_length); maxLength "
        "counts characters, so it is exact for ASCII names. No '/', whitespace or control "
        "characters" + ("." if prefix else ", and not '.' or '..'."),
    }
    if not prefix:
        schema["minLength"] = 1
        schema["not"] = {"enum": [".", ".."]}
    return schema


def _header(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/headers/{name}"}


def _integer_branch(schema: dict[str, Any]) -> dict[str, Any]:
    """The `integer` member of an Optional's anyOf, or the schema itself."""
    for member in schema.get("anyOf", ()):
        if member.get("type") == "integer":
            return dict(member)
    return schema


def _bound(prop: dict[str, Any], minimum: int, maximum: int) -> None:
    target = _integer_branch(prop)
    target["minimum"], target["maximum"] = minimum, maximum
    if "anyOf" in prop:
        prop["anyOf"] = [target if m.get("type") == "integer" else m for m in prop["anyOf"]]


def _problem_response(codes: list[str], existing: dict[str, Any] | None) -> dict[str, Any]:
    if existing is not None:
        described = existing.get("description", "")
        new = [code for code in codes if code not in described]
        if new:
            existing["description"] = described + (", " if described else "") + ", ".join(new)
        return existing
    return {
        "description": "Problem details; `code` is one of: " + ", ".join(codes),
        "content": _PROBLEM,
    }


UINT64_MAX: Final = 2**64 - 1
_JSON_VALUE_REF: Final = {"$ref": "#/components/schemas/JsonValue"}
JSON_VALUE: Final = {
    "description": "Any JSON value. Integers are kept exactly, so only those from -2^63 to "
    "2^64-1 are accepted (larger ones would lose digits: send them as strings); a number with "
    "no fractional part is an integer however it is written (1e20 is refused, 1.5e20 too: it "
    "is 150000000000000000000); nesting is at most 64 levels deep.",
    "anyOf": [
        {"type": "null"},
        {"type": "boolean"},
        {"type": "string"},
        {"type": "integer", "minimum": -(2**63), "maximum": 2**64 - 1},
        {"type": "number", "not": {"type": "integer"}},
        {"type": "array", "items": _JSON_VALUE_REF},
        {"type": "object", "additionalProperties": _JSON_VALUE_REF},
    ],
}
_PYDANTIC_BOUNDS: Final = {
    "ge": "minimum",
    "le": "maximum",
    "gt": "exclusiveMinimum",
    "lt": "exclusiveMaximum",
}


def _standard_bounds(node: Any) -> None:
    """pydantic writes a bound on an Optional validated through a BeforeValidator as `ge`/`le`,
    which JSON Schema does not know (a tool would ignore the bound): name them as it does."""
    if isinstance(node, dict):
        if node.get("type") in ("integer", "number"):
            for ours, standard in _PYDANTIC_BOUNDS.items():
                if ours in node:
                    node[standard] = node.pop(ours)
        for child in node.values():
            _standard_bounds(child)
    elif isinstance(node, list):
        for child in node:
            _standard_bounds(child)


def apply_rules(
    schema: dict[str, Any], *, max_key_length: int, max_ttl: int, require_ttl: bool
) -> None:
    """Write the server's rules into `schema` (FastAPI's generated document), in place."""
    _standard_bounds(schema)
    components = schema.setdefault("components", {})
    components["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "Only when the broker has a secret: `Authorization: Bearer <secret>`.",
        },
        "hmacSignature": {
            "type": "apiKey",
            "in": "header",
            "name": "X-Broker-Signature",
            "description": "Only when the broker has a secret: hex HMAC-SHA256(secret, "
            '"<timestamp>\\n<METHOD>\\n<path?query as sent>\\n<hex sha256 of body>"), with '
            "X-Broker-Timestamp.",
        },
        "hmacTimestamp": {
            "type": "apiKey",
            "in": "header",
            "name": "X-Broker-Timestamp",
            "description": "Unix epoch milliseconds, within ±30 s of the broker's clock.",
        },
    }
    components["headers"] = {
        name: {"description": description, "schema": header_schema}
        for name, (description, header_schema) in _HEADER_DOCS.items()
    }
    # Either credential, or none at all when the broker runs without a secret.
    security: list[dict[str, list[str]]] = [
        {"bearer": []},
        {"hmacSignature": [], "hmacTimestamp": []},
        {},
    ]
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            _operation_rules(path, method, operation, security, max_key_length)
    for model in components.get("schemas", {}).values():
        properties = model.get("properties", {})
        if "ttl_ms" in properties and model.get("title", "").endswith("Request"):
            _bound(properties["ttl_ms"], 1, max_ttl)
        if "by" in properties:
            _bound(properties["by"], INT64_MIN, INT64_MAX)
        if "worker_id" in properties and model.get("title", "").endswith("Request"):
            declared = properties["worker_id"]
            properties["worker_id"] = _name_schema(max_key_length) | {
                key: declared[key] for key in ("title", "examples") if key in declared
            }
    # A value is any JSON value, but the broker refuses integers it could not keep exactly.
    schemas = components.setdefault("schemas", {})
    schemas["JsonValue"] = JSON_VALUE
    value = schemas.get("SetKeyRequest", {}).get("properties", {}).get("value")
    if value is not None:
        schemas["SetKeyRequest"]["properties"]["value"] = {
            "$ref": "#/components/schemas/JsonValue"
        } | {key: value[key] for key in ("description", "examples", "title") if key in value}
    if require_ttl:
        # A set without a TTL is refused (ttl_required) while require_ttl is on.
        set_key = components.get("schemas", {}).get("SetKeyRequest", {})
        ttl = set_key.get("properties", {}).get("ttl_ms")
        if ttl is not None:
            set_key["properties"]["ttl_ms"] = _integer_branch(ttl) | {
                key: ttl[key] for key in ("description", "examples", "title") if key in ttl
            }
            set_key["required"] = sorted({*set_key.get("required", ()), "ttl_ms"})


# OpenAPI links: how a client (or a stateful tester) goes on from an answer. A key that was
# set is read, touched, incremented and deleted by its name; a lease that was granted is
# renewed and released by its pool and worker, the release with its fencing token.
_KEY = {"key": "$request.path.key"}
_LEASE = {"pool": "$response.body#/pool", "worker_id": "$response.body#/worker_id"}
_LINKS: Final = {
    ("/v1/keys/{key}", "put"): {
        "GetKey": ("getKey", _KEY),
        "DeleteKey": ("deleteKey", _KEY),
        "TouchKey": ("touchKey", _KEY),
        "IncrKey": ("incrKey", _KEY),
    },
    ("/v1/leases/{pool}", "post"): {
        "RenewLease": ("renewLease", _LEASE),
        "ReleaseLease": ("releaseLease", {**_LEASE, "token": "$response.body#/token"}),
        "ListPool": ("listPool", {"pool": "$response.body#/pool"}),
    },
}
_OPERATION_IDS: Final = {
    ("/v1/keys/{key}", "get"): "getKey",
    ("/v1/keys/{key}", "delete"): "deleteKey",
    ("/v1/keys/{key}/touch", "post"): "touchKey",
    ("/v1/keys/{key}/incr", "post"): "incrKey",
    ("/v1/leases/{pool}/{worker_id}/renew", "post"): "renewLease",
    ("/v1/leases/{pool}/{worker_id}", "delete"): "releaseLease",
    ("/v1/leases/{pool}", "get"): "listPool",
}


def _links(path: str, method: str, operation: dict[str, Any]) -> None:
    operation_id = _OPERATION_IDS.get((path, method))
    if operation_id is not None:
        operation["operationId"] = operation_id
    links = _LINKS.get((path, method))
    if links is None:
        return
    declared = {
        name: {"operationId": target, "parameters": parameters}
        for name, (target, parameters) in links.items()
    }
    for status in ("200", "201"):
        if status in operation["responses"]:
            operation["responses"][status]["links"] = declared


def _operation_rules(
    path: str,
    method: str,
    operation: dict[str, Any],
    security: list[dict[str, list[str]]],
    max_key_length: int,
) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    for parameter in operation.get("parameters", ()):
        where, name = parameter["in"], parameter["name"]
        if (where, name) in _NAME_PARAMS:
            parameter["schema"] = _name_schema(max_key_length) | {"title": name}
        elif (where, name) == ("query", "prefix"):
            parameter["schema"] = _name_schema(max_key_length, prefix=True) | {"title": name}
        elif where == "header" and name in ("if-match", "if-none-match"):
            parameter["schema"] = {
                "type": "string",
                "pattern": ETAG_LIST_PATTERN,
                "description": parameter.get("description", ""),
            }
        elif (where, name) == ("query", "after_version"):
            _bound(parameter["schema"], 0, INT64_MAX)
        elif (where, name) == ("query", "token"):
            _bound(parameter["schema"], 1, INT64_MAX)
    if path in _PROBES:
        operation["security"] = []
    else:
        operation["security"] = security
        responses["401"] = _problem_response(["auth_failed"], responses.get("401"))
    before = dict(_BEFORE_ROUTE)
    if "requestBody" in operation:
        before |= _WITH_BODY_BEFORE_ROUTE
    for status, codes in before.items():
        responses[status] = _problem_response(codes, responses.get(status))
    for status, response in responses.items():
        headers = response.setdefault("headers", {})
        headers["X-Request-ID"] = _header("X-Request-ID")
        if status == "503":
            headers["Retry-After"] = _header("Retry-After")
        # The routes that set ETag: a key's GET (200 and 304) and PUT (200 and 201).
        if (
            path == "/v1/keys/{key}"
            and method in ("get", "put")
            and status in ("200", "201", "304")
        ):
            headers["ETag"] = _header("ETag")
    # Sorted, so that the committed document does not move with insertion order.
    operation["responses"] = dict(sorted(responses.items()))
    _links(path, method, operation)
