"""The application factory: one FastAPI app, its store, its metrics, its background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, cast

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi.telemetry import TelemetryConfig
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from ephemeral_broker import __version__
from ephemeral_broker.api.auth import Authenticator
from ephemeral_broker.api.body import request_validation_failure
from ephemeral_broker.api.middleware import BrokerMiddleware
from ephemeral_broker.api.openapi_rules import apply_rules
from ephemeral_broker.api.routes import keys, leases, system
from ephemeral_broker.api.routing import RouteTable
from ephemeral_broker.api.runtime import Runtime
from ephemeral_broker.api.schemas import (
    AcquireLeaseRequest,
    IncrRequest,
    ProblemDetail,
    RenewLeaseRequest,
    SetKeyRequest,
    TouchRequest,
)
from ephemeral_broker.clock import Clock, SystemClock
from ephemeral_broker.errors import (
    PROBLEM_CONTENT_TYPE,
    BrokerError,
    problem_body,
    request_id_of,
)
from ephemeral_broker.logs import logger
from ephemeral_broker.metrics import BrokerMetrics
from ephemeral_broker.settings import BrokerSettings
from ephemeral_broker.store import Store
from ephemeral_broker.store.capacity import CapacityWatch
from ephemeral_broker.store.select import make_store

NO_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "auto_configure": False,
}
ROUTERS: tuple[APIRouter, ...] = (keys.router, leases.router, system.router)
# Models routes parse themselves (see api/body.py): added to the OpenAPI components.
_BODY_MODELS = (
    SetKeyRequest,
    IncrRequest,
    TouchRequest,
    AcquireLeaseRequest,
    RenewLeaseRequest,
    ProblemDetail,
)


def problem_response(request: Request, error: BrokerError) -> Response:
    request.state.error_code = error.code
    rid = request_id_of(request.scope)
    body = problem_body(error.code, error.detail, rid, error.errors, error.more_errors)
    return Response(body, error.status, error.headers, media_type=PROBLEM_CONTENT_TYPE)


async def _on_broker_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BrokerError)
    return problem_response(request, exc)


async def _on_request_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # Query, header and path parameters (bodies are validated in app/ephemeral_broker/api/body.py).
    return problem_response(request, request_validation_failure(exc.errors()))


async def _on_unhandled(request: Request, exc: Exception) -> Response:
    # Starlette's ServerErrorMiddleware answers with this, then re-raises for BrokerMiddleware
    # to log with its traceback (a bug in a route FastAPI's router served).
    rid = request_id_of(request.scope)
    return problem_response(
        request, BrokerError("internal_error", f"internal error; see the broker log for {rid}")
    )


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    method, path = request.method, request.url.path
    if exc.status_code == 405:
        allow = ", ".join(_allowed_methods(request))
        error = BrokerError(
            "method_not_allowed",
            f"{method} is not allowed on {path}" + (f"; allowed: {allow}" if allow else ""),
            headers={"Allow": allow} if allow else None,
        )
    elif exc.status_code == 404:
        error = BrokerError("route_not_found", f"no endpoint at {method} {path}")
    else:
        # Starlette raises no other statuses for our routes; keep the status, name it honestly.
        logger.warning("unexpected HTTP exception", extra={"fields": {"status": exc.status_code}})
        error = BrokerError("internal_error", f"unexpected HTTP status {exc.status_code}")
    return problem_response(request, error)


AllowTable = list[tuple[re.Pattern[str], frozenset[str]]]


def _allow_table(routers: tuple[APIRouter, ...]) -> AllowTable:
    return [
        (route.path_regex, frozenset(route.methods or ()))
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute)
    ]


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    table: AllowTable = request.app.state.allow_table
    path = request.scope["path"]
    return sorted({m for regex, methods in table if regex.match(path) for m in methods})


async def _sweep_forever(store: Store, interval_ms: int) -> None:
    """Reclaim expired entries every `interval_ms` (the setting, never a constant: defect #1)."""
    while True:
        await asyncio.sleep(interval_ms / 1000)
        try:
            await store.sweep()
        except BrokerError as exc:  # the shared store is down: say so, without a traceback
            logger.warning("sweep skipped: %s", exc.detail)
        except Exception:
            logger.exception("sweeper failed; it keeps running")


BackgroundTask = Callable[[FastAPI], Coroutine[Any, Any, None]]


class BrokerAPI(FastAPI):
    """FastAPI with BrokerMiddleware in front of FastAPI's own middleware stack.

    `add_middleware` would put it inside FastAPI's outer layers (ServerErrorMiddleware, the
    telemetry and body-size wrappers), which a request for one of the broker's routes never
    needs: BrokerMiddleware dispatches those itself and answers every error they raise. What
    it does not dispatch (no such route, a wrong method, /openapi.json) goes on through
    FastAPI's whole stack, exception handlers included, unchanged.
    """

    front: Callable[[ASGIApp], ASGIApp] | None = None
    # The app's parts, also in `app.state` (FastAPI's place for them, which tests and the
    # server read): as plain attributes, a route reaches them in one lookup (api/deps.py).
    store: Store
    runtime: Runtime
    metrics: BrokerMetrics

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        return stack if self.front is None else self.front(stack)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # An HTTP request goes straight to the middleware stack, as Starlette's __call__ sends
        # it, without FastAPI's check for native telemetry first: create_app builds this app
        # with telemetry off (NO_TELEMETRY) and without a root_path, so that check is False
        # on every request. Lifespan, a first request and any other app go the usual way.
        stack = self.middleware_stack
        if scope["type"] == "http" and stack is not None and self.front and not self.root_path:
            scope["app"] = self
            await stack(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def asgi_entry(app: Any) -> ASGIApp:
    """What an ASGI server should call for `app`: for the broker's app, BrokerMiddleware's
    `__call__` itself (an ASGI 3 callable: the server is told so, see uvicorn_config). Every
    request passes through the middleware first anyway; called by the server, it saves the
    app's own `__call__` on each request, and a bound method is called for less than an object
    with `__call__`. It hands lifespan events to the app as the server would (the scope has no
    `app` yet). Any other app is returned as it is."""
    if isinstance(app, BrokerAPI) and app.front is not None:
        if app.middleware_stack is None:
            app.middleware_stack = app.build_middleware_stack()
        front = app.middleware_stack
        assert isinstance(front, BrokerMiddleware)
        return cast(ASGIApp, front.__call__)
    other: ASGIApp = app
    return other


def create_app(
    settings: BrokerSettings,
    *,
    store: Store | None = None,
    clock: Clock | None = None,
    background: tuple[BackgroundTask, ...] = (),
) -> FastAPI:
    """Build the broker app. `store`/`clock` are injectable for tests and benchmarks;
    `background` are extra coroutines run for the app's lifetime (heartbeat, idle timeout)."""
    clock = clock or SystemClock()
    if store is None:
        watch = CapacityWatch(settings.max_items) if settings.max_items else None
        store = make_store(settings, clock, on_items_changed=watch)
    runtime = Runtime(version=__version__)
    metrics = BrokerMetrics(__version__)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(_sweep_forever(store, settings.sweeper_interval))]
        tasks += [asyncio.create_task(job(app)) for job in background]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    app = BrokerAPI(
        title="ephemeral-broker",
        version=__version__,
        summary="In-memory key/value and lease broker for the processes of one run, over a "
        "Unix domain socket.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry turns itself on when it finds a configured provider
        # (or FASTAPI_OTEL_AUTO_CONFIGURE=true) and would export spans naming URL paths, that
        # is keys, to wherever the environment points. The broker exports nothing: off, always.
        telemetry=NO_TELEMETRY,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.clock = clock
    app.state.runtime = runtime
    app.state.metrics = metrics
    app.store, app.runtime, app.metrics = store, runtime, metrics
    for router in ROUTERS:
        app.include_router(router)
    app.state.allow_table = _allow_table(ROUTERS)
    app.add_exception_handler(BrokerError, _on_broker_error)
    app.add_exception_handler(RequestValidationError, _on_request_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(Exception, _on_unhandled)
    # One middleware (middleware.py), in front of FastAPI's own stack (see BrokerAPI): request
    # id, drain gate, auth (only with a secret; it sees the body as sent on the wire, which the
    # signature covers), body limits, then straight to the route through the route table;
    # metrics, access log and gzip around it all.
    auth = None
    if settings.secret is not None:
        auth = Authenticator(
            secret=settings.secret.get_secret_value(),
            max_request_size=settings.max_request_size,
            clock=clock,
        )
    app.front = functools.partial(
        BrokerMiddleware,
        runtime=runtime,
        metrics=metrics,
        compression_threshold=settings.compression_threshold,
        access_log=settings.access_log,
        max_request_size=settings.max_request_size,
        auth=auth,
        routes=RouteTable(route for router in ROUTERS for route in router.routes),
        outer=app,
    )
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=(
                "Served over a Unix domain socket: "
                '`curl --unix-socket "$EPHEMERAL_PIPE" http://localhost/v1/ping`. '
                "Every error is `application/problem+json` with a stable `code`."
            ),
            routes=app.routes,
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in _BODY_MODELS:
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        # FastAPI documents a 422 HTTPValidationError for parameters; ours is a ProblemDetail.
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                problem = operation.get("responses", {}).get("422")
                if problem and "HTTPValidationError" in str(problem):
                    problem["content"] = {
                        PROBLEM_CONTENT_TYPE: {
                            "schema": {"$ref": "#/components/schemas/ProblemDetail"}
                        }
                    }
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        settings: BrokerSettings = app.state.settings
        apply_rules(
            schema,
            max_key_length=settings.max_key_length,
            max_ttl=settings.max_ttl,
            require_ttl=settings.require_ttl,
        )
        app.openapi_schema = schema
    return app.openapi_schema
