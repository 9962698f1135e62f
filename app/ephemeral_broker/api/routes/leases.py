"""Leases: acquire (or renew) in a pool, renew, release one, release all of a worker, list
(the HTTP API docs, "Leases").

Path parameters: pool names and worker ids are one path segment each (the `name` convertor
of api/paths.py); one that hides a '/' as %2F, or is not UTF-8, is refused with 422
invalid_key before routing.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from ephemeral_broker.api import paths  # noqa: F401  (registers the `name` path convertor)
from ephemeral_broker.api.body import openapi_body, read_model
from ephemeral_broker.api.deps import json_response, runtime_of, set_result, store_of
from ephemeral_broker.api.responses import COMMON, WITH_BODY, problems
from ephemeral_broker.api.routing import LeanRoute
from ephemeral_broker.api.schemas import (
    INT64_MAX,
    AcquireLeaseRequest,
    LeaseResponse,
    PoolLeasesResponse,
    PoolListResponse,
    ReleaseAllResponse,
    ReleaseResponse,
    RenewLeaseRequest,
)
from ephemeral_broker.api.waits import unless_draining
from ephemeral_broker.store import LeaseGrant, PoolLeases

router = APIRouter(prefix="/v1/leases", tags=["leases"], route_class=LeanRoute)


def _lease_body(grant: LeaseGrant) -> dict[str, Any]:
    return {
        "pool": grant.pool,
        "worker_id": grant.worker_id,
        "value": grant.value,
        "token": grant.token,
        "expires_at": grant.expires_at,
        "ttl_ms": grant.ttl_ms,
    }


def _pool_body(pool: PoolLeases) -> dict[str, Any]:
    return {
        "pool": pool.pool,
        "leases": [
            {
                "worker_id": lease.worker_id,
                "value": lease.value,
                "token": lease.token,
                "expires_at": lease.expires_at,
            }
            for lease in pool.leases
        ],
    }


@router.get(
    "",
    name="leases.list",
    summary="Every pool with live leases, sorted by name",
    response_model=PoolListResponse,
    responses=problems(*COMMON),
)
async def list_pools(request: Request) -> Response:
    pools = await store_of(request).list_pools()
    return json_response({"pools": [_pool_body(pool) for pool in pools]})


@router.delete(
    "",
    name="leases.release_all",
    summary="Release every lease of a worker, in all pools",
    response_model=ReleaseAllResponse,
    responses=problems(*COMMON, "invalid_key", "validation_error"),
)
async def release_all(
    request: Request,
    worker_id: Annotated[str, Query(description="The worker whose leases end.")],
) -> Response:
    released = await store_of(request).release_worker(worker_id)
    set_result(request, "released" if released else "absent")
    return json_response({"released": released})


@router.post(
    "/{pool}/{worker_id}/renew",
    name="leases.renew",
    summary="Renew a lease the worker holds (same value and token)",
    response_model=LeaseResponse,
    responses=problems(*WITH_BODY, "invalid_key", "invalid_ttl", "lease_not_found"),
    openapi_extra=openapi_body(RenewLeaseRequest, required=False),
)
async def renew(pool: str, worker_id: str, request: Request) -> Response:
    payload = await read_model(request, RenewLeaseRequest, empty_is="{}")
    grant = await store_of(request).renew_lease(pool, worker_id, payload.ttl_ms)
    set_result(request, "renewed")
    return json_response(_lease_body(grant))


@router.post(
    "/{pool:name}",
    name="leases.acquire",
    summary="Lease the lowest free value of a pool, or renew the worker's lease there",
    status_code=200,
    response_model=LeaseResponse,
    responses={
        201: {"description": "A new lease", "model": LeaseResponse},
        **problems(*WITH_BODY, "invalid_key", "invalid_ttl", "pool_exhausted", "max_leases"),
    },
    openapi_extra=openapi_body(AcquireLeaseRequest),
)
async def acquire(pool: str, request: Request) -> Response:
    payload = await read_model(request, AcquireLeaseRequest)
    work = store_of(request).acquire_lease(
        pool, payload.worker_id, payload.ttl_ms, payload.size, payload.wait_ms
    )
    if payload.wait_ms and payload.size is not None:
        grant = await unless_draining(runtime_of(request), work, "the lease wait")
    else:
        grant = await work
    set_result(request, "granted" if grant.created else "renewed")
    return json_response(_lease_body(grant), 201 if grant.created else 200)


@router.get(
    "/{pool:name}",
    name="leases.get",
    summary="The live leases of one pool, sorted by value",
    response_model=PoolLeasesResponse,
    responses=problems(*COMMON, "invalid_key"),
)
async def list_pool(pool: str, request: Request) -> Response:
    return json_response(_pool_body(await store_of(request).list_pool(pool)))


@router.delete(
    "/{pool}/{worker_id:name}",
    name="leases.release",
    summary="Release a worker's lease in a pool (only with a matching token, if one is given)",
    response_model=ReleaseResponse,
    responses=problems(*COMMON, "invalid_key", "precondition_failed", "validation_error"),
)
async def release(
    pool: str,
    worker_id: str,
    request: Request,
    token: Annotated[
        int | None,
        Query(
            ge=1,
            le=INT64_MAX,
            description="Fencing token: release only the lease with this token (412 otherwise).",
        ),
    ] = None,
) -> Response:
    released = await store_of(request).release_lease(pool, worker_id, token)
    set_result(request, "released" if released else "absent")
    return json_response({"released": released})
