"""`LeanRoute`, the broker's `APIRoute`: declared like any FastAPI route, cheap per request.

FastAPI's own route handler re-reads every parameter's annotation on each request
(`solve_dependencies` -> `request_params_to_args`: is it a sequence? a model? which alias?), wraps
the call in two exit stacks and an exception-handling layer, and only then calls the endpoint.
Our endpoints take only scalar path, query and header parameters plus the `Request`, and parse
their bodies themselves (api/body.py), so none of that per-request discovery is needed: this
route class answers those questions once, when the route is declared, and keeps a small plan
("binder") of where each argument comes from. Per request it reads path, query and headers
straight from the ASGI scope, validates each value that is present with the very field FastAPI
built for it (same pydantic constraints, same error locations and messages), and calls the
endpoint. Routes are declared as usual (`APIRouter(route_class=LeanRoute)`), so FastAPI still
builds the OpenAPI description from the same parameters.

A route using a feature the binder does not implement (dependencies, body parameters, cookies,
list-valued or model-valued parameters, alias choices, sync endpoints) is refused when it is
declared, never silently served differently from FastAPI.

`RouteTable` is the dispatch side: the same routes, grouped by method, matched with their own
path regexes in declaration order, so BrokerMiddleware can hand a request straight to its route
(`route.call`) instead of walking Starlette's router and FastAPI's included-router contexts.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import fastapi.routing
from fastapi import params
from fastapi._compat import (
    ModelField,
    field_annotation_is_sequence,
    get_missing_field_error,
    lenient_issubclass,
)
from fastapi.dependencies.utils import _get_param_aliases
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette._utils import get_route_path
from starlette.convertors import Convertor, StringConvertor
from starlette.datastructures import QueryParams
from starlette.requests import Request, empty_send
from starlette.responses import Response
from starlette.types import Receive, Scope

from ephemeral_broker.api.body import request_validation_failure
from ephemeral_broker.api.paths import NameConvertor

_IMMUTABLE: Final = (type(None), bool, int, float, str, bytes)
Endpoint = Callable[..., Coroutine[Any, Any, Response]]
RouteCall = Callable[[Scope, Receive, Mapping[bytes, bytes] | None], Coroutine[Any, Any, Response]]


@dataclass(frozen=True, slots=True)
class _Param:
    """One scalar parameter: where it is read, and how it is validated."""

    name: str  # the endpoint's argument
    key: str  # the name in the request (a header's lower-case name)
    loc: tuple[str, str]  # where an error points: ("query", "wait_ms")
    field: ModelField
    required: bool
    default: Any
    # A plain `str` parameter without constraints: pydantic would return the value as it is.
    plain: bool

    def take(self, raw: str | None, values: dict[str, Any], errors: list[Any]) -> None:
        """FastAPI's rule for one parameter: absent -> default (or `missing`), else validate."""
        if raw is None:
            if self.required:
                errors.append(get_missing_field_error(loc=self.loc))
                return
            default = self.default
            if not isinstance(default, _IMMUTABLE):
                default = copy.deepcopy(default)
            if not self.field.field_info.validate_default:
                values[self.name] = default
                return
            raw = default
        if self.plain:
            values[self.name] = raw
            return
        value, problems = self.field.validate(raw, values, loc=self.loc)
        if problems:
            errors.extend(problems)
        else:
            values[self.name] = value


def _compile(field: ModelField, where: str) -> _Param:
    info = field.field_info
    if not isinstance(info, params.Path | params.Query | params.Header):
        raise TypeError(f"LeanRoute: parameter {field.name!r} is not a path/query/header one")
    aliases = _get_param_aliases(field)
    if len(aliases) != 1:
        raise TypeError(f"LeanRoute: parameter {field.name!r} has alias choices")
    annotation = info.annotation
    if field_annotation_is_sequence(annotation) or lenient_issubclass(annotation, BaseModel):
        raise TypeError(f"LeanRoute: parameter {field.name!r} takes several values")
    key = aliases[0][1]
    return _Param(
        name=field.name,
        key=key.lower() if where == "header" else key,
        loc=(where, key),
        field=field,
        required=info.is_required(),
        default=field.default,
        plain=info.annotation is str and not info.metadata,
    )


