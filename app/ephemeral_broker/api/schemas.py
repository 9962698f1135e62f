"""Request and response models. They are the OpenAPI description; routes build the hot
responses by hand (see api/routes/keys.py) but always in exactly these shapes."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr

from ephemeral_broker.rules import MAX_POOL_SIZE, MAX_WAIT_MS

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


def _integral(value: Any) -> Any:
    """JSON has one kind of number: `100.0` is the integer 100 (as JSON Schema's `integer`
    says too), `1.5` is not one. Booleans and strings stay refused by the strict check."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


# An integer field of a request body: a JSON number with no fractional part.
JsonInt = Annotated[StrictInt, BeforeValidator(_integral)]


class _Request(BaseModel):
    # Unknown fields are refused (422 validation_error), so a typo never passes silently.
    model_config = ConfigDict(extra="forbid")


class SetKeyRequest(_Request):
    value: Any = Field(
        description="Any JSON value. Stored as canonical JSON bytes; GET returns an equal value.",
        examples=[{"token": "s3cr3t", "expires": "soon"}],
    )
    ttl_ms: JsonInt | None = Field(
        default=None,
        description="Milliseconds until the key expires: 1..max_ttl. Required while "
        "require_ttl is on; 0 or a negative number is refused, never treated as 'no expiry'.",
        examples=[60000],
    )


class IncrRequest(_Request):
    by: JsonInt = Field(
        default=1,
        ge=INT64_MIN,
        le=INT64_MAX,
        description="Amount to add; may be negative; a signed 64-bit integer.",
        examples=[1],
    )
    ttl_ms: JsonInt | None = Field(
        default=None,
        description="TTL for a key this call creates (required then, while require_ttl is on); "
        "on an existing key it restarts the TTL, and without it the deadline is kept.",
        examples=[60000],
    )


class TouchRequest(_Request):
    ttl_ms: JsonInt = Field(description="New TTL in milliseconds.", examples=[60000])


class SetKeyResponse(BaseModel):
    key: str = Field(examples=["db-token"])
    version: int = Field(description="Broker-wide write counter; also the ETag.", examples=[42])
    expires_at: int = Field(description="Unix epoch milliseconds.", examples=[1767225600000])
    ttl_ms: int = Field(examples=[60000])


class GetKeyResponse(BaseModel):
    key: str = Field(examples=["db-token"])
    value: Any = Field(examples=[{"token": "s3cr3t"}])
    version: int = Field(examples=[42])
    expires_at: int = Field(examples=[1767225600000])


class IncrResponse(BaseModel):
    key: str = Field(examples=["ready-workers"])
    value: int = Field(examples=[3])
    version: int = Field(examples=[43])
    expires_at: int = Field(examples=[1767225600000])


class TouchResponse(BaseModel):
    key: str = Field(examples=["db-token"])
    version: int = Field(examples=[42])
    expires_at: int = Field(examples=[1767225600000])


class DeleteResponse(BaseModel):
    deleted: bool = Field(description="False when the key did not exist (delete is idempotent).")


class KeyInfoModel(BaseModel):
    key: str = Field(examples=["db-token"])
    version: int = Field(examples=[42])
    expires_at: int = Field(examples=[1767225600000])
    size: int = Field(description="Bytes of the value's canonical JSON.", examples=[27])


class KeyListResponse(BaseModel):
    keys: list[KeyInfoModel]


class StoreModel(BaseModel):
    """The store that holds the state; only a shared (Redis) store adds this to the probes."""

    kind: Literal["memory", "redis"]
    namespace: str | None = Field(description="The Redis namespace; null for memory.")
    available: bool = Field(description="False while Redis does not answer.")
    reason: str | None = Field(description="Why the store is unavailable, when it is.")
    resets: int = Field(
        description="Times Redis was found to have lost the namespace (a restart without "
        "persistence); versions and fencing tokens never repeat across one."
    )
    last_reset_ms: int | None = Field(description="When the last such loss was detected.")


class LivenessResponse(BaseModel):
    status: Literal["ok"] = "ok"
    store: StoreModel | None = Field(default=None, description="Only with a Redis store.")


class ReadinessResponse(BaseModel):
    status: Literal["ready"] = "ready"
    store: StoreModel | None = Field(default=None, description="Only with a Redis store.")


