"""Receipts that arrive before their event wait for it, instead of being dropped.

With Synapse's workers, the appservice sender learns of events and of receipts over two
replication streams written by two processes (the event persister, the receipts writer), and
batches them independently: a transaction can carry a receipt at a message that only a later
transaction delivers. The bridge applies a receipt only at an event it has indexed (the read
position is the index's order), so such a receipt was lost: no ``messages_read``, an unread
count that never falls. Here it waits, bounded in number and age, and is dispatched right
after the transaction that brings its event (docs/architecture.md, "Synapse with workers").

Held receipts live in memory: a crash loses them, as it loses typing; the next receipt of the
same reader moves the position past them anyway.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("bridge.matrix.early_receipts")

Event = dict[str, Any]
Known = Callable[[str, str], Awaitable[bool]]

MAX_HELD = 2000  # event ids waited for, oldest dropped first
MAX_AGE_S = 120.0  # an event that late is not coming in order anyway


class EarlyReceipts:
    def __init__(self, known: Known, max_held: int = MAX_HELD, max_age: float = MAX_AGE_S) -> None:
        self._known = known
        self._max_held = max_held
        self._max_age = max_age
        # event id -> (when held, the receipt event narrowed to that event id)
        self._held: OrderedDict[str, list[tuple[float, Event]]] = OrderedDict()
        self.held = self.released = self.expired = 0

    async def split(self, event: Event) -> Event | None:
        """The part of an ``m.receipt`` at events the bridge knows (None if nothing is left);
        the parts at events it does not know yet are held. Other events pass unchanged."""
        room_id, content = event.get("room_id"), event.get("content")
        if event.get("type") != "m.receipt" or not isinstance(room_id, str):
            return event
        if not isinstance(content, dict):
            return event
        now, ready = time.monotonic(), {}
        for event_id, kinds in content.items():
            if not isinstance(event_id, str) or await self._known(room_id, event_id):
                ready[event_id] = kinds
                continue
            narrowed = {**event, "content": {event_id: kinds}}
            self._held.setdefault(event_id, []).append((now, narrowed))
            self._held.move_to_end(event_id)
            self.held += 1
            log.debug("Receipt at %s in %s held until the event arrives", event_id, room_id)
        self._prune(now)
        if not ready:
            return None
        return event if len(ready) == len(content) else {**event, "content": ready}

    def release(self, event_ids: list[str]) -> list[Event]:
        """Receipts held for these events (just dispatched, so now indexed), oldest first."""
        out: list[Event] = []
        for event_id in event_ids:
            for _, receipt in self._held.pop(event_id, []):
                out.append(receipt)
        self.released += len(out)
        return out

    def _prune(self, now: float) -> None:
        while self._held:
            event_id, entries = next(iter(self._held.items()))
            if len(self._held) <= self._max_held and now - entries[-1][0] <= self._max_age:
                break
            del self._held[event_id]
            self.expired += len(entries)

    def __len__(self) -> int:
        return len(self._held)