def _plain_defaults(params: tuple[_Param, ...]) -> dict[str, Any] | None:
    """The arguments when none of `params` was sent, if that needs no work per request: each
    optional, its default immutable and not validated (else None: `_Param.take` decides)."""
    if not all(
        not p.required
        and isinstance(p.default, _IMMUTABLE)
        and not p.field.field_info.validate_default
        for p in params
    ):
        return None
    return {p.name: p.default for p in params}


class LeanRoute(APIRoute):
    """An APIRoute whose per-request work is planned once, when the route is declared."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        dependant = self.dependant
        unsupported = [
            what
            for what, present in (
                ("dependencies", dependant.dependencies),
                ("body parameters", dependant.body_params),
                ("cookie parameters", dependant.cookie_params),
                ("a Response parameter", dependant.response_param_name),
                ("BackgroundTasks", dependant.background_tasks_param_name),
                ("a WebSocket", dependant.websocket_param_name),
                ("an HTTPConnection", dependant.http_connection_param_name),
                ("security scopes", dependant.security_scopes_param_name),
            )
            if present
        ]
        if unsupported or not inspect.iscoroutinefunction(endpoint):
            why = ", ".join(unsupported) or "a sync endpoint"
            raise TypeError(f"LeanRoute {self.name!r} cannot serve {why}; use APIRoute")
        self._call: Endpoint = endpoint
        self._path_params = tuple(_compile(f, "path") for f in dependant.path_params)
        self._query_params = tuple(_compile(f, "query") for f in dependant.query_params)
        self._header_params = tuple(_compile(f, "header") for f in dependant.header_params)
        self._header_keys = {p.key.encode("latin-1"): p for p in self._header_params}
        self._request_name = dependant.request_param_name
        self._query_defaults = _plain_defaults(self._query_params)
        self._header_defaults = _plain_defaults(self._header_params)
        # When the endpoint's leading parameters are its path parameter (at most one), read
        # as plain text by its own name, then the request, and every later one has the very
        # default FastAPI would give it, a request that sends none of the route's query
        # parameters and headers is a positional call of those leading ones, and Python
        # supplies the rest. A call with a dict of keywords costs more than all the rest of
        # `call`.
        self._leading_path: str | None = None
        self._positional = (
            self._query_defaults is not None
            and self._header_defaults is not None
            and all(p.plain and p.key == p.name for p in self._path_params)
            and self._plan_positional(endpoint, {**self._query_defaults, **self._header_defaults})
        )
        # The endpoint's call for a request, for BrokerMiddleware to await: FastAPI's handler
        # minus its layers (exit stacks for dependencies with yield, of which these routes
        # have none; the exception-handler lookup: the only exception these routes turn into
        # an answer is a BrokerError, which the middleware answers as problem+json). Invalid
        # parameters raise their BrokerError here, before anything is awaited. The `Request`
        # is built only for an endpoint that takes one.
        self.call: RouteCall = self._plan_call()

    def _plan_positional(self, endpoint: Callable[..., Any], defaults: dict[str, Any]) -> bool:
        """Whether `endpoint` can be called positionally (see __init__), `defaults` being the
        values of its query and header parameters when none is sent."""
        parameters = list(inspect.signature(endpoint).parameters.values())
        path_names = [p.name for p in self._path_params]
        leading = [*path_names, *([self._request_name] if self._request_name else [])]
        if len(path_names) > 1 or [p.name for p in parameters[: len(leading)]] != leading:
            return False
        for parameter in parameters[len(leading) :]:
            if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                return False
            default = defaults.get(parameter.name, inspect.Parameter.empty)
            if default is inspect.Parameter.empty or parameter.default is not default:
                return False
        self._leading_path = path_names[0] if path_names else None
        return True

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The handler FastAPI's router wraps (`request_response`) for this route.

        Called by `APIRoute.__init__` and again for each router inclusion; an inclusion that
        adds dependencies (`include_router(..., dependencies=...)`) would need FastAPI's own
        solver, so it is refused here rather than ignored.
        """
        context = getattr(fastapi.routing, "_effective_route_context_var", None)
        included = context.get() if context is not None else None
        if (
            included is not None
            and getattr(included, "original_route", None) is self
            and included.dependant.dependencies
        ):
            raise TypeError(f"LeanRoute {self.name!r} cannot serve included dependencies")
        return self.handle_request

    async def handle_request(self, request: Request) -> Response:
        return await self._call(**self.bind(request.scope, request))

    def bind(self, scope: Scope, request: Request | None) -> dict[str, Any]:
        """The endpoint's arguments from the scope, or a 422 validation_error with them all."""
        values: dict[str, Any] = {}
        errors: list[Any] = []
        if self._path_params:
            path_params: Mapping[str, Any] = scope["path_params"]
            for param in self._path_params:
                raw = path_params.get(param.key)
                if param.plain and raw is not None:
                    values[param.name] = raw  # a plain str: nothing to validate
                else:
                    param.take(raw, values, errors)
        if self._query_params:
            query: bytes = scope.get("query_string", b"")
            if query:
                # Starlette's own parser: the last of repeated names wins, as in FastAPI.
                found = QueryParams(query)
                for param in self._query_params:
                    param.take(found.get(param.key), values, errors)
            elif self._query_defaults is not None:
                values.update(self._query_defaults)  # nothing sent: every default as it is
            else:
                for param in self._query_params:
                    param.take(None, values, errors)
        if self._header_params:
            headers: dict[str, str] = {}
            wanted = self._header_keys
            for name, value in scope["headers"]:
                header = wanted.get(name)
                # The first of repeated headers wins, as in Starlette's Headers.get.
                if header is not None and header.name not in headers:
                    headers[header.name] = value.decode("latin-1")
            if headers or self._header_defaults is None:
                for param in self._header_params:
                    param.take(headers.get(param.name), values, errors)
            else:
                values.update(self._header_defaults)
        if errors:
            raise request_validation_failure(errors)
        if self._request_name is not None:
            values[self._request_name] = request
        return values

    @property
    def header_keys(self) -> frozenset[bytes]:
        """The lower-case names of the headers this route takes as parameters."""
        return frozenset(self._header_keys)

    def call_bound(
        self, scope: Scope, receive: Receive, sent: Mapping[bytes, bytes] | None = None
    ) -> Coroutine[Any, Any, Response]:
        """The endpoint's call with every argument bound by `bind`: any request, any route.
        `sent` is taken for `call`'s signature and not needed: `bind` reads the headers."""
        request = LeanRequest(scope, receive) if self._request_name is not None else None
        return self._call(**self.bind(scope, request))

    def _plan_call(self) -> RouteCall:
        """`call` for this route: `call_bound`, or for a route whose endpoint can be called
        positionally (see `_plan_positional`) a function that does so whenever the request
        sends none of the route's query parameters and headers, and `call_bound` otherwise.
        Decided here, once, so that a request pays for no test whose answer the route fixes.

        `sent`: the request's headers among `header_names` at least (its other headers may be
        there too), as BrokerMiddleware's one pass over the headers collects them; None: not
        collected, so the route looks through the scope's headers itself."""
        call_bound = self.call_bound
        if not self._positional:
            return call_bound
        endpoint = self._call
        # A query matters only to a route with query parameters, a header only to one with
        # header parameters (FastAPI ignores the others too).
        reads_query = bool(self._query_params)
        wanted = self._header_keys
        path_name = self._leading_path
        takes_request = self._request_name is not None

        def call(
            scope: Scope, receive: Receive, sent: Mapping[bytes, bytes] | None = None
        ) -> Coroutine[Any, Any, Response]:
            if reads_query and scope["query_string"]:
                return call_bound(scope, receive)
            if wanted:
                if sent is None:
                    sent = dict(scope["headers"])
                if sent:
                    for name in wanted:
                        if name in sent:
                            return call_bound(scope, receive)
            # What bind would give: the path's text as it is, every default as it is.
            if path_name is None:
                return endpoint(LeanRequest(scope, receive)) if takes_request else endpoint()
            value = scope["path_params"][path_name]
            if takes_request:
                return endpoint(value, LeanRequest(scope, receive))
            return endpoint(value)

        return call


