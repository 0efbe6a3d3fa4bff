"""Routes events from appservice transactions to the parts of the bridge that want them.

Handlers are awaited one after another, in the order the homeserver sent the events, so a
transaction is only acknowledged once every handler has finished with it. A handler that
raises fails the whole transaction and the homeserver sends it again; handlers must therefore
be idempotent (the event index, for instance, ignores events it already has).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .early_receipts import EarlyReceipts

log = logging.getLogger("bridge.matrix.dispatcher")

Event = dict[str, Any]
EventHandler = Callable[[Event], Awaitable[None]]


class EventDispatcher:
    def __init__(self) -> None:
        self._timeline: list[EventHandler] = []
        self._ephemeral: list[EventHandler] = []
        self._early: EarlyReceipts | None = None

    def hold_early_receipts(self, early: EarlyReceipts) -> None:
        """Receipts at events not indexed yet wait for them (bridge/matrix/early_receipts.py)."""
        self._early = early

    def on_timeline(self, handler: EventHandler) -> EventHandler:
        """Room events: messages and state. Usable as a decorator."""
        self._timeline.append(handler)
        return handler

    def on_ephemeral(self, handler: EventHandler) -> EventHandler:
        """MSC2409 ephemeral events: m.typing, m.receipt and m.presence."""
        self._ephemeral.append(handler)
        return handler

    def remove(self, handler: EventHandler) -> None:
        for handlers in (self._timeline, self._ephemeral):
            if handler in handlers:
                handlers.remove(handler)

    async def dispatch(self, events: list[Event], ephemeral: list[Event]) -> None:
        for event in events:
            for handler in self._timeline:
                await handler(event)
        if self._early is not None:
            # Receipts that waited for this transaction's events, then this transaction's
            # own, minus those at events still to come.
            released = self._early.release([e["event_id"] for e in events if "event_id" in e])
            ephemeral = released + [
                part for e in ephemeral if (part := await self._early.split(e)) is not None
            ]
        for event in ephemeral:
            for handler in self._ephemeral:
                await handler(event)
