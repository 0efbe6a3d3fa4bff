"""What the read model reads out of Matrix events, defined once for every side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ReadReceipt:
    event_id: str
    mxid: str
    # The receipt's own time, when the homeserver gave one.
    ts: int | None


def read_receipts(content: dict[str, Any]) -> list[ReadReceipt]:
    """The main-timeline ``m.read`` receipts of an ``m.receipt`` event's content.

    Thread receipts (``thread_id`` other than ``main``) read only their thread: skipped."""
    out: list[ReadReceipt] = []
    for event_id, kinds in content.items():
        readers = kinds.get("m.read") if isinstance(kinds, dict) else None
        if not isinstance(event_id, str) or not isinstance(readers, dict):
            continue
        for mxid, data in readers.items():
            if not isinstance(mxid, str):
                continue
            if isinstance(data, dict) and data.get("thread_id") not in (None, "main"):
                continue
            ts = data.get("ts") if isinstance(data, dict) else None
            ok = isinstance(ts, int | float) and not isinstance(ts, bool)
            out.append(ReadReceipt(event_id, mxid, int(ts) if ok else None))
    return out
