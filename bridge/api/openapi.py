"""The OpenAPI 3.1 document of the facade, served at /api/openapi.json (docs at /api/docs).

Generated, not written: it walks the app's router and turns each route's declaration
(``contract.declare``, on the handler) and its pydantic models (``bridge/api/models/``) into
operations and components. To document a route, declare it; nothing here changes. See
contract.py for the declaration, and for why answers are described but not validated.
"""

from __future__ import annotations

import typing
from importlib import resources
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .contract import SOCKET_EVENTS, Contract, Reply, SocketEvent, contract_of, undocumented
from .models import Error

routes = web.RouteTableDef()

REF = "#/components/schemas/{model}"
PREFIX = "/api/"
# Served by the directory side (its own token and document), not by this facade.
FOREIGN_PREFIXES = ("/api/admin/",)

_RATE_HEADERS = {
    name: {"schema": {"type": "integer"}, "description": desc}
    for name, desc in (
        ("X-RateLimit-Limit", "Requests allowed per window for this route"),
        ("X-RateLimit-Remaining", "Requests left in this window"),
        ("X-RateLimit-Reset", "Seconds until the window ends"),
    )
}

# Every authenticated route may answer these.
_ALWAYS = (401, 403, 429)
_ERRORS = {
    400: "Malformed request (M_BAD_JSON, M_NOT_JSON, M_INVALID_PARAM)",
    401: "Missing, malformed, expired or forged token (M_MISSING_TOKEN, M_UNKNOWN_TOKEN)",
    403: (
        "A good token whose user the directory does not know yet or deactivated "
        "(M_USER_NOT_SYNCED, M_USER_DEACTIVATED), or not allowed (M_FORBIDDEN)"
    ),
    404: "Not found, or not a participant (M_NOT_FOUND)",
    409: "Conflict (M_CONFLICT)",
    413: "Body or file too large (M_TOO_LARGE)",
    415: "Content type not accepted (M_UNSUPPORTED_TYPE)",
    429: "Rate limited (M_LIMIT_EXCEEDED), see Retry-After",
    503: "Homeserver unavailable (M_HOMESERVER_UNAVAILABLE)",
}


def facade_routes(router: web.UrlDispatcher) -> list[tuple[str, str, web.AbstractRoute]]:
    """(method, path, route) of every facade route: not HEAD/OPTIONS, not the admin API."""
    out = []
    for route in router.routes():
        path = route.resource.canonical if route.resource else ""
        if not path.startswith(PREFIX) or path.startswith(FOREIGN_PREFIXES):
            continue
        if route.method not in ("HEAD", "OPTIONS"):
            out.append((route.method.lower(), path, route))
    return out


def _models_of(shape: Any) -> list[type[BaseModel]]:
    if isinstance(shape, type) and issubclass(shape, BaseModel):
        return [shape]
    return [m for arg in typing.get_args(shape) for m in _models_of(arg)]


def _schema_of(shape: Any, refs: dict[type[BaseModel], dict[str, str]]) -> dict[str, Any]:
    if isinstance(shape, type) and issubclass(shape, BaseModel):
        return refs[shape]
    if typing.get_origin(shape) is list:
        return {"type": "array", "items": _schema_of(typing.get_args(shape)[0], refs)}
    raise TypeError(f"Not a response shape: {shape!r}")


def _error(code: int) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}
    response: dict[str, Any] = {"description": _ERRORS[code], "content": content}
    if code == 400:
        # aiohttp's HTTP parser refuses over-long request lines before any handler runs.
        content["text/plain"] = {"schema": {"type": "string"}}
    if code == 429:
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}}, **_RATE_HEADERS}
    return response


def _ok(reply: Reply, refs: dict[type[BaseModel], dict[str, str]]) -> dict[str, Any]:
    if reply.shape is bytes:
        content = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
    else:
        content = {"application/json": {"schema": _schema_of(reply.shape, refs)}}
    return {"description": reply.description, "headers": dict(_RATE_HEADERS), "content": content}