class LeanRequest(Request):
    """Starlette's Request, built without re-checking the scope's type on every request (the
    route table serves HTTP scopes only)."""

    # Request.__init__ sets these on every instance; as class attributes they are the same
    # starting values (Request assigns, never mutates them), set once.
    _send = staticmethod(empty_send)
    _stream_consumed = False
    _is_disconnected = False
    _form = None

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self._receive = receive


# Convertors whose `convert` returns the matched text as it is: a route with only these takes
# the regex match's groups as its path parameters.
_IDENTITY_CONVERTORS: Final = (NameConvertor, StringConvertor)


@dataclass(frozen=True, slots=True)
class _Candidate:
    route: LeanRoute
    match: Callable[[str], Any]  # the route's compiled path regex
    convertors: Mapping[str, Convertor[Any]]
    as_matched: bool  # every convertor is one of _IDENTITY_CONVERTORS
    # A route whose path is text then one `name` parameter at its end (/v1/keys/{key:name}):
    # that text and the parameter. Its regex, `^<text>(?P<key>[^/]*)$`, matches exactly the
    # paths that start with the text and have no '/' after it, and captures all the rest (a
    # final newline too: `[^/]*` takes it before `$` is tried), so two string tests decide it.
    prefix: str | None = None
    param: str = ""


