"""The states' query API (aiohttp), served by the streams worker from its tables.

Why the Faust tables and not a PostgreSQL projection: the tables already hold exactly what the
API answers (the ``workers`` views and the ``flow_pairs`` ledgers), recovered from their
changelogs, so there is no second copy to keep consistent and no extra consumer. The limit:
a process answers from the partitions it owns, which is all of them with one streams worker
(the deployment the CLI runs). Several workers would need the request routed to the owner of
the key (Faust's ``table_route``) and a scatter-gather for district lists.

Authentication: ``Authorization: Bearer <token>``; each token belongs to one state (settings
``api_tokens``). Missing or unknown token: 401. A state sees a worker only if the worker
consents to sharing with states and the state is the worker's home state or the state of the
worker's current or previous location. Asking for a worker you may not see answers 404, the
same as for a worker that does not exist, so the answer never reveals that a uan is
registered. Listing a district of another state is refused with 403 (the request itself says
which state it is about; no worker is revealed). Flows are aggregates without personal data:
every authenticated state may read them. Locations are returned at the granularity of the
caller's state projection.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from aiohttp import web

from eshram_locator.domain.model import District, Location, MigrationFlow
from eshram_locator.domain.months import is_month
from eshram_locator.records import location_to_avro, migration_flow_to_avro
from streams.projection import DEFAULT_PROJECTION, StateProjection, project_location
from streams.worker_view import WorkerView

MAX_PAGE: Final = 500
DEFAULT_PAGE: Final = 100
_UAN = re.compile(r"^[0-9]{12}$")
_STATE_KEY: Final = web.RequestKey("state", int)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WorkerQueries(Protocol):
    def worker(self, uan: str) -> WorkerView | None: ...

    def residents_of(
        self, district: District, after: str | None, limit: int
    ) -> list[WorkerView]: ...

    def flows(self, month: str) -> list[MigrationFlow]: ...


@dataclass(frozen=True, slots=True)
class ApiConfig:
    tokens: Mapping[str, int]  # bearer token -> state LGD code
    projections: Mapping[int, StateProjection]


def build_api(queries: WorkerQueries, config: ApiConfig) -> web.Application:
    app = web.Application(middlewares=[_authenticate(config.tokens)])
    handlers = _Handlers(queries, config)
    app.router.add_get("/openapi.json", handlers.openapi)
    app.router.add_get("/v1/workers/{uan}", handlers.worker)
    app.router.add_get("/v1/districts/{state}/{district}/workers", handlers.residents)
    app.router.add_get("/v1/flows/{month}", handlers.flows)
    return app


_PUBLIC = frozenset({"/openapi.json"})


def _authenticate(tokens: Mapping[str, int]) -> Any:
    encoded = [(token.encode(), state) for token, state in tokens.items()]

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in _PUBLIC:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        state = None
        if scheme.lower() == "bearer" and presented:
            candidate = presented.strip().encode()
            for token, token_state in encoded:  # compare with every token: constant time
                if hmac.compare_digest(candidate, token):
                    state = token_state
        if state is None:
            return _error(401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
        request[_STATE_KEY] = state
        return await handler(request)

    return middleware


class _Handlers:
    def __init__(self, queries: WorkerQueries, config: ApiConfig) -> None:
        self._queries = queries
        self._config = config

    def _projection(self, state: int) -> StateProjection:
        return self._config.projections.get(state, DEFAULT_PROJECTION)

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(OPENAPI)

    async def worker(self, request: web.Request) -> web.StreamResponse:
        state = request[_STATE_KEY]
        uan = request.match_info["uan"]
        if not _UAN.match(uan):
            return _error(400, "uan must be 12 digits")
        view = self._queries.worker(uan)
        if view is None or not view.visible_to(state):
            return _error(404, "no such worker")  # also when not entitled: no existence leak
        return web.json_response(_worker_body(view, self._projection(state), history=True))

    async def residents(self, request: web.Request) -> web.StreamResponse:
        state = request[_STATE_KEY]
        try:
            district = District(
                int(request.match_info["state"]), int(request.match_info["district"])
            )
            limit = int(request.query.get("limit", DEFAULT_PAGE))
        except ValueError:
            return _error(400, "state, district and limit must be integers")
        if not 1 <= limit <= MAX_PAGE:
            return _error(400, f"limit must be within 1..{MAX_PAGE}")
        after = request.query.get("after")
        if after is not None and not _UAN.match(after):
            return _error(400, "after must be a uan")
        if district.state_lgd != state:
            return _error(403, "a state may list only its own districts")
        projection = self._projection(state)
        workers: list[dict[str, Any]] = []
        cursor, exhausted = after, False
        # Skip the workers the caller may not see while filling the page; the cursor moves on.
        while len(workers) < limit and not exhausted:
            batch = self._queries.residents_of(district, cursor, limit)
            exhausted = len(batch) < limit
            for index, view in enumerate(batch):
                cursor = view.uan
                if view.visible_to(state):
                    workers.append(_worker_body(view, projection, history=False))
                if len(workers) == limit:
                    exhausted = exhausted and index == len(batch) - 1
                    break
        if exhausted:
            cursor = None
        return web.json_response({"workers": workers, "next_after": cursor})

    async def flows(self, request: web.Request) -> web.StreamResponse:
        month = request.match_info["month"]
        if not is_month(month):
            return _error(400, "month must be YYYY-MM")
        flows = [migration_flow_to_avro(flow) for flow in self._queries.flows(month)]
        return web.json_response({"month": month, "flows": flows})


def _location(location: Location | None, projection: StateProjection) -> Any:
    if location is None:
        return None
    return project_location(location_to_avro(location), projection.granularity)


def _worker_body(view: WorkerView, projection: StateProjection, *, history: bool) -> dict[str, Any]:
    current = view.current_change()
    body: dict[str, Any] = {
        "uan": view.uan,
        "current_location": _location(view.current_location(), projection),
        "effective_month": None if current is None else current.effective_month,
    }
    if history:
        body["history"] = [
            {
                "event_id": change.event_id,
                "change_type": change.change_type.value,
                "effective_month": change.effective_month,
                "previous_location": _location(change.previous, projection),
                "current_location": _location(change.current, projection),
                "retracted": not change.active,
            }
            for change in view.changes
        ]
    return body


def _error(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.StreamResponse:
    return web.json_response(
        {"error": message, "status": status}, status=status, headers=dict(headers or {})
    )


_LOCATION_SCHEMA: Final = {
    "type": "object",
    "nullable": True,
    "properties": {
        "state_lgd": {"type": "integer"},
        "district_lgd": {
            "type": "integer",
            "description": "0 when the caller's projection is state granularity",
        },
        "subdistrict_lgd": {"type": "integer", "nullable": True},
        "village_town_lgd": {"type": "integer", "nullable": True},
        "pincode": {"type": "string", "nullable": True},
    },
}
_ERROR = {"$ref": "#/components/schemas/Error"}


def _responses(ok: dict[str, Any], *codes: int) -> dict[str, Any]:
    described = {
        400: "Malformed request",
        401: "Missing or invalid bearer token",
        403: "Authenticated, but the request is about another state",
        404: "No such worker, or not one the caller's state may see (indistinguishable)",
    }
    out: dict[str, Any] = {"200": {"description": "OK", "content": {"application/json": ok}}}
    for code in codes:
        out[str(code)] = {
            "description": described[code],
            "content": {"application/json": {"schema": _ERROR}},
        }
    return out


OPENAPI: Final[dict[str, Any]] = {
    "openapi": "3.0.3",
    "info": {
        "title": "eshram-locator state query API",
        "version": "1.0.0",
        "description": "Current locations of consenting e-Shram workers for the states their "
        "home, previous or current location is in, and monthly migration flows.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Location": _LOCATION_SCHEMA,
            "Error": {
                "type": "object",
                "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
            },
            "Worker": {
                "type": "object",
                "properties": {
                    "uan": {"type": "string"},
                    "current_location": {"$ref": "#/components/schemas/Location"},
                    "effective_month": {"type": "string", "nullable": True},
                    "history": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "event_id": {"type": "string", "format": "uuid"},
                                "change_type": {"type": "string"},
                                "effective_month": {"type": "string"},
                                "previous_location": {"$ref": "#/components/schemas/Location"},
                                "current_location": {"$ref": "#/components/schemas/Location"},
                                "retracted": {"type": "boolean"},
                            },
                        },
                    },
                },
            },
            "MigrationFlow": {
                "type": "object",
                "properties": {
                    name: {"type": "string" if name == "month" else "integer"}
                    for name in (
                        "month",
                        "from_state_lgd",
                        "from_district_lgd",
                        "to_state_lgd",
                        "to_district_lgd",
                        "workers",
                        "moves_in",
                    )
                },
            },
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/workers/{uan}": {
            "get": {
                "summary": "A worker's current location and history of changes",
                "parameters": [
                    {"name": "uan", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": _responses(
                    {"schema": {"$ref": "#/components/schemas/Worker"}}, 400, 401, 404
                ),
            }
        },
        "/v1/districts/{state}/{district}/workers": {
            "get": {
                "summary": "Consenting workers currently located in a district of the caller's "
                "state, by uan, a page at a time",
                "parameters": [
                    {
                        "name": "state",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer"},
                    },
                    {
                        "name": "district",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "description": "next_after of the previous page",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": _responses(
                    {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "workers": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Worker"},
                                },
                                "next_after": {"type": "string", "nullable": True},
                            },
                        }
                    },
                    400,
                    401,
                    403,
                ),
            }
        },
        "/v1/flows/{month}": {
            "get": {
                "summary": "Migration flows (aggregates) of a month",
                "parameters": [
                    {"name": "month", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": _responses(
                    {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "month": {"type": "string"},
                                "flows": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/MigrationFlow"},
                                },
                            },
                        }
                    },
                    400,
                    401,
                ),
            }
        },
    },
}
