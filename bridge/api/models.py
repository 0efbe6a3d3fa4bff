"""Request bodies of the relation routes: one pydantic model each, for validation (REST and
socket alike) and for the OpenAPI schema (openapi.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InvalidParam

_ID = Field(min_length=1, max_length=512, pattern="^[A-Za-z0-9_-]+$")


class _Body(BaseModel):
    # Strict: "1" is no message id and 1 is no text. Unknown keys are ignored, as elsewhere.
    model_config = ConfigDict(strict=True, extra="ignore")


class MessageRef(_Body):
    """A message; ``conversationId``, when given, must be the message's conversation."""

    messageId: str = _ID
    conversationId: str | None = Field(default=None, min_length=1, max_length=512)


class EditBody(MessageRef):
    content: str = Field(max_length=20000, description="The new text; not empty")


class ReactBody(MessageRef):
    key: str = Field(min_length=1, max_length=100, description="The reaction, usually an emoji")


def parse(model: type[_Body], body: Any) -> Any:
    """The validated body, or a 400 that names the first wrong field."""
    if not isinstance(body, dict):
        raise InvalidParam("The request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "body"
        raise InvalidParam(f"{where}: {first.get('msg', 'invalid')}") from e


def schema(model: type[_Body]) -> dict[str, Any]:
    """The model's JSON schema, as OpenAPI 3.1 takes it."""
    out = model.model_json_schema()
    out.pop("title", None)
    for prop in out.get("properties", {}).values():
        prop.pop("title", None)
    return out