def _candidate(route: LeanRoute) -> _Candidate:
    convertors = route.param_convertors
    as_matched = all(type(c) in _IDENTITY_CONVERTORS for c in convertors.values())
    prefix, param = None, ""
    if len(convertors) == 1:
        ((name, convertor),) = convertors.items()
        head, brace, tail = route.path.partition("{")
        if type(convertor) is NameConvertor and brace and tail == f"{name}:name}}":
            prefix, param = head, name
    return _Candidate(route, route.path_regex.match, convertors, as_matched, prefix, param)


class RouteTable:
    """Method + path -> route, exactly as the router would choose among these routes.

    Starlette's router takes the first route, in declaration order, whose path regex matches
    and whose methods include the request's; so does this, over the routes of one method only.
    The paths of routes without parameters (/v1/ping, /v1/keys, ...) are looked up in a dict
    whose answers were found that same way when the table was built. A path nothing here
    serves (404, 405, /openapi.json) goes on to the FastAPI router.
    """

    def __init__(self, routes: Iterable[Any]) -> None:
        by_method: dict[str, list[_Candidate]] = {}
        for route in routes:
            if not isinstance(route, LeanRoute):
                continue
            candidate = _candidate(route)
            for method in route.methods or ():
                by_method.setdefault(method, []).append(candidate)
        # Every header any of these routes takes as a parameter (lower-case).
        self.header_names = frozenset(
            name
            for candidates in by_method.values()
            for c in candidates
            for name in c.route.header_keys
        )
        self._methods: dict[str, _MethodRoutes] = {}
        for method, candidates in by_method.items():
            every = tuple(candidates)
            # First with no static answers and every candidate tried, to find the static ones.
            static_paths = {c.route.path for c in every if not c.route.param_convertors}
            answers = {path: _first_match(every, path) for path in static_paths}
            # A static path that an earlier route with parameters matches is that route's
            # (with its parameters): it is left to the candidates below.
            static = {
                path: found[0]
                for path, found in answers.items()
                if found is not None and not found[1]
            }
            # A path that is not one of the static paths can match a static route's regex only
            # as that path plus a final newline (`$` matches before one): for any other path,
            # the routes with parameters are the only candidates.
            dynamic = tuple(c for c in every if c.route.param_convertors)
            self._methods[method] = _MethodRoutes(static, dynamic, every, _by_prefix(dynamic))

    def find(self, scope: Scope) -> tuple[LeanRoute, dict[str, Any]] | None:
        """The route for this request and its path parameters, or None."""
        path = scope["path"] if not scope.get("root_path") else get_route_path(scope)
        routes = self._methods.get(scope["method"])
        if routes is None:
            return None
        known = routes.static.get(path)
        return (known, {}) if known is not None else routes.match(path)

    def dispatch(
        self, scope: Scope, receive: Receive, sent: Mapping[bytes, bytes] | None = None
    ) -> Coroutine[Any, Any, Response] | None:
        """The endpoint's call for this request (see `LeanRoute.call`), with the scope keys the
        router would set (`route` names the operation in the metrics); None when no route of
        the table serves it. Invalid parameters raise their BrokerError here.

        `sent`: the request's headers named in `header_names` (others may be there too), when
        the caller has already picked them out; None: the route looks for them itself."""
        # `find`, written out: this is every request's path.
        path = scope["path"] if not scope.get("root_path") else get_route_path(scope)
        routes = self._methods.get(scope["method"])
        if routes is None:
            return None
        route = routes.static.get(path)
        if route is not None:
            path_params: dict[str, Any] = {}  # a static path has no parameters
        else:
            found = routes.match(path)
            if found is None:
                return None
            route, path_params = found
        scope["endpoint"] = route.endpoint
        scope["path_params"] = path_params
        scope["route"] = route
        return route.call(scope, receive, sent)


