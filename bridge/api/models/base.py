"""What every model shares: the three kinds of model, ``parse``, and the schema tidying.

* ``Body``: a JSON request body or socket payload. Strict types (no "5" for 5); unknown
  fields ignored, as the seed's backend did.
* ``Query``: query or path parameters. They arrive as strings: numbers are parsed from them.
* ``Shape``: a response or event payload. It describes what the serializers
  (``chat/serialize.py``) build as plain dicts; nothing validates an answer through it at
  run time (see ``bridge/api/contract.py``). A field that may be absent has a default and is
  not required; a field that is always there but may be null is ``X | None`` without a
  default, so the schema says both "required" and "nullable".
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ...errors import InvalidParam

M = TypeVar("M", bound=BaseModel)

ID_PATTERN = "^[A-Za-z0-9_-]+$"


def id_field(**kw: Any) -> Any:
    """A message/conversation id as the facade makes them (a room or event id, encoded)."""
    return Field(min_length=1, max_length=512, pattern=ID_PATTERN, **kw)


def without_nul(value: str) -> str:
    # No database stores it in text, and no person types it.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def absent(**kw: Any) -> Any:
    """A response field that may be left out, but is never null when present."""
    return Field(default=None, **kw)


def _nullable(prop: dict[str, Any]) -> bool:
    return prop.get("type") == "null" or any(v.get("type") == "null" for v in prop.get("anyOf", []))


def tidy(schema: dict[str, Any]) -> None:
    """No titles (noise in the docs); no ``default: null`` on a field that is never null."""
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
        if "default" in prop and prop["default"] is None and not _nullable(prop):
            del prop["default"]


class Body(BaseModel):
    model_config = ConfigDict(
        strict=True, extra="ignore", populate_by_name=True, json_schema_extra=tidy
    )


class Query(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, json_schema_extra=tidy)


class Shape(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, json_schema_extra=tidy)


class Error(Shape):
    """Every 4xx/5xx of the facade and every socket ``error`` event (bridge/errors.py)."""

    message: str = Field(description="A sentence for people")
    errcode: str = Field(description="A code for programs")
    retry_after_ms: int = absent(description="429: milliseconds to wait")
    retryAfter: int = absent(description="429: seconds to wait")


# pydantic names the member of a union it tried ("userId.str"): not a field of the request.
_UNION_TAGS = frozenset(("str", "int", "float", "bool", "bytes", "list", "dict", "none"))


def _field_path(loc: tuple[Any, ...]) -> list[str]:
    return [str(p) for p in loc if not (isinstance(p, str) and (p in _UNION_TAGS or "[" in p))]


def parse(model: type[M], data: Any) -> M:
    """The validated model, or InvalidParam naming the first field that is wrong.

    A validator's own ``ValueError`` is the message as it stands (it names its field)."""
    if issubclass(model, Body) and not isinstance(data, dict):
        raise InvalidParam("The request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        field = ".".join(_field_path(first.get("loc", ()))) or "body"
        if first.get("type") == "missing":
            raise InvalidParam(f"{field} is required") from e
        if first.get("type") == "value_error" and "error" in first.get("ctx", {}):
            raise InvalidParam(str(first["ctx"]["error"])) from e
        raise InvalidParam(f"{field}: {first.get('msg', 'is invalid')}") from e
