"""Keys: PUT/GET/DELETE one key, list by prefix, incr, touch."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Query, Request, Response

from ephemeral_broker.api import paths  # noqa: F401  (registers the `name` path convertor)
from ephemeral_broker.api.body import openapi_body, read_fields
from ephemeral_broker.api.deps import (
    JSONBytesResponse,
    etag,
    json_response,
    parse_etags,
    runtime_of,
    set_result,
    store_of,
)
from ephemeral_broker.api.responses import COMMON, WITH_BODY, problems
from ephemeral_broker.api.routing import LeanRoute
from ephemeral_broker.api.schemas import (
    DeleteResponse,
    GetKeyResponse,
    IncrRequest,
    IncrResponse,
    KeyListResponse,
    SetKeyRequest,
    SetKeyResponse,
    TouchRequest,
    TouchResponse,
)
from ephemeral_broker.api.waits import unless_draining
from ephemeral_broker.errors import BrokerError, quote_name
from ephemeral_broker.rules import MAX_WAIT_MS
from ephemeral_broker.store import Item, Precondition
from ephemeral_broker.store.base import NO_PRECONDITION

router = APIRouter(prefix="/v1/keys", tags=["keys"], route_class=LeanRoute)

MAX_LIST_LIMIT = 10_000
MAX_VERSION = 2**63 - 1
# DELETE's two answers, encoded once.
_DELETED_BODY = orjson.dumps({"deleted": True})
_ABSENT_BODY = orjson.dumps({"deleted": False})


def item_body(item: Item) -> bytes:
    # The stored canonical JSON is spliced in as it is: a GET never re-encodes a value.
    return b'{"key":%b,"value":%b,"version":%d,"expires_at":%d}' % (
        orjson.dumps(item.key),
        item.value,
        item.version,
        item.expires_at,
    )


def conditions(if_match: str | None, if_none_match: str | None) -> Precondition:
    """The write's preconditions from its headers (the shared empty one when none was sent)."""
    if if_match is None and if_none_match is None:
        return NO_PRECONDITION
    return Precondition(
        if_match=parse_etags(if_match, "If-Match", weak=False),
        if_none_match=parse_etags(if_none_match, "If-None-Match"),
    )


def not_found(key: str) -> BrokerError:
    return BrokerError("not_found", f"key {quote_name(key)} does not exist or has expired")


@router.get(
    "",
    name="keys.list",
    summary="List keys by prefix (never values)",
    response_model=KeyListResponse,
    responses=problems(*COMMON, "invalid_key", "validation_error"),
)
async def list_keys(
    request: Request,
    prefix: Annotated[str, Query(description="Only keys starting with this.")] = "",
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT, description="At most this many.")] = 1000,
) -> Response:
    found = await store_of(request).list(prefix, limit)
    return json_response(
        {
            "keys": [
                {"key": k.key, "version": k.version, "expires_at": k.expires_at, "size": k.size}
                for k in found
            ]
        }
    )


@router.put(
    "/{key:name}",
    name="keys.set",
    summary="Set a key (create, replace, create-only or compare-and-set)",
    status_code=200,
    response_model=SetKeyResponse,
    responses={
        201: {"description": "Created", "model": SetKeyResponse},
        **problems(
            *WITH_BODY,
            "invalid_key",
            "ttl_required",
            "invalid_ttl",
            "precondition_failed",
            "max_items",
        ),
    },
    openapi_extra=openapi_body(SetKeyRequest),
)
async def set_key(
    key: str,
    request: Request,
    if_match: Annotated[
        str | None,
        Header(
            description='Compare-and-set: `"<version>"` the key must be at (quoted; a weak '
            '`W/"<version>"` never matches here).'
        ),
    ] = None,
    if_none_match: Annotated[
        str | None, Header(description="`*`: create only, refuse if the key exists.")
    ] = None,
) -> Response:
    payload = await read_fields(request, SetKeyRequest)
    precondition = conditions(if_match, if_none_match)
    # The one serialisation of the value: its size is checked on these bytes, they are stored
    # as they are, and GET returns them as they are (defect 10 of the design notes).
    encoded = orjson.dumps(payload["value"])
    result = await store_of(request).set(key, encoded, payload["ttl_ms"], precondition)
    meta = result.meta
    set_result(request, "created" if result.created else "replaced")
    body = b'{"key":%b,"version":%d,"expires_at":%d,"ttl_ms":%d}' % (
        orjson.dumps(meta.key),
        meta.version,
        meta.expires_at,
        meta.ttl_ms,
    )
    return JSONBytesResponse.of(body, 201 if result.created else 200, meta.version)


