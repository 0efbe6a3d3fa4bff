"""The ``cursor`` of ``new_message`` and ``nextCursor``: an opaque token for a position
(``seq``) in a conversation's log, the bridge's index (docs/realtime.md, "The delivery log").

Old cursors, message ids, are still accepted by ``after=`` for one release (deprecated).
"""

from __future__ import annotations

PREFIX = "s."  # never in a message id, which is URL-safe base64 (ids.py)


def cursor_of(seq: int) -> str:
    return f"{PREFIX}{seq}"


def seq_of_cursor(cursor: str) -> int | None:
    """The seq a cursor names, or None for anything else (an old cursor: a message id)."""
    if not cursor.startswith(PREFIX):
        return None
    digits = cursor[len(PREFIX) :]
    return int(digits) if digits.isdigit() and len(digits) < 19 else None