class CapacityModel(BaseModel):
    items: int = Field(examples=[120])
    max_items: int = Field(description="0 means unlimited.", examples=[10000])
    utilization: float = Field(description="items / max_items, 0 when unlimited.", examples=[0.012])
    near_capacity: bool = Field(description="utilization >= 0.9")
    at_capacity: bool = Field(description="utilization >= 1.0")
    warning: Literal["near_capacity", "at_capacity"] | None = None


class MemoryModel(BaseModel):
    rss_bytes: int = Field(description="Resident set size of the broker process.")


class ConnectionsModel(BaseModel):
    in_flight: int = Field(description="Requests being served right now, this one included.")


class HealthResponse(BaseModel):
    status: Literal["healthy", "degraded", "draining"]
    store: StoreModel
    uptime_ms: int
    capacity: CapacityModel
    memory: MemoryModel
    connections: ConnectionsModel


class StatsResponse(BaseModel):
    items: int
    leases: int = Field(description="Live leases, all pools together.")
    pools: int = Field(description="Pools with at least one live lease or waiter.")
    approx_store_bytes: int = Field(
        description="Key and stored value bytes (compressed size when compressed) plus a fixed "
        "per-entry overhead estimate; an approximation, not an RSS reading."
    )
    store: Literal["memory", "redis"] = Field(
        description="Which store holds the state; with redis the counts are namespace-wide."
    )
    uptime_ms: int
    requests_total: int
    version: str


class PingResponse(BaseModel):
    pong: int = Field(description="Broker time, Unix epoch milliseconds.")


class ProblemDetail(BaseModel):
    """RFC 9457 problem details; every error the broker returns has this shape."""

    type: str = Field(examples=["urn:ephemeral-broker:error:not_found"])
    title: str = Field(examples=["Key not found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["key 'db-token' does not exist or has expired"])
    code: str = Field(examples=["not_found"])
    request_id: str = Field(examples=["4f9c2a1b7d3e8f60"])
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Field-level problems, for validation errors."
    )


# ---- leases ---------------------------------------------------------------------------------


class AcquireLeaseRequest(_Request):
    worker_id: StrictStr = Field(
        description="Who holds the lease: a name of 1..max_key_length bytes (no '/', whitespace "
        "or control characters). Asking again with the same worker_id renews its lease.",
        examples=["gw3"],
    )
    ttl_ms: JsonInt | None = Field(
        default=None,
        description="Milliseconds until the lease expires unless renewed: 1..max_ttl; default "
        "lease_ttl. 0 or a negative number is refused.",
        examples=[60000],
    )
    size: JsonInt | None = Field(
        default=None,
        ge=1,
        le=MAX_POOL_SIZE,
        description="Grant only values below this (a pool of this many slots). Without it the "
        "pool is unbounded and a grant never waits.",
        examples=[8],
    )
    wait_ms: JsonInt = Field(
        default=0,
        ge=0,
        le=MAX_WAIT_MS,
        description="With `size`: when no value below it is free, wait this long (first come, "
        "first served) before answering 409 pool_exhausted. 0 answers at once.",
        examples=[30000],
    )


class RenewLeaseRequest(_Request):
    ttl_ms: JsonInt | None = Field(
        default=None,
        description="New TTL in milliseconds, counted from now: 1..max_ttl; default lease_ttl.",
        examples=[60000],
    )


class LeaseResponse(BaseModel):
    pool: str = Field(examples=["test-accounts"])
    worker_id: str = Field(examples=["gw3"])
    value: int = Field(
        description="The lowest non-negative integer no other live lease of the pool holds.",
        examples=[3],
    )
    token: int = Field(
        description="Fencing token: a broker-wide counter that grows with every grant; a "
        "renewal keeps it.",
        examples=[117],
    )
    expires_at: int = Field(description="Unix epoch milliseconds.", examples=[1767225600000])
    ttl_ms: int = Field(examples=[60000])


class ReleaseResponse(BaseModel):
    released: bool = Field(description="False when the worker held no lease in the pool.")


class ReleaseAllResponse(BaseModel):
    released: int = Field(description="How many leases of the worker were released.")


class LeaseInfoModel(BaseModel):
    worker_id: str = Field(examples=["gw3"])
    value: int = Field(examples=[3])
    token: int = Field(examples=[117])
    expires_at: int = Field(examples=[1767225600000])


class PoolLeasesResponse(BaseModel):
    pool: str = Field(examples=["test-accounts"])
    leases: list[LeaseInfoModel] = Field(description="Live leases, sorted by value.")


class PoolListResponse(BaseModel):
    pools: list[PoolLeasesResponse] = Field(description="Pools with live leases, sorted by name.")