@router.get(
    "/{key:name}",
    name="keys.get",
    summary="Get a key's value; optionally wait for it to appear or to change",
    response_model=GetKeyResponse,
    responses={
        304: {
            "description": "Not modified: the key is still at `after_version` (or older) when "
            "the wait ends, or If-None-Match holds its current version"
        },
        **problems(*COMMON, "invalid_key", "not_found", "validation_error"),
    },
)
async def get_key(
    key: str,
    request: Request,
    wait_ms: Annotated[
        int | None,
        Query(
            ge=0,
            le=MAX_WAIT_MS,
            description="Wait up to this long for the key to appear (or, with after_version, to "
            "change); the answer comes as soon as it is written.",
        ),
    ] = None,
    after_version: Annotated[
        int | None,
        Query(
            ge=0,
            le=MAX_VERSION,
            description="Answer only with a version newer than this: a watch. 304 when none "
            "came before the wait ended.",
        ),
    ] = None,
    if_none_match: Annotated[
        str | None, Header(description='`"<version>"`: answer 304 if the key is still at it.')
    ] = None,
) -> Response:
    condition = parse_etags(if_none_match, "If-None-Match") if if_none_match else None
    store = store_of(request)
    if wait_ms:
        item = await unless_draining(
            runtime_of(request),
            store.wait_for(key, wait_ms, after_version),
            f"the wait for key {quote_name(key)}",
        )
    else:
        item = await store.get(key)
    if item is None:
        set_result(request, "miss")
        if wait_ms:
            raise BrokerError(
                "not_found",
                f"key {quote_name(key)} does not exist or has expired (waited wait_ms of "
                f"{wait_ms} ms for it)",
            )
        raise not_found(key)
    if after_version is not None and item.version <= after_version:
        set_result(request, "not_modified")
        return Response(status_code=304, headers={"ETag": etag(item.version)})
    set_result(request, "hit")
    if condition is not None and (condition == "*" or item.version in condition):
        return Response(status_code=304, headers={"ETag": etag(item.version)})
    return JSONBytesResponse.of(item_body(item), 200, item.version)


@router.delete(
    "/{key:name}",
    name="keys.delete",
    summary="Delete a key (idempotent)",
    response_model=DeleteResponse,
    responses=problems(*COMMON, "invalid_key", "precondition_failed", "validation_error"),
)
async def delete_key(
    key: str,
    request: Request,
    if_match: Annotated[
        str | None,
        Header(
            description='Delete only if the key is at `"<version>"` (quoted; a weak '
            '`W/"<version>"` never matches here).'
        ),
    ] = None,
) -> Response:
    deleted = await store_of(request).delete(key, conditions(if_match, None))
    set_result(request, "deleted" if deleted else "absent")
    return JSONBytesResponse.of(_DELETED_BODY if deleted else _ABSENT_BODY)


@router.post(
    "/{key:name}/incr",
    name="keys.incr",
    summary="Add to an integer value atomically (absent counts as 0)",
    response_model=IncrResponse,
    responses=problems(
        *WITH_BODY, "invalid_key", "ttl_required", "invalid_ttl", "not_an_integer", "max_items"
    ),
    openapi_extra=openapi_body(IncrRequest, required=False),
)
async def incr_key(key: str, request: Request) -> Response:
    payload = await read_fields(request, IncrRequest, empty_is="{}")
    item = await store_of(request).incr(key, payload["by"], payload["ttl_ms"])
    return JSONBytesResponse.of(item_body(item), 200, item.version)


@router.post(
    "/{key:name}/touch",
    name="keys.touch",
    summary="Restart a key's TTL; value and version stay",
    response_model=TouchResponse,
    responses=problems(*WITH_BODY, "invalid_key", "ttl_required", "invalid_ttl", "not_found"),
    openapi_extra=openapi_body(TouchRequest),
)
async def touch_key(key: str, request: Request) -> Response:
    payload = await read_fields(request, TouchRequest)
    meta = await store_of(request).touch(key, payload["ttl_ms"])
    body = {"key": meta.key, "version": meta.version, "expires_at": meta.expires_at}
    return JSONBytesResponse.of(orjson.dumps(body), 200, meta.version)
