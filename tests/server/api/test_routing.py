"""LeanRoute and RouteTable (api/routing.py) must do what FastAPI and Starlette would: the same
route for every method and path, the same arguments, the same validation errors."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.dependencies.utils import request_params_to_args
from starlette.datastructures import Headers, QueryParams
from starlette.routing import Match

from ephemeral_broker.api.app import ROUTERS
from ephemeral_broker.api.body import error_entries
from ephemeral_broker.api.routing import LeanRoute, RouteTable
from ephemeral_broker.errors import BrokerError
from tests.support.asgi import http_scope

ROUTES = [route for router in ROUTERS for route in router.routes]
METHODS = ("GET", "PUT", "POST", "DELETE", "PATCH", "HEAD")
PATHS = (
    "/v1/keys",
    "/v1/keys%0A",
    "/healthz%0A",
    "/v1/keys/",
    "/v1/keys/a",
    "/v1/keys/a%0A",
    "/v1/keys/a%0A%0A",
    "/v1/keys/%0A",
    "/v1/keys//",
    "/v1/keysx",
    "/v1/keys/a%0A/b",
    "/v1/leases/p%0A",
    "/v1/leases//w",
    "/v1/keys/a%2Fb",
    "/v1/keys/a/b",
    "/v1/keys/a/incr",
    "/v1/keys/a/touch",
    "/v1/keys/a/b/incr",
    "/v1/keys//incr",
    "/v1/leases",
    "/v1/leases/p",
    "/v1/leases/p/w",
    "/v1/leases/p/w/renew",
    "/v1/leases/p/w/x",
    "/v1/leases/p%2Fq/w/renew",
    "/v1/ping",
    "/v1/ping%0A",
    "/v1/ping/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/health",
    "/v1/stats",
    "/openapi.json",
    "/",
    "/nope",
)


def starlette_choice(scope: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
    """The route Starlette's router takes: the first full match, in declaration order."""
    for route in ROUTES:
        match, child = route.matches(scope)
        if match == Match.FULL:
            return route, child["path_params"]
    return None


def test_every_broker_route_is_a_lean_route() -> None:
    assert ROUTES and all(isinstance(route, LeanRoute) for route in ROUTES)


@pytest.mark.parametrize("method", METHODS)
def test_route_table_picks_the_route_the_router_would(method: str) -> None:
    table = RouteTable(ROUTES)
    for path in PATHS:
        scope = http_scope(method, path)
        assert table.find(scope) == starlette_choice(scope), (method, path)


async def _named(request: Request) -> Response:
    return Response()


def _tricky_routes() -> list[Any]:
    """Routes whose order decides: a regex route before a prefix route it overlaps, a prefix
    that does not end in '/' before one that does, two routes with one prefix."""
    router = APIRouter(route_class=LeanRoute)
    for path, name in (
        ("/y/{rest:path}", "y.rest"),
        ("/y/{a:name}", "y.a"),
        ("/z/a-{x:name}", "z.x"),
        ("/z/{y:name}", "z.y"),
        ("/w/{p:name}", "w.first"),
        ("/w/{p:name}", "w.second"),
        ("/v/{k:name}", "v.k"),
        ("/v/{k:name}/more", "v.more"),
        ("/v/static", "v.static"),
    ):
        router.add_api_route(path, _named, methods=["GET"], name=name)
    return list(router.routes)


TRICKY_PATHS = (
    "/y/a",
    "/y/a/b",
    "/z/a-b",
    "/z/a-",
    "/z/b",
    "/z/a-b/c",
    "/w/q",
    "/v/k",
    "/v/k/more",
    "/v/static",
    "/v/static%0A",
    "/v/%0A",
    "/v/",
    "/v",
    "/u/x",
)


def test_route_table_keeps_declaration_order_where_routes_overlap() -> None:
    routes = _tricky_routes()
    table = RouteTable(routes)
    for path in TRICKY_PATHS:
        scope = http_scope("GET", path)
        expected = None
        for route in routes:
            match, child = route.matches(scope)
            if match == Match.FULL:
                expected = route, child["path_params"]
                break
        assert table.find(scope) == expected, path
        call = table.dispatch(scope, _no_receive)
        if expected is None:
            assert call is None, path
        else:
            assert call is not None, path
            call.close()  # the endpoint's coroutine, never started
            assert (scope["route"], scope["path_params"]) == expected, path


async def _no_receive() -> dict[str, Any]:
    raise AssertionError("nothing here reads a body")


def test_route_table_hands_out_fresh_path_params() -> None:
    table = RouteTable(ROUTES)
    found = table.find(http_scope("GET", "/v1/ping"))
    assert found is not None
    found[1]["changed"] = True
    again = table.find(http_scope("GET", "/v1/ping"))
    assert again is not None and again[1] == {}


async def _endpoint(
    key: str,
    request: Request,
    wait_ms: Annotated[int | None, Query(ge=0, le=300_000)] = None,
    limit: Annotated[int, Query(ge=1, le=10)] = 5,
    prefix: Annotated[str, Query()] = "",
    worker_id: Annotated[str | None, Query()] = None,
    token: Annotated[int, Query(ge=1)] = ...,  # type: ignore[assignment]
    if_match: Annotated[str | None, Query(alias="if-match")] = None,
) -> Response:
    return Response()


def _lean_route() -> LeanRoute:
    router = APIRouter(route_class=LeanRoute)
    router.add_api_route("/k/{key}", _endpoint, methods=["GET"])
    route = router.routes[0]
    assert isinstance(route, LeanRoute)
    return route


