"""JSON from strangers: bounded nesting and real Unicode, or a ``ValueError`` that says why.

Every request body and every Socket.IO packet is parsed here. ``json.loads`` alone raises
``RecursionError`` on input nested about 1,000 deep, and it turns ``"\\ud800"`` into a lone
surrogate that fails much later (``UnicodeEncodeError`` on the way to PostgreSQL or
Matrix). The nesting is measured on the text before parsing, in one pass that cannot
recurse; strings are checked after parsing, only when the text holds a surrogate escape.

The module has ``loads`` and ``dumps``, so python-socketio and python-engineio take it as
their ``json`` module.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 64

# Escape pairs first: what is left of a string then holds no backslash, so a string is
# `"[^"]*"` and stripping strings stays linear however the quotes are arranged.
_ESCAPE = re.compile(r"\\.", re.DOTALL)
_STRING = re.compile(r'"[^"]*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
SURROGATE = re.compile("[\ud800-\udfff]")


class UnsafeJSON(ValueError):
    """JSON we will not take. ``reason`` completes a sentence ("The request body
    <reason>"); ``errcode`` is the code to answer with."""

    def __init__(self, reason: str, errcode: str = "M_BAD_JSON") -> None:
        super().__init__(f"The JSON {reason}")
        self.reason = reason
        self.errcode = errcode


def loads(raw: str | bytes | bytearray, max_depth: int | None = MAX_DEPTH) -> Any:
    """Parse ``raw``; refuse nesting deeper than ``max_depth`` (None: what the parser
    can take) and strings that are not valid Unicode."""
    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode(json.detect_encoding(raw))
        except UnicodeDecodeError as e:
            raise UnsafeJSON("is not valid UTF-8", "M_NOT_JSON") from e
    else:
        text = raw
    if max_depth is not None and _nests_deeper(text, max_depth):
        raise UnsafeJSON(f"nests deeper than {max_depth} levels")
    try:
        value = json.loads(text)
    except RecursionError as e:
        raise UnsafeJSON("nests too deeply") from e
    except ValueError as e:
        raise UnsafeJSON("is not valid JSON", "M_NOT_JSON") from e
    if _SURROGATE_ESCAPE.search(text) and _holds_lone_surrogate(value):
        raise UnsafeJSON("holds a string that is not valid Unicode (a lone surrogate)")
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(value, **kwargs)


def _nests_deeper(text: str, limit: int) -> bool:
    if text.count("[") + text.count("{") <= limit:
        return False
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", _ESCAPE.sub("", text)))
    depth = 0
    for char in brackets:
        if char in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _holds_lone_surrogate(value: Any) -> bool:
    # Iterative: the depth is bounded by the caller, but nothing here should recurse.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