@dataclass(frozen=True, slots=True)
class _MethodRoutes:
    """One method's routes: the static paths' answers, and the candidates to try in order."""

    static: dict[str, LeanRoute]
    dynamic: tuple[_Candidate, ...]  # the routes with path parameters
    every: tuple[_Candidate, ...]
    # Prefix routes (see _Candidate.prefix) by their prefix, for those whose prefix ends in
    # '/' and that only such routes precede: such a route matches a path exactly when the
    # path's text up to its last '/' is its prefix, so one dict lookup finds it, and none of
    # the routes before it can match that path.
    by_prefix: dict[str, _Candidate]

    def match(self, path: str) -> tuple[LeanRoute, dict[str, Any]] | None:
        """The first route with parameters whose path matches, and its parameters (for a path
        that is a static route's plus a final newline: any route's, in order)."""
        if path.endswith("\n"):
            candidates = self.every  # `$` matches before a final newline
        else:
            cut = path.rfind("/") + 1
            direct = self.by_prefix.get(path[:cut])
            if direct is not None:
                return direct.route, {direct.param: path[cut:]}
            candidates = self.dynamic
        return _first_match(candidates, path)


def _first_match(
    candidates: Iterable[_Candidate], path: str
) -> tuple[LeanRoute, dict[str, Any]] | None:
    """The first of `candidates` whose path matches, and its parameters, as the router does."""
    for candidate in candidates:
        prefix = candidate.prefix
        if prefix is not None:
            if path.startswith(prefix):
                rest = path[len(prefix) :]
                if "/" not in rest:
                    return candidate.route, {candidate.param: rest}
            continue
        match = candidate.match(path)
        if match is not None:
            if candidate.as_matched:
                return candidate.route, match.groupdict()
            convertors = candidate.convertors
            path_params = {
                name: convertors[name].convert(value) for name, value in match.groupdict().items()
            }
            return candidate.route, path_params
    return None


def _by_prefix(dynamic: tuple[_Candidate, ...]) -> dict[str, _Candidate]:
    """_MethodRoutes.by_prefix from the routes with parameters, in declaration order."""
    direct: dict[str, _Candidate] = {}
    for candidate in dynamic:
        prefix = candidate.prefix
        if prefix is None or not prefix.endswith("/"):
            # A route whose matches the lookup cannot tell by the last '/' (its regex, or a
            # prefix such as /x/a- that matches /x/a-b): the routes after it wait their turn.
            break
        direct.setdefault(prefix, candidate)  # of two with one prefix, the first wins
    return direct