QUERIES = (
    "token=1",
    "",
    "token=0",
    "token=x",
    "token=1&wait_ms=-1",
    "token=1&wait_ms=abc",
    "token=1&wait_ms=300001",
    "token=1&wait_ms=5&wait_ms=7",
    "token=1&limit=11&limit=3",
    "token=1&limit=",
    "token=1&prefix=a%20b&prefix=c",
    "token=1&worker_id=",
    "token=2.0",
    "token=1&if-match=%22x%22",
    "wait_ms=1e3&limit=0",
    "token=%FF",
)


@pytest.mark.parametrize("query", QUERIES)
def test_lean_binding_matches_fastapi_for_query_parameters(query: str) -> None:
    route = _lean_route()
    scope = http_scope("GET", f"/k/abc?{query}")
    scope["path_params"] = {"key": "abc"}
    request = Request(scope)
    expected, errors = request_params_to_args(
        route.dependant.query_params, QueryParams(scope["query_string"])
    )
    try:
        values = route.bind(scope, request)
    except BrokerError as error:
        assert error.code == "validation_error"
        assert error.errors == error_entries(errors), query
    else:
        assert errors == [], query
        del values["request"], values["key"]
        assert values == expected, query


@pytest.mark.parametrize(
    "headers",
    [
        (),
        (("if-match", '"1"'),),
        (("if-match", '"1"'), ("if-match", '"2"')),
        (("if-none-match", "*"), ("x-other", "y")),
        (("if-match", "caf\xe9"),),
    ],
)
def test_lean_binding_matches_fastapi_for_headers(headers: tuple[tuple[str, str], ...]) -> None:
    from ephemeral_broker.api.routes.keys import router

    route = next(r for r in router.routes if getattr(r, "name", "") == "keys.set")
    assert isinstance(route, LeanRoute)
    scope = http_scope("PUT", "/v1/keys/k", [(k, v.encode("latin-1")) for k, v in headers])
    scope["path_params"] = {"key": "k"}
    expected, errors = request_params_to_args(route.dependant.header_params, Headers(scope=scope))
    values = route.bind(scope, Request(scope))
    assert errors == []
    assert {name: values[name] for name in expected} == expected


def test_lean_route_refuses_what_it_does_not_implement() -> None:
    async def with_dependency(value: Annotated[int, Depends(lambda: 1)]) -> Response:
        return Response()

    async def with_list(tags: Annotated[list[str], Query()]) -> Response:
        return Response()

    def sync_endpoint() -> Response:
        return Response()

    async def with_body(body: dict[str, int]) -> Response:
        return Response()

    for endpoint in (with_dependency, with_list, sync_endpoint, with_body):
        router = APIRouter(route_class=LeanRoute)
        with pytest.raises(TypeError, match="LeanRoute"):
            router.add_api_route("/x", endpoint, methods=["POST"])


@pytest.mark.anyio
async def test_a_bug_behind_the_route_table_is_still_a_problem_500_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What RouteTable does not serve goes through FastAPI's own stack (here /openapi.json);
    a bug there is answered by problem+json, never Starlette's plain-text 500."""
    import logging

    import httpx

    from ephemeral_broker.api.app import create_app
    from ephemeral_broker.settings import BrokerSettings
    from tests.support.responses import assert_problem

    app = create_app(BrokerSettings())

    def broken_openapi() -> dict[str, Any]:
        raise RuntimeError("SECRET-INTERNAL")

    app.openapi = broken_openapi  # type: ignore[method-assign]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://x") as api:
        with caplog.at_level(logging.ERROR, logger="ephemeral_broker"):
            response = await api.get("/openapi.json", headers={"X-Request-ID": "bug-1"})
        problem = assert_problem(response, 500, "internal_error")
        assert "bug-1" in problem["detail"] and "SECRET-INTERNAL" not in response.text
        logged = [r for r in caplog.records if "unhandled error" in r.getMessage()]
        assert len(logged) == 1 and logged[0].exc_info is not None
        assert (await api.get("/v1/ping")).status_code == 200


async def _echo(
    key: str,
    request: Request,
    x_tag: Annotated[str | None, Header()] = None,
) -> Response:
    return Response(f"{key}|{x_tag}|{request.url.path}".encode())


def _answer(call: Any) -> bytes:
    """Run an endpoint's coroutine that never waits, and return its response body."""
    with pytest.raises(StopIteration) as done:
        call.send(None)
    body: bytes = done.value.value.body
    return body


@pytest.mark.parametrize(
    ("headers", "sent", "expected"),
    [
        ((), None, b"k|None|/h/k"),
        ((), {}, b"k|None|/h/k"),
        ((("x-tag", "v"),), None, b"k|v|/h/k"),  # the route looks through the scope itself
        ((("x-tag", "v"),), {b"x-tag": b"v"}, b"k|v|/h/k"),  # the middleware found it
        ((("x-other", "v"),), {b"x-other": b"v"}, b"k|None|/h/k"),
    ],
)
def test_a_route_binds_its_header_parameters_however_the_headers_were_found(
    headers: tuple[tuple[str, str], ...], sent: dict[bytes, bytes] | None, expected: bytes
) -> None:
    router = APIRouter(route_class=LeanRoute)
    router.add_api_route("/h/{key:name}", _echo, methods=["GET"], name="h")
    table = RouteTable(router.routes)
    assert table.header_names == {b"x-tag"}
    scope = http_scope("GET", "/h/k", headers)
    assert _answer(table.dispatch(scope, _no_receive, sent)) == expected