def _not_null(prop: dict[str, Any]) -> dict[str, Any]:
    """A parameter is absent, never null: drop the null branch and a null default."""
    prop = dict(prop)
    variants = [v for v in prop.pop("anyOf", []) if v.get("type") != "null"]
    if len(variants) == 1:
        prop.update(variants[0])
    if "default" in prop and prop["default"] is None:
        del prop["default"]
    return prop


def _parameters(model: type[BaseModel] | None, where: str) -> list[dict[str, Any]]:
    if model is None:
        return []
    out = model.model_json_schema(by_alias=True, ref_template=REF)
    required = set(out.get("required", []))
    return [
        {
            "name": name,
            "in": where,
            "required": where == "path" or name in required,
            "schema": _not_null(prop),
        }
        for name, prop in out["properties"].items()
    ]


def _operation(
    handler_name: str, path: str, c: Contract, refs: dict[type[BaseModel], dict[str, str]]
) -> dict[str, Any]:
    if c.path is not None and set(c.path.model_fields) != _placeholders(path):
        raise ValueError(f"{path}: the path model's fields are not its placeholders")
    if c.path is None and _placeholders(path):
        raise ValueError(f"{path}: declare its path parameters (path=...)")
    op: dict[str, Any] = {"operationId": handler_name, "summary": c.summary, "tags": list(c.tags)}
    if c.description:
        op["description"] = c.description
    if params := _parameters(c.path, "path") + _parameters(c.query, "query"):
        op["parameters"] = params
    if c.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[c.body]}},
        }
    if c.form is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": {"schema": refs[c.form]}},
        }
    op["security"] = [{"bearerAuth": []}]
    responses = {str(s): _ok(reply, refs) for s, reply in c.ok.items()}
    responses.update({str(code): _error(code) for code in (*_ALWAYS, *c.errors)})
    op["responses"] = responses
    return op


def _socket_event(
    event: SocketEvent, refs: dict[type[BaseModel], dict[str, str]]
) -> dict[str, Any]:
    return {
        "direction": event.direction,
        "description": event.description,
        "payload": refs[event.payload],
    }


def _placeholders(path: str) -> set[str]:
    return {part[1:-1] for part in path.split("/") if part.startswith("{")}


def spec(router: web.UrlDispatcher) -> dict[str, Any]:
    declared = [
        (method, path, c, route.handler)
        for method, path, route in facade_routes(router)
        if (c := contract_of(route.handler)) is not None and c.documented
    ]
    models: list[type[BaseModel]] = [Error, *(e.payload for e in SOCKET_EVENTS)]
    for _, _, c, _ in declared:
        shapes = [reply.shape for reply in c.ok.values()]
        for m in (c.body, c.form, *(m for s in shapes for m in _models_of(s))):
            if m is not None and m not in models:
                models.append(m)
    keys, defs = models_json_schema(
        [(m, "validation") for m in models], ref_template=REF, by_alias=True
    )
    refs = {m: keys[(m, "validation")] for m in models}
    paths: dict[str, Any] = {}
    tags: list[str] = []
    for method, path, c, handler in declared:
        paths.setdefault(path, {})[method] = _operation(handler.__name__, path, c, refs)
        tags += [t for t in c.tags if t not in tags]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "CRM chat facade",
            "version": "1.0.0",
            "description": "The seed backend's REST API, served from Matrix. See docs/api.md.",
        },
        "tags": [{"name": t} for t in tags],
        "paths": paths,
        "x-socket-events": {
            e.name: {
                "direction": e.direction,
                "description": e.description,
                "payload": refs[e.payload],
            }
            for e in SOCKET_EVENTS
        },
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


@routes.get("/api/openapi.json")
@undocumented("The OpenAPI document itself")
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(spec(request.app.router))


@routes.get("/api/docs")
@undocumented("A viewer of the OpenAPI document")
async def docs(request: web.Request) -> web.Response:
    html = resources.files("bridge.api").joinpath("docs.html").read_text("utf-8")
    return web.Response(text=html, content_type="text/html")
